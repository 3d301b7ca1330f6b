# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""`from_pretrained` that refuses weights which do not fit the config, instead of logging a warning.

diffusers' `ModelMixin.from_pretrained` only warns when saved weights are left unused or model weights stay at their
random initialisation (e.g. a `config.json` whose `num_layers` is smaller or larger than the saved blocks), so a
model missing a block samples without complaint. This module imports only the standard library, so that it ships
as Hub code beside the model.
"""

import os
from typing import Any

# How many key names an error message lists before "and N more".
_SHOWN_KEYS = 8


def _describe(keys: list) -> str:
    keys = sorted(str(key) for key in keys)
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return f"{shown} and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else shown


class StrictLoadingMixin:
    """
    Put before `ModelMixin` in a model's bases: its `from_pretrained` raises a `ValueError` when the checkpoint holds
    weights the config has no place for (unexpected keys), leaves model weights unset (missing keys), or holds weights
    of other shapes (only accepted with `ignore_mismatched_sizes=True`, as in diffusers).
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, **kwargs: Any) -> Any:
        """
        [`ModelMixin.from_pretrained`], strict: see the class docstring. Takes the same arguments; with
        `output_loading_info=True` it returns `(model, loading_info)` as diffusers does.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        problems = []
        if loading_info.get("unexpected_keys"):
            problems.append(f"weights the config has no place for: {_describe(loading_info['unexpected_keys'])}")
        if loading_info.get("missing_keys"):
            problems.append(f"model weights the checkpoint does not hold: {_describe(loading_info['missing_keys'])}")
        if loading_info.get("mismatched_keys") and not kwargs.get("ignore_mismatched_sizes", False):
            problems.append(f"weights of other shapes: {_describe([k[0] for k in loading_info['mismatched_keys']])}")
        if problems:
            subfolder = kwargs.get("subfolder")
            where = f"{pretrained_model_name_or_path}" + (f" (subfolder {subfolder!r})" if subfolder else "")
            raise ValueError(
                f"The weights at {where} do not fit the {cls.__name__} config saved with them; "
                f"{'; '.join(problems)}. The config.json was probably edited or belongs to another model: restore "
                "the config.json saved with these weights."
            )
        return (model, loading_info) if output_loading_info else model
