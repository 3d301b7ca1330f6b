# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Model cards for SiT models trained with REPA, built with `huggingface_hub`'s `ModelCard` / `ModelCardData`.

The card's metadata says `library_name: diffusers` (the weights are diffusers folders), but the Hub's generic
diffusers snippet (`DiffusionPipeline.from_pretrained`) cannot load a third-party pipeline class, so the card carries
its own usage lines, which import `diffusers_repa`.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

from diffusers.loaders.lora_base import LORA_WEIGHT_NAME_SAFE
from huggingface_hub import ModelCard, ModelCardData

from .models import SIT_PRESETS

TAGS = ["diffusers", "diffusers-repa", "repa", "sit", "flow-matching", "class-conditional", "image-generation"]
# The file `save_lora_adapter` writes and `load_lora_adapter` reads (diffusers' constant).
LORA_WEIGHT_NAME = LORA_WEIGHT_NAME_SAFE


def describe_architecture(config: Mapping[str, Any]) -> str:
    r"""
    The architecture of a [`SiTTransformer2DModel`] config in words: the official preset's name only when the config
    is that preset (depth, width, heads, patch and MLP ratio), otherwise its depth, width, heads and patch.

    Example:

    ```py
    >>> from diffusers_repa import SiTTransformer2DModel
    >>> from diffusers_repa.model_card import describe_architecture
    >>> describe_architecture(SiTTransformer2DModel.preset_config("SiT-XL/2"))
    'SiT-XL/2 (28 blocks, width 1152, 16 heads, patch 2)'
    >>> describe_architecture(SiTTransformer2DModel.preset_config("SiT-S/4", num_layers=6, num_attention_heads=4,
    ...                                                           attention_head_dim=32))
    'SiT (6 blocks, width 128, 4 heads, patch 4)'

    ```
    """
    layers, heads, patch = config["num_layers"], config["num_attention_heads"], config["patch_size"]
    width = heads * config["attention_head_dim"]
    mlp_ratio = config.get("mlp_ratio", 4.0)
    shape = f"{layers} blocks, width {width}, {heads} heads, patch {patch}"
    if mlp_ratio != 4.0:
        shape += f", MLP ratio {mlp_ratio}"
    if config.get("qk_norm"):
        shape += ", QK-norm"
    presets = [name for name, preset in SIT_PRESETS.items() if preset == (layers, width, heads, patch)]
    return f"{presets[0] if presets and mlp_ratio == 4.0 else 'SiT'} ({shape})"


def _format_metric(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _is_hub_id(name: str | None) -> bool:
    """True for `owner/name`-style ids, False for local paths (which mean nothing on the Hub)."""
    return bool(name) and not os.path.isabs(name) and not name.startswith(".") and not os.path.exists(name)


def _usage(repo_id: str, base_model: str | None, lora: bool, example_label: int | str) -> str:
    if lora:
        return (
            "from diffusers_repa import REPAPipeline\n"
            f'pipe = REPAPipeline.from_pretrained("{base_model}")\n'
            f'pipe.transformer.load_lora_adapter("{repo_id}", weight_name="{LORA_WEIGHT_NAME}", prefix=None)\n'
            f"image = pipe(class_labels=[{example_label!r}]).images[0]"
        )
    return (
        "from diffusers_repa import REPAPipeline\n"
        f'pipe = REPAPipeline.from_pretrained("{repo_id}")\n'
        f"image = pipe(class_labels=[{example_label!r}]).images[0]"
    )


def build_model_card(
    repo_id: str,
    *,
    model_description: str,
    encoders: Sequence[str],
    hyperparameters: Mapping[str, Any],
    train_steps: int,
    dataset: str | None = None,
    base_model: str | None = None,
    lora: bool = False,
    sample_grid: str | None = None,
    example_label: int | str = 0,
    license: str = "apache-2.0",
    metrics: Mapping[str, Any] | None = None,
    metrics_description: str | None = None,
) -> ModelCard:
    r"""
    Build the model card of a REPA training run.

    Args:
        repo_id (`str`): The Hub repo the card describes (`user/name`); used in the usage lines.
        model_description (`str`): One paragraph on what was trained (architecture, data, resolution).
        encoders (`list[str]`): The alignment encoders (Hub ids or local names), in projector-head order.
        hyperparameters (`dict`): Settings to list in the card's table (learning rate, batch size, ...).
        train_steps (`int`): Optimizer steps the weights were trained for.
        dataset (`str`, *optional*): The training dataset; listed in the metadata when it is a Hub id.
        base_model (`str`, *optional*): The model that was fine-tuned (required with `lora=True`).
        lora (`bool`, defaults to `False`): The repo holds a LoRA adapter (`pytorch_lora_weights.safetensors`) for
            `base_model` rather than a full pipeline.
        sample_grid (`str`, *optional*): Path, relative to the repo root, of a sample grid image to show.
        example_label (`int` or `str`, defaults to 0): The class used in the usage example.
        license (`str`, defaults to `"apache-2.0"`): The weights' licence.
        metrics (`dict`, *optional*): Final evaluation results (e.g. `{"fid": 12.3, "precision": 0.61}`), shown in an
            "Evaluation" table.
        metrics_description (`str`, *optional*): How they were measured (samples, sampler, reference), shown above
            the table.

    Returns:
        `huggingface_hub.ModelCard`; `card.save(folder / "README.md")` writes it.

    Example:

    ```py
    >>> from diffusers_repa.model_card import build_model_card

    >>> card = build_model_card(
    ...     "me/sit-b-2-repa",
    ...     model_description="SiT-B/2 trained with REPA on ImageNet 256x256.",
    ...     encoders=["facebook/dinov2-base"],
    ...     hyperparameters={"learning_rate": 1e-4, "train_batch_size": 256},
    ...     train_steps=400_000,
    ...     dataset="ILSVRC/imagenet-1k",
    ... )
    >>> card.data.library_name
    'diffusers'

    ```
    """
    if lora and not base_model:
        raise ValueError("A LoRA model card needs the `base_model` the adapter was trained on.")
    tags = TAGS + (["lora"] if lora else [])
    card_data = ModelCardData(
        license=license,
        library_name="diffusers",
        tags=tags,
        datasets=[dataset] if _is_hub_id(dataset) else None,
        base_model=base_model if _is_hub_id(base_model) else None,
        inference=False,
    )
    table = "\n".join(f"| `{name}` | `{value}` |" for name, value in hyperparameters.items())
    encoder_list = "\n".join(f"- `{encoder}`" for encoder in encoders) or "- none (alignment off)"
    samples = f"![Samples from the EMA weights]({sample_grid})\n\n" if sample_grid else ""
    evaluation = ""
    if metrics:
        rows = "\n".join(f"| {name} | {_format_metric(value)} |" for name, value in metrics.items())
        evaluation = f"## Evaluation\n\n{metrics_description or ''}\n\n| metric | value |\n|---|---|\n{rows}\n\n"
    kind = f"a LoRA adapter for `{base_model}`" if lora else "a full `REPAPipeline`"
    content = f"""---
{card_data.to_yaml()}
---

# {repo_id.split("/")[-1]}

{model_description}

This repo holds {kind}, trained for {train_steps} steps with REPA (representation alignment, Yu et al. 2024,
[arXiv 2410.06940](https://arxiv.org/abs/2410.06940)): the SiT's early hidden states are aligned, through an MLP
projector, with the patch features of a frozen image encoder.

{samples}{evaluation}## Usage

Install `diffusers-repa` (the pipeline class is not part of diffusers), then:

```python
{_usage(repo_id, base_model, lora, example_label)}
```

## Training

Alignment encoder(s):
{encoder_list}

| hyperparameter | value |
|---|---|
{table}
"""
    return ModelCard(content)
