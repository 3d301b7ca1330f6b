# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Convert official REPA (`sihyun-yu/REPA`) checkpoints to diffusers folders, and back.

`FromOriginalModelMixin.from_single_file` only serves classes inside diffusers, so, like diffusers' own
`scripts/convert_dit_to_diffusers.py`, this is a converter module with a CLI:

```bash
python -m diffusers_repa.convert --checkpoint pretrained_models/last.pt --output_dir sit-xl-2-repa
python -m diffusers_repa.convert --checkpoint exps/run/checkpoints/0400000.pt --output_dir out --use_raw
python -m diffusers_repa.convert --to_official --pretrained_model_name_or_path sit-xl-2-repa --output last.pt
```

`--pretrained_model_name_or_path` means what it means in `sample`, `evaluate_alignment` and the trainer: a folder
written by `save_pretrained` (with `transformer/`) or a Hub repo id (`--model_dir` is its old name, still accepted).

The CLI refuses to write into a non-empty `--output_dir` (or over an existing `--output`) unless `--overwrite` is
given; then the folder is replaced whole (nothing of an earlier conversion, such as a stale `projector/`, is kept):
the new folder is written beside it and swapped in only once complete.
"""

import argparse
import math
import os
import pickle
import re
import shutil
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers.models import AutoencoderKL
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from .models import SIT_PRESETS, REPAProjector, SiTTransformer2DModel
from .pipeline_repa import REPAPipeline
from .schedulers import SiTEulerMaruyamaScheduler
from .utils import atomic_write

# Keys a training checkpoint of the official train.py holds; `opt` and `steps` are not model weights.
TRAINING_CHECKPOINT_KEYS = {"model", "ema", "opt", "args", "steps"}
# What the official train.py defaults to when a checkpoint carries no `args` (the released last.pt).
OFFICIAL_DEFAULT_ALIGNMENT_DEPTH = 8

# official key (with {i} for the block index) -> ours; qkv and pos_embed are handled separately.
_BLOCK_KEY_MAP = {
    "adaLN_modulation.1": "norm1.linear",
    "attn.proj": "attn.to_out.0",
    "attn.q_norm": "attn.norm_q",
    "attn.k_norm": "attn.norm_k",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
_TOP_KEY_MAP = {
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "timestep_embedder.linear_1",
    "t_embedder.mlp.2": "timestep_embedder.linear_2",
    "y_embedder.embedding_table": "class_embedder.embedding_table",
    "final_layer.adaLN_modulation.1": "proj_out_1",
    "final_layer.linear": "proj_out_2",
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be converted; the message says why and what to do."""


def _first_line(error: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def load_official_checkpoint(path: str | Path) -> dict[str, Any]:
    """
    Load an official checkpoint without executing arbitrary pickle code.

    Uses `torch.load(weights_only=True)`, whose unpickler admits only tensors and plain containers; the single extra
    global allowed is `argparse.Namespace` (the `args` that official training checkpoints carry). Anything else, a
    pickle payload included, is refused before it runs.

    Args:
        path: a `.pt` file written by the official `train.py` (`model`/`ema`/`opt`/`args`/`steps`) or a flat
            state dict such as the released `last.pt`.

    Returns:
        The loaded dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path} is empty (0 bytes): the download or copy was probably cut short; fetch the checkpoint again."
        )
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes on non-torch files; the outcome is reported below
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} holds objects other than tensors, plain containers and argparse.Namespace, so it was not "
            f"loaded (no code from it was run). Only checkpoints from the official REPA code are accepted. "
            f"Details: {_first_line(error)}"
        ) from None
    except Exception as error:  # torch.load raises many types on arbitrary bytes; all mean 'not a checkpoint'
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(error)}). "
            "Pass the `.pt` file saved by the official REPA code (a truncated download gives this error too)."
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or training checkpoint.")
    return dict(checkpoint)


def _namespace_get(args: Any, name: str, default: Any = None) -> Any:
    if args is None:
        return default
    if isinstance(args, Mapping):
        return args.get(name, default)
    return getattr(args, name, default)


def _split_checkpoint(checkpoint: Mapping[str, Any], use_raw: bool) -> tuple[dict[str, torch.Tensor], Any]:
    """Return (state dict, args) from a flat state dict or an official training checkpoint."""
    if "ema" in checkpoint or "model" in checkpoint:
        unknown = set(checkpoint) - TRAINING_CHECKPOINT_KEYS
        if unknown:
            raise CheckpointError(f"Unexpected top-level entries in the training checkpoint: {sorted(unknown)}.")
        which = "model" if use_raw else "ema"
        if which not in checkpoint:
            raise CheckpointError(f"The training checkpoint has no {which!r} weights (has {sorted(checkpoint)}).")
        state_dict, args = checkpoint[which], checkpoint.get("args")
    else:
        if use_raw:
            raise CheckpointError(
                "`use_raw` (--use_raw) takes the online `model` weights of an official training checkpoint, but this "
                "is a flat state dict (such as the released last.pt) with one set of weights: drop it."
            )
        state_dict, args = checkpoint, None
    if not isinstance(state_dict, Mapping) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise CheckpointError("The checkpoint's weights are not a mapping of names to tensors.")
    return dict(state_dict), args


def _infer_config(state_dict: Mapping[str, torch.Tensor], args: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Infer the SiT config from tensor shapes; heads and alignment depth from `args`, overrides or a preset."""
    required = ["x_embedder.proj.weight", "y_embedder.embedding_table.weight", "final_layer.linear.weight"]
    missing = [key for key in required if key not in state_dict]
    if missing:
        raise CheckpointError(f"Not an official SiT state dict: missing keys {missing}.")
    hidden_size, in_channels, patch_size, _ = state_dict["x_embedder.proj.weight"].shape
    block_ids = {int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key))}
    num_layers = max(block_ids) + 1 if block_ids else 0
    if num_layers == 0:
        raise CheckpointError("Not an official SiT state dict: no `blocks.*` keys.")
    table_rows = state_dict["y_embedder.embedding_table.weight"].shape[0]
    class_dropout_prob = overrides.get("class_dropout_prob", 0.1)
    config: dict[str, Any] = {
        "patch_size": int(patch_size),
        "in_channels": int(in_channels),
        "out_channels": int(state_dict["final_layer.linear.weight"].shape[0] // (patch_size * patch_size)),
        "num_layers": num_layers,
        "num_classes": int(table_rows - (1 if class_dropout_prob > 0 else 0)),
        "class_dropout_prob": class_dropout_prob,
        "qk_norm": "blocks.0.attn.q_norm.weight" in state_dict,
    }
    if "blocks.0.mlp.fc1.weight" in state_dict:
        config["mlp_ratio"] = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size
    if "pos_embed" in state_dict:
        config["sample_size"] = int(math.isqrt(state_dict["pos_embed"].shape[1])) * int(patch_size)
    elif _namespace_get(args, "resolution") is not None:
        config["sample_size"] = int(_namespace_get(args, "resolution")) // 8

    for name in ("num_attention_heads", "alignment_depth", "sample_size"):
        value = overrides.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CheckpointError(f"`{name}` must be an integer >= 1, got {value!r}.")
    # The run's own `args` are the truth for what the shapes cannot tell: a different override would silently build
    # another model (e.g. other attention heads over the same weights).
    model_name = _namespace_get(args, "model")
    recorded = {
        "num_attention_heads": SIT_PRESETS[model_name][2] if model_name in SIT_PRESETS else None,
        "alignment_depth": _namespace_get(args, "encoder_depth"),
    }
    for name, value in recorded.items():
        if value is not None and overrides.get(name) is not None and overrides[name] != value:
            raise CheckpointError(
                f"`{name}={overrides[name]}` contradicts the checkpoint's training args ({name} {value}, from "
                f"{'--model ' + str(model_name) if name == 'num_attention_heads' else '--encoder-depth'}): drop it."
            )
    heads = overrides.pop("num_attention_heads", None)
    if heads is None and model_name in SIT_PRESETS:
        heads = SIT_PRESETS[model_name][2]
    if heads is None:  # no args: the preset with this depth and width
        matches = {h for (d, w, h, _) in SIT_PRESETS.values() if d == num_layers and w == hidden_size}
        heads = matches.pop() if len(matches) == 1 else None
    if heads is None:
        raise CheckpointError(
            f"Cannot infer the number of attention heads of a {num_layers}-block, width-{hidden_size} SiT: pass "
            "`num_attention_heads=` (CLI: --num_attention_heads)."
        )
    if hidden_size % heads:
        raise CheckpointError(f"Width {hidden_size} is not divisible by {heads} attention heads.")
    config["num_attention_heads"] = int(heads)
    config["attention_head_dim"] = int(hidden_size // heads)
    depth = overrides.pop("alignment_depth", None)
    if depth is None:
        depth = _namespace_get(args, "encoder_depth") or OFFICIAL_DEFAULT_ALIGNMENT_DEPTH
    config["alignment_depth"] = int(depth)
    if not 1 <= config["alignment_depth"] <= num_layers:
        raise CheckpointError(
            f"alignment depth {config['alignment_depth']} does not fit a {num_layers}-block model: pass "
            "`alignment_depth=` (CLI: --alignment_depth), the official --encoder-depth of the run."
        )
    config.update(overrides)
    return config


def official_to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor], num_layers: int) -> dict:
    """Rename official SiT keys to ours and split the fused qkv projection. Unknown keys raise."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key == "pos_embed" or key.startswith("projectors."):
            continue  # the fixed sin-cos table is recomputed; projectors go to REPAProjector
        if m := re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            index, name, kind = int(m.group(1)), m.group(2), m.group(3)
            prefix = f"transformer_blocks.{index}"
            if index >= num_layers:
                unknown.append(key)
            elif name == "attn.qkv":
                for part, chunk in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                    converted[f"{prefix}.attn.{part}.{kind}"] = chunk.clone()
            elif name in _BLOCK_KEY_MAP:
                converted[f"{prefix}.{_BLOCK_KEY_MAP[name]}.{kind}"] = value
            else:
                unknown.append(key)
            continue
        stem, _, kind = key.rpartition(".")
        if stem in _TOP_KEY_MAP:
            converted[f"{_TOP_KEY_MAP[stem]}.{kind}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"Unknown keys in the official state dict (not a SiT, or another version): {unknown}")
    return converted


def _projector_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict] | None:
    keys = [key for key in state_dict if key.startswith("projectors.")]
    if not keys:
        return None
    heads = sorted({int(key.split(".")[1]) for key in keys})
    if heads != list(range(len(heads))):
        raise CheckpointError(f"Projector heads must be numbered 0..n-1, found {heads}.")
    z_dims = []
    for head in heads:
        needed = [f"projectors.{head}.{layer}.{kind}" for layer in (0, 2, 4) for kind in ("weight", "bias")]
        missing = [key for key in needed if key not in state_dict]
        if missing:
            raise CheckpointError(f"Incomplete projector {head}: missing {missing}.")
        z_dims.append(int(state_dict[f"projectors.{head}.4.weight"].shape[0]))
    extra = sorted(
        set(keys) - {f"projectors.{h}.{l}.{k}" for h in heads for l in (0, 2, 4) for k in ("weight", "bias")}
    )
    if extra:
        raise CheckpointError(f"Unknown projector keys: {extra}.")
    hidden_size = int(state_dict["projectors.0.0.weight"].shape[1])
    projector_dim = int(state_dict["projectors.0.0.weight"].shape[0])
    config = {"hidden_size": hidden_size, "projector_dim": projector_dim, "z_dims": z_dims}
    return {key: state_dict[key] for key in keys}, config


def _strict_load(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"The {what} weights do not fit the inferred config: missing {missing}, unexpected {unexpected}, "
            f"wrong shapes {wrong}. Pass the right config values (e.g. num_attention_heads, sample_size)."
        )
    model.load_state_dict(state_dict, strict=True, assign=any(p.is_meta for p in model.parameters()))


def convert_official_state_dict(
    state_dict: Mapping[str, Any], use_raw: bool = False, **config_overrides: Any
) -> tuple[SiTTransformer2DModel, REPAProjector | None]:
    """
    Build our models from an official REPA state dict or training checkpoint.

    Args:
        state_dict: a flat official state dict (the released `last.pt`), or an official training checkpoint
            (`model`/`ema`/`opt`/`args`/`steps`), whose EMA weights are used unless `use_raw=True`.
        use_raw: take the online (`model`) weights of a training checkpoint instead of the EMA (a flat state
            dict has only one set of weights: `use_raw=True` raises a [`CheckpointError`] for it).
        config_overrides: [`SiTTransformer2DModel`] config values the shapes cannot tell, e.g.
            `num_attention_heads=16, alignment_depth=8` (defaults: the official run's `args`, then the matching
            preset's heads and the official alignment depth 8).

    Returns:
        `(transformer, projector)`; `projector` is `None` when the checkpoint has no projector weights.

    Example:

    ```py
    >>> from diffusers_repa.convert import convert_official_state_dict, load_official_checkpoint
    >>> transformer, projector = convert_official_state_dict(load_official_checkpoint("last.pt"))
    >>> transformer.save_pretrained("sit-xl-2-repa/transformer")
    ```
    """
    weights, args = _split_checkpoint(state_dict, use_raw)
    config = _infer_config(weights, args, dict(config_overrides))
    converted = official_to_diffusers_state_dict(weights, config["num_layers"])
    # Weights on the meta device (a shape manifest) build the model there too, without allocating it.
    device = "meta" if any(value.is_meta for value in weights.values()) else "cpu"
    try:
        with torch.device(device):
            transformer = SiTTransformer2DModel(**config)
    except ValueError as error:  # e.g. a `sample_size` override that is not a multiple of the patch size
        raise CheckpointError(f"The inferred config {config} is not a valid SiT: {error}") from None
    _strict_load(transformer, converted, "transformer")
    if "pos_embed" in weights:
        official_pos, ours = weights["pos_embed"], transformer.pos_embed.pos_embed
        if official_pos.shape != ours.shape:
            raise CheckpointError(
                f"pos_embed has shape {tuple(official_pos.shape)}, the model expects {tuple(ours.shape)}: pass the "
                "right `sample_size`."
            )
        # Ours is recomputed from the fixed sin-cos formula; a checkpoint with other values is another model.
        if not official_pos.is_meta and not torch.allclose(official_pos.float(), ours, atol=1e-5):
            raise CheckpointError("The checkpoint's pos_embed is not the fixed 2-D sin-cos table SiT uses.")
    projector = None
    if (projector_weights := _projector_state_dict(weights)) is not None:
        projector_state, projector_config = projector_weights
        if projector_config["hidden_size"] != transformer.hidden_size:
            raise CheckpointError(
                f"Projector input width {projector_config['hidden_size']} != transformer width "
                f"{transformer.hidden_size}."
            )
        with torch.device(device):
            projector = REPAProjector(**projector_config)
        _strict_load(projector, projector_state, "projector")
    return transformer.eval(), projector


def diffusers_to_official_state_dict(
    transformer: SiTTransformer2DModel, projector: REPAProjector | None = None
) -> dict[str, torch.Tensor]:
    """
    Our weights in the official layout (fused qkv, `pos_embed` included), loadable by the official `generate.py`
    (`SiT_models[...](..., z_dims=projector z_dims, encoder_depth=alignment_depth)` with strict loading).
    """
    reverse_top = {ours: official for official, ours in _TOP_KEY_MAP.items()}
    reverse_block = {ours: official for official, ours in _BLOCK_KEY_MAP.items()}
    official: dict[str, torch.Tensor] = {}
    ours = transformer.state_dict()
    grid = transformer.config.sample_size // transformer.config.patch_size
    pos_embed = get_2d_sincos_pos_embed(transformer.hidden_size, grid, base_size=grid, output_type="pt")
    official["pos_embed"] = pos_embed.float().unsqueeze(0)
    for key, value in ours.items():
        if m := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            index, name, kind = m.groups()
            if name in ("attn.to_k", "attn.to_v"):
                continue
            if name == "attn.to_q":
                parts = [ours[f"transformer_blocks.{index}.attn.to_{p}.{kind}"] for p in "qkv"]
                official[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
            else:
                official[f"blocks.{index}.{reverse_block[name]}.{kind}"] = value
        else:
            stem, _, kind = key.rpartition(".")
            official[f"{reverse_top[stem]}.{kind}"] = value
    if projector is not None:
        official.update({key: value for key, value in projector.state_dict().items()})
    return {
        key: value.detach().contiguous() if value.is_meta else value.detach().cpu().contiguous()
        for key, value in official.items()
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m diffusers_repa.convert", description="Convert official REPA checkpoints to diffusers."
    )
    parser.add_argument("--checkpoint", type=Path, help="official .pt (flat state dict or training checkpoint)")
    parser.add_argument("--output_dir", type=Path, help="writes transformer/ and projector/ (and a pipeline)")
    parser.add_argument("--use_raw", action="store_true", help="use the online `model` weights, not the EMA")
    parser.add_argument("--num_attention_heads", type=int, default=None)
    parser.add_argument("--alignment_depth", type=int, default=None, help="the official --encoder-depth")
    parser.add_argument("--sample_size", type=int, default=None, help="latent side (resolution // 8)")
    parser.add_argument("--to_official", action="store_true", help="reverse: diffusers folder -> official .pt")
    parser.add_argument(
        "--pretrained_model_name_or_path",
        "--model_dir",
        help="with --to_official: a folder with transformer/ [projector/] (a pipeline or convert output) or a Hub "
        "repo id (--model_dir: old name)",
    )
    parser.add_argument("--output", type=Path, help="with --to_official: the .pt file to write")
    parser.add_argument(
        "--vae", help="AutoencoderKL folder or repo id: write a complete REPAPipeline folder (SDE scheduler) instead"
    )
    parser.add_argument("--hub_code", action="store_true", help="with --vae: also ship code for plain diffusers")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --output_dir whole (or an existing --output file); refused without it",
    )
    return parser.parse_args(argv)


def _load_diffusers_model(name_or_path: str) -> tuple[SiTTransformer2DModel, REPAProjector | None]:
    """The transformer (and the projector, when there is one) of a local folder or Hub repo."""
    try:
        transformer = SiTTransformer2DModel.from_pretrained(name_or_path, subfolder="transformer")
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"--pretrained_model_name_or_path {name_or_path}: no SiT transformer could be loaded from its "
            f"transformer/ ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); pass a "
            "folder written by convert, train_repa.py or `save_pretrained`, or its Hub repo id."
        ) from None
    if os.path.isdir(name_or_path):
        if not os.path.isdir(os.path.join(name_or_path, "projector")):
            return transformer, None
        return transformer, REPAProjector.from_pretrained(name_or_path, subfolder="projector")
    try:  # a Hub repo: the projector is optional
        return transformer, REPAProjector.from_pretrained(name_or_path, subfolder="projector")
    except OSError:
        return transformer, None


def _check_destination(path: Path, overwrite: bool, flag: str, keep: Path | None = None) -> None:
    """Refuse to write over a non-empty folder or an existing file unless `overwrite`; never delete `keep`."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir() and not path.is_symlink():
        contents = sorted(entry.name for entry in path.iterdir())
        if not contents:
            return
        if not overwrite:
            shown = ", ".join(contents[:5]) + (f" and {len(contents) - 5} more" if len(contents) > 5 else "")
            raise CheckpointError(
                f"{flag} {path} is not empty (holds {shown}): pass --overwrite to replace it whole, or choose "
                "another folder."
            )
        if keep is not None and keep.resolve().is_relative_to(path.resolve()):
            raise CheckpointError(
                f"The checkpoint {keep} lies inside {flag} {path}, which --overwrite would delete: choose another "
                "folder."
            )
    elif not overwrite:
        raise CheckpointError(f"{flag} {path} already exists: pass --overwrite to replace it, or choose another name.")


def _replace_whole(destination: Path, write: Any) -> None:
    """
    Call `write(folder)` on a fresh folder beside `destination`, then swap it in: an earlier `destination` is
    replaced whole (no stale files survive), and a failed or interrupted write leaves `destination` as it was.
    """
    destination = destination.absolute()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.converting-{os.getpid()}")
    retired = destination.with_name(f".{destination.name}.replaced-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
        if destination.is_symlink() or destination.is_file():
            destination.unlink()
        elif destination.exists():
            os.replace(destination, retired)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _check_flag_combination(args: argparse.Namespace) -> None:
    """Refuse flags that the chosen direction would ignore (e.g. `--hub_code` without `--vae` wrote no code)."""
    if args.to_official:
        given = {
            "--checkpoint": args.checkpoint is not None,
            "--output_dir": args.output_dir is not None,
            "--use_raw": args.use_raw,
            "--num_attention_heads": args.num_attention_heads is not None,
            "--alignment_depth": args.alignment_depth is not None,
            "--sample_size": args.sample_size is not None,
            "--vae": args.vae is not None,
            "--hub_code": args.hub_code,
        }
        direction = "--to_official (it converts --pretrained_model_name_or_path to --output)"
    else:
        given = {
            "--pretrained_model_name_or_path": args.pretrained_model_name_or_path is not None,
            "--output": args.output is not None,
            "--hub_code": args.hub_code and args.vae is None,
        }
        direction = "a conversion to diffusers (--hub_code needs --vae; the others need --to_official)"
    ignored = [flag for flag, present in given.items() if present]
    if ignored:
        raise CheckpointError(
            f"{', '.join(ignored)}: not used by {direction}, so it would be ignored; drop "
            f"{'it' if len(ignored) == 1 else 'them'} or change the command."
        )


def _load_vae(name_or_path: str) -> AutoencoderKL:
    """The `AutoencoderKL` of `--vae` (a folder or Hub repo id); one sentence when it cannot be loaded."""
    try:
        return AutoencoderKL.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise CheckpointError(
            f"--vae {name_or_path}: no AutoencoderKL could be loaded ({_first_line(error)}); pass a VAE folder "
            "(with config.json and weights) or a Hub repo id such as stabilityai/sd-vae-ft-ema."
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        _check_flag_combination(args)
        if args.to_official:
            if args.pretrained_model_name_or_path is None or args.output is None:
                raise CheckpointError("--to_official needs --pretrained_model_name_or_path and --output.")
            _check_destination(args.output, args.overwrite, "--output")
            transformer, projector = _load_diffusers_model(args.pretrained_model_name_or_path)
            with atomic_write(args.output) as file:  # the file is complete or absent, never partial
                torch.save(diffusers_to_official_state_dict(transformer, projector), file)
            print(f"Wrote the official-layout state dict to {args.output}")
            return 0
        if args.checkpoint is None or args.output_dir is None:
            raise CheckpointError("Pass --checkpoint and --output_dir (or --to_official).")
        _check_destination(args.output_dir, args.overwrite, "--output_dir", keep=args.checkpoint)
        overrides = {
            name: value
            for name in ("num_attention_heads", "alignment_depth", "sample_size")
            if (value := getattr(args, name)) is not None
        }
        vae = _load_vae(args.vae) if args.vae is not None else None  # a bad --vae is found before converting
        transformer, projector = convert_official_state_dict(
            load_official_checkpoint(args.checkpoint), use_raw=args.use_raw, **overrides
        )
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    pipeline = None
    if vae is not None:
        pipeline = REPAPipeline(transformer, SiTEulerMaruyamaScheduler(), vae=vae)

    def write(folder: Path) -> None:
        if pipeline is not None:
            pipeline.save_pretrained(folder, hub_code=args.hub_code)
        else:
            transformer.save_pretrained(folder / "transformer")
        if projector is not None:
            projector.save_pretrained(folder / "projector")

    _replace_whole(args.output_dir, write)
    if pipeline is not None:
        print(f"Wrote the pipeline {args.output_dir} (transformer, SDE scheduler, VAE from {args.vae})")
    print(f"Wrote {args.output_dir / 'transformer'} ({transformer.num_parameters():,} parameters)")
    if projector is not None:
        print(f"Wrote {args.output_dir / 'projector'} (z_dims {list(projector.config.z_dims)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
