# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPAPipeline: class-conditional image generation with a SiT flow model (REPA, Yu et al. 2024).

This module imports only the standard library, torch, diffusers and huggingface_hub, so that the same file ships
as Hub code for plain-diffusers users (`pipelines/`, `save_pretrained(..., hub_code=True)`).
"""

import contextlib
import difflib
import glob
import inspect
import json
import math
import numbers
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.models import AutoencoderKL
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_loading_utils import (
    filter_model_files,
    is_safetensors_compatible,
    variant_compatible_siblings,
)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import deprecate
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import hf_hub_download, model_info, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

# The ImageNet-1k class names in synset order (id -> "name, synonym, ..."), shipped with the package.
IMAGENET_LABELS_FILE = Path(__file__).with_name("labels") / "imagenet.json"
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Where training checkpoints (`checkpoint-N/`: optimizer, EMA, RNG states) go in a model repo on the Hub:
# `checkpoints/checkpoint-N/`. `REPAPipeline.download` fetches only what `model_index.json` names, so neither these
# nor root-level `checkpoint-N/` folders of older repos are ever downloaded with the pipeline.
HUB_CHECKPOINTS_FOLDER = "checkpoints"
# Weight index files: `diffusion_pytorch_model.safetensors.index.json`, `....index.fp16.json`, `....fp16.index.json`.
_WEIGHT_INDEX = re.compile(r"\.(safetensors|bin)(\.[^./]+)?\.index(\.[^./]+)?\.json$")
# `noise_sampler(step_index, sample) -> noise`, as k-diffusion's noise samplers.
NoiseSampler = Callable[[int, torch.Tensor], torch.Tensor]


def load_imagenet_id2label() -> dict[str, str]:
    """The ImageNet-1k `id2label` shipped with the package: `{"0": "tench, Tinca tinca", ..., "999": ...}`."""
    with open(IMAGENET_LABELS_FILE, encoding="utf-8") as file:
        return json.load(file)


class REPAPipeline(DiffusionPipeline):
    r"""
    Class-conditional generation with a SiT flow model, reproducing the official REPA samplers.

    The scheduler integrates from `t = 1` (noise) to `t = 0`; each model call gets classifier-free guidance
    (`uncond + s * (cond - uncond)` on all channels, cond and uncond batched together) only when
    `guidance_scale > 1` and `low <= t <= high` for the scheduler's `guidance_time` (the Heun corrector reuses its
    step's decision). The final latents are mapped back with `latents / latent_scale + shift_factor` (diffusers'
    `vae.config.scaling_factor` / `shift_factor` convention) and decoded by the VAE, or, without a VAE, taken as
    pixels in [-1, 1]. A call runs the transformer and the VAE in eval mode whatever mode they are in (so no class
    label is dropped), and gives every submodule its mode back afterwards: a model fresh from `from_preset`, or a
    training EMA copy, samples as it is.

    Args:
        transformer ([`SiTTransformer2DModel`]): Predicts the velocity; its `num_classes` is the null label. A
            `DistributedDataParallel`/`DataParallel` wrapper (e.g. from `accelerator.prepare`) is unwrapped.
        scheduler ([`SiTEulerMaruyamaScheduler`], [`SiTEulerScheduler`] or [`SiTHeunScheduler`]):
            The sampler; the SDE scheduler with 250 steps is the paper's FID setting.
        vae ([`AutoencoderKL`], *optional*): Decodes latents (REPA: `stabilityai/sd-vae-ft-ema`). Without one, a
            3-channel transformer is a pixel-space model (its samples are the images) and any other model can only
            return `output_type="latent"`.
        id2label (`dict[str, str]`, *optional*): Class names, `"name, synonym, ..."` per id (keys may also be
            ints). Defaults to the ImageNet-1k names shipped with the package when the transformer has 1000 classes.
        latent_scale (`float` or a list of per-channel floats, *optional*): diffusers' `scaling_factor`: the model
            works on `(z - shift_factor) * latent_scale` for VAE latents `z`. Defaults to the VAE's
            `config.scaling_factor` (0.18215 for SD-VAE, REPA's value) when a VAE is given, else to 1 (pixels).
        shift_factor (`float` or a list of per-channel floats, *optional*): diffusers' `shift_factor` (see
            `latent_scale`). Defaults to the VAE's `config.shift_factor` (none for SD-VAE: 0) when a VAE is given,
            else to 0.
        latent_shift (`float` or a list of per-channel floats, *optional*): Deprecated, the old name for an
            encode-side shift, `z * latent_scale + latent_shift`: converted to `shift_factor = -latent_shift /
            latent_scale` (a FutureWarning when non-zero). Saved pipelines that hold it still load.

    Attributes:
        labels (`dict[str, int]`): Every class name and synonym of `id2label` -> its id (as `DiTPipeline.labels`);
            names shared by several classes are left out (pass the id). Names are matched case-insensitively by
            [`~REPAPipeline.get_label_ids`] and in `__call__`.

    Example (sampling from a model in memory, e.g. a training EMA copy; no eval() needed):

    ```py
    >>> import torch
    >>> from diffusers_repa import REPAPipeline, SiTEulerScheduler, SiTTransformer2DModel

    >>> transformer = SiTTransformer2DModel.from_preset("SiT-S/2", sample_size=8, in_channels=3, num_classes=10)
    >>> pipe = REPAPipeline(transformer=transformer, scheduler=SiTEulerScheduler())  # pixel space: no VAE
    >>> pipe([3, 7], num_inference_steps=10, generator=torch.manual_seed(0), output_type="np").images.shape
    (2, 8, 8, 3)
    ```
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: ModelMixin,
        scheduler: SchedulerMixin,
        vae: AutoencoderKL | None = None,
        id2label: dict[str, str] | None = None,
        latent_scale: float | list[float] | None = None,
        shift_factor: float | list[float] | None = None,
        latent_shift: float | list[float] | None = None,
    ):
        super().__init__()
        if isinstance(transformer, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            transformer = transformer.module
        if not isinstance(transformer, torch.nn.Module) or not hasattr(transformer, "config"):
            raise ValueError(
                f"`transformer` must be a SiTTransformer2DModel, got {type(transformer).__name__}. For a diffusers "
                "`EMAModel`, copy its weights into a model first: `ema.copy_to(model.parameters())`."
            )
        _check_sit_scheduler(scheduler)
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        num_classes = transformer.config.num_classes
        if id2label is None and num_classes == 1000 and IMAGENET_LABELS_FILE.is_file():
            id2label = load_imagenet_id2label()
        id2label = _check_id2label(id2label or {}, num_classes)
        vae_config = getattr(vae, "config", None)
        if latent_scale is None and vae_config is not None:
            latent_scale = getattr(vae_config, "scaling_factor", None)
        if latent_shift is not None:
            if shift_factor is not None:
                raise ValueError(
                    "Pass `shift_factor` (diffusers' convention, decoded as `x / latent_scale + shift_factor`) or the "
                    "deprecated `latent_shift`, not both."
                )
            if any(value != 0 for value in _as_list(latent_shift)):
                deprecate(
                    "latent_shift",
                    "1.0.0",
                    "Pass `shift_factor=-latent_shift / latent_scale` instead: diffusers' convention, latents decoded "
                    "as `x / latent_scale + shift_factor` (the value given is converted; re-save a loaded pipeline "
                    "with `save_pretrained` to store `shift_factor`).",
                )
            shift_factor = shift_factor_from_latent_shift(latent_shift, 1.0 if latent_scale is None else latent_scale)
        if shift_factor is None and vae_config is not None:
            shift_factor = getattr(vae_config, "shift_factor", None) or 0.0
        for name, value in (("latent_scale", latent_scale), ("shift_factor", shift_factor)):
            channels = len(value) if isinstance(value, (list, tuple)) else None
            if channels is not None and channels != transformer.config.in_channels:
                raise ValueError(
                    f"Per-channel `{name}` needs {transformer.config.in_channels} values (one per latent channel), "
                    f"got {channels}."
                )
            if value is not None and not all(math.isfinite(v) for v in _as_list(value)):
                raise ValueError(f"`{name}` must be finite, got {value}.")
        if latent_scale is not None and not all(value != 0 for value in _as_list(latent_scale)):
            raise ValueError(f"`latent_scale` must be non-zero, got {latent_scale}.")
        self.register_to_config(id2label=id2label, latent_scale=latent_scale, shift_factor=shift_factor)
        self.image_processor = VaeImageProcessor(do_resize=False)
        self._label_index = _build_label_index(id2label)
        self.labels = _public_labels(id2label, self._label_index)

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_interval(self) -> tuple[float, float]:
        return self._guidance_interval

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the current call guides (`guidance_scale > 1`); within it, only for `t` in `guidance_interval`."""
        return self._guidance_scale > 1

    @property
    def attention_kwargs(self) -> dict[str, Any] | None:
        """The `attention_kwargs` of the current call (e.g. `{"scale": 0.5}` for the LoRA scale)."""
        return self._attention_kwargs

    def get_label_ids(self, class_labels: int | str | Sequence[int | str] | torch.Tensor) -> list[int]:
        """
        Map class labels to ids in [0, num_classes] (`num_classes` is the unconditional "null" class).

        Args:
            class_labels: An id (a Python or NumPy integer), a class name (any comma-separated synonym of `id2label`,
                case-insensitive), a list mixing both, or a 1-D integer tensor or NumPy array.

        Returns:
            `list[int]`: one id per label.

        Raises:
            `ValueError`: for unknown or ambiguous names (with close matches) and ids out of range.
        """
        if hasattr(class_labels, "__array__") and not torch.is_tensor(class_labels):  # a NumPy array or scalar
            class_labels = torch.as_tensor(class_labels)
        if torch.is_tensor(class_labels):
            if class_labels.ndim > 1 or class_labels.is_floating_point() or class_labels.dtype == torch.bool:
                raise ValueError(f"A `class_labels` tensor or array must be 1-D of integers, got {class_labels}.")
            class_labels = class_labels.flatten().tolist()
        elif not isinstance(class_labels, Sequence) or isinstance(class_labels, str):
            class_labels = [class_labels]
        class_labels = list(class_labels)
        if not class_labels:
            raise ValueError("`class_labels` is empty: pass at least one class id or name.")
        num_classes = self.transformer.config.num_classes
        highest = num_classes if self._has_null_class else num_classes - 1
        ids = []
        for label in class_labels:
            if isinstance(label, str):
                ids.append(self._name_to_id(label))
            elif isinstance(label, numbers.Integral) and not isinstance(label, bool):  # int, np.int64, ...
                if not 0 <= label <= highest:
                    null = (
                        f"{num_classes} is the unconditional class"
                        if self._has_null_class
                        else "this model, trained without label dropout, has no unconditional class"
                    )
                    raise ValueError(f"Class id {label} is outside [0, {highest}] ({null}).")
                ids.append(int(label))
            else:
                raise ValueError(f"Class labels must be ints or names, got {label!r} ({type(label).__name__}).")
        return ids

    @property
    def _has_null_class(self) -> bool:
        """Whether the transformer has the unconditional class `num_classes` (trained with label dropout > 0)."""
        return getattr(self.transformer.config, "class_dropout_prob", 0.1) > 0  # 0.1: the model's default

    def _name_to_id(self, name: str) -> int:
        key = " ".join(name.lower().split())
        if key not in self._label_index:
            if not self._label_index:
                raise ValueError(f"This pipeline has no class names (`id2label` is empty); pass ids, not {name!r}.")
            close = difflib.get_close_matches(key, self._label_index, n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
            raise ValueError(f"Unknown class name {name!r}.{hint} Pass a name from `id2label` or an id.")
        ids = self._label_index[key]
        if len(ids) > 1:
            names = "; ".join(f"{i}: {self.config.id2label[str(i)]!r}" for i in ids)
            raise ValueError(f"Class name {name!r} is ambiguous ({names}); pass the id instead.")
        return ids[0]

    def check_inputs(
        self,
        num_inference_steps: int,
        guidance_scale: float,
        guidance_interval: tuple[float, float],
        latents: torch.Tensor | None,
        latents_shape: tuple[int, ...],
        noise_sampler: NoiseSampler | None,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        generator: torch.Generator | list[torch.Generator] | None = None,
        callback_on_step_end: Callable | None = None,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Raise a `ValueError` for any invalid argument, before any work is done."""
        _check_sit_scheduler(self.scheduler)  # `pipe.scheduler = X.from_config(...)` bypasses `__init__`'s check
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, numbers.Integral)  # NumPy integers too, as `set_timesteps`
            or num_inference_steps < 1
        ):
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        if (
            not isinstance(guidance_scale, numbers.Real)
            or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 0 (1 disables guidance), got {guidance_scale!r}."
            )
        if guidance_scale > 1 and not self._has_null_class:
            raise ValueError(
                f"`guidance_scale={guidance_scale}` needs the unconditional class, which this model lacks: it was "
                "trained without label dropout (`class_dropout_prob=0`). Pass `guidance_scale=1` (no guidance)."
            )
        if (
            not isinstance(guidance_interval, Sequence)
            or len(guidance_interval) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in guidance_interval)
            or not 0 <= guidance_interval[0] <= guidance_interval[1] <= 1
        ):
            raise ValueError(
                f"`guidance_interval` must be (low, high) with 0 <= low <= high <= 1 (in flow time t, t = 1 noise), "
                f"got {guidance_interval!r}."
            )
        if latents is not None:
            if not torch.is_tensor(latents) or not latents.is_floating_point():
                raise ValueError(f"`latents` must be a floating-point tensor, got {type(latents).__name__}.")
            if tuple(latents.shape) != latents_shape:
                raise ValueError(
                    f"`latents` must have shape {latents_shape} (one per class label), got {tuple(latents.shape)}."
                )
            if not torch.isfinite(latents).all():
                bad = int((~torch.isfinite(latents)).sum())
                raise ValueError(f"`latents` holds {bad} NaN or infinite values: pass finite initial noise.")
        if noise_sampler is not None and not callable(noise_sampler):
            raise ValueError("`noise_sampler` must be a callable `(step_index, sample) -> noise`.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if output_type != "latent" and self.vae is None and self.transformer.config.in_channels != 3:
            raise ValueError(
                f"Without a VAE, only `output_type='latent'` works for a {self.transformer.config.in_channels}-channel "
                "model (a pixel-space model has 3 channels)."
            )
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` {unknown} not in {self._callback_tensor_inputs}.")
        batch_size = latents_shape[0]
        generators = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(
                f"`generator` must be a `torch.Generator` or a list of them (one per image), got {generator!r}."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested a batch of "
                f"{batch_size} images (one per class label): pass one generator per image, or a single generator."
            )
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise ValueError(
                "`callback_on_step_end` must be callable as `callback_on_step_end(pipe, step, t, callback_kwargs)`, "
                f"got {type(callback_on_step_end).__name__}."
            )
        if attention_kwargs is not None:
            if not isinstance(attention_kwargs, dict):
                raise ValueError(
                    f"`attention_kwargs` must be a dict such as {{'scale': 0.5}}, "
                    f"got {type(attention_kwargs).__name__}."
                )
            unknown = sorted(set(attention_kwargs) - {"scale"})
            if unknown:
                raise ValueError(f"`attention_kwargs` supports only `scale` (the LoRA scale), got {unknown}.")

    def _step_noise(
        self,
        step_index: int,
        latents: torch.Tensor,
        noise_sampler: NoiseSampler | None,
        generator: torch.Generator | list[torch.Generator] | None,
        draw_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        if noise_sampler is None and draw_dtype is not None:  # fast mode
            return _draw_noise_async(latents.shape, generator, latents.device, draw_dtype, latents.dtype)
        if noise_sampler is None:
            return randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        noise = noise_sampler(step_index, latents)
        if not torch.is_tensor(noise) or noise.shape != latents.shape:
            shape = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
            raise ValueError(
                f"`noise_sampler({step_index}, sample)` must return a tensor of the sample's shape "
                f"{tuple(latents.shape)}, got {shape}."
            )
        return noise.to(latents)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | torch.Tensor,
        num_inference_steps: int = 250,
        guidance_scale: float = 1.8,
        guidance_interval: tuple[float, float] = (0.0, 0.7),
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        noise_sampler: NoiseSampler | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 - diffusers' signature
        fast: bool = False,
        fast_dtype: torch.dtype | None = None,
        attention_kwargs: dict[str, Any] | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate one image per class label.

        The defaults are the paper's FID 1.42 setting (with [`SiTEulerMaruyamaScheduler`]): 250 steps, guidance 1.8
        applied for `t` in [0, 0.7]. Faster: [`SiTHeunScheduler`] with 50 steps (99 model calls).

        Args:
            class_labels (`int`, `str`, a list of them, or a 1-D `torch.Tensor`): Class ids in [0, num_classes]
                (`num_classes` = unconditional) or names from `id2label` (e.g. `"golden retriever"`), mixed freely.
            num_inference_steps (`int`, defaults to 250): Integration steps (>= 1).
            guidance_scale (`float`, defaults to 1.8): Classifier-free guidance scale; <= 1 disables guidance.
            guidance_interval (`tuple[float, float]`, defaults to `(0.0, 0.7)`): Guidance is applied when
                `low <= t <= high`, in flow time (`t = 1` noise); `(0, 1)` guides every step.
            generator (`torch.Generator` or a list, one per image, *optional*): Makes the initial noise and the SDE
                noise deterministic (a CPU generator gives the same images on CPU and CUDA). The SDE scheduler draws
                its noise with it, in `scheduler.step(..., generator=generator)`.
            latents (`torch.Tensor` of shape `(batch, channels, sample_size, sample_size)`, *optional*): Initial noise
                at `t = 1`; drawn in float32 with `generator` when omitted.
            noise_sampler (`Callable[[int, torch.Tensor], torch.Tensor]`, *optional*): For stochastic schedulers,
                `noise_sampler(step_index, sample)` returns the standard normal noise of that step (shape of
                `sample`), instead of drawing it with `generator`; it is called before the step's model call, like
                the official sampler's `randn_like`, and passed to the scheduler as `variance_noise`. Use it to
                replay a run exactly.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (float in [0, 1], NHWC), `"pt"` (float in
                [0, 1], NCHW) or `"latent"` (the final state, in the scheduler's `state_dtype`; float32 with
                `fast=True`).
            return_dict (`bool`, defaults to `True`): Return an [`ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, [`PipelineCallback`] or [`MultiPipelineCallbacks`], *optional*): Called
                after every model call as `callback_on_step_end(self, i, t, callback_kwargs)` and must return a dict
                (usually `callback_kwargs`); returned tensors (e.g. `latents`) replace the pipeline's.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): Tensors passed in
                `callback_kwargs`.
            attention_kwargs (`dict`, *optional*): Passed to the transformer at every call, as in diffusers'
                pipelines: `{"scale": s}` scales a loaded LoRA adapter for this call.
            fast (`bool`, defaults to `False`): The fast/exact switch. `False` (exact) reproduces the official
                samplers (state in the scheduler's `state_dtype`, float64 by default; the model in its own dtype).
                `True` integrates in float32 and runs the model under autocast in `fast_dtype` (bfloat16 on CUDA by
                default), with the per-step noise drawn as in exact mode (so the same seed gives the same noise)
                but copied to the device asynchronously: the loop has no host-device synchronisation. Guidance
                batching is the same in both modes (cond and uncond batched only inside `guidance_interval`).
                Final latents stay within about 1e-2 relative L2 of exact mode in bfloat16 (measured on CPU: see
                the README). For more speed on CUDA, also compile the model once:
                `pipe.transformer.compile_repeated_blocks(fullgraph=True)`.
            fast_dtype (`torch.dtype`, *optional*): Only with `fast=True`: the autocast dtype of the model,
                `torch.bfloat16`, `torch.float16` or `torch.float32` (no autocast). Defaults to `torch.bfloat16`
                on CUDA and `torch.float32` elsewhere (CPUs without bf16 matrix units run bf16 slower).

        Examples:

        ```py
        >>> import torch
        >>> from diffusers_repa import REPAPipeline, SiTHeunScheduler

        >>> pipe = REPAPipeline.from_pretrained("path/to/sit-xl-2-repa")
        >>> images = pipe(["golden retriever", 88], generator=torch.manual_seed(0)).images  # paper setting, SDE 250
        >>> pipe.scheduler = SiTHeunScheduler.from_config(pipe.scheduler.config)
        >>> images = pipe(["golden retriever", 88], num_inference_steps=50, generator=torch.manual_seed(0)).images
        ```

        Returns:
            [`ImagePipelineOutput`] with `images`, or a tuple `(images,)`.
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        label_ids = self.get_label_ids(class_labels)
        config = self.transformer.config
        latents_shape = (len(label_ids), config.in_channels, config.sample_size, config.sample_size)
        self.check_inputs(
            num_inference_steps,
            guidance_scale,
            guidance_interval,
            latents,
            latents_shape,
            noise_sampler,
            output_type,
            callback_on_step_end_tensor_inputs,
            generator=generator,
            callback_on_step_end=callback_on_step_end,
            attention_kwargs=attention_kwargs,
        )
        _check_fast_options(fast, fast_dtype)
        self._guidance_scale = guidance_scale
        self._guidance_interval = (float(guidance_interval[0]), float(guidance_interval[1]))
        self._interrupt = False
        self._attention_kwargs = attention_kwargs
        device = self._execution_device
        # Fast mode integrates with a float32 copy of the scheduler; noise is still drawn in the configured dtype.
        scheduler = _float32_scheduler(self.scheduler) if fast else self.scheduler
        noise_dtype = self.scheduler.state_dtype if fast else None
        autocast_dtype = _fast_autocast_dtype(fast_dtype, device) if fast else None
        state_dtype = scheduler.state_dtype
        model_dtype = self.transformer.dtype

        if latents is None:
            latents = randn_tensor(latents_shape, generator=generator, device=device, dtype=torch.float32)
        latents = latents.to(device=device, dtype=state_dtype)
        labels = torch.tensor(label_ids, device=device)
        guided_labels = torch.cat([labels, torch.full_like(labels, config.num_classes)])  # cond first, then null
        scheduler.set_timesteps(num_inference_steps, device=device)
        scheduler.set_begin_index(0)
        timesteps = scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # The SDE scheduler draws its noise from `generator` in `step`; a `noise_sampler` (or fast mode's
        # asynchronous draw) hands it over as `variance_noise` instead.
        step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters

        # Eval mode whatever the caller's (a model built in train mode would drop class labels at random).
        # The bar counts integration steps (a Heun step is two model calls), as diffusers' pipelines do.
        with self._eval_mode(), self.progress_bar(total=scheduler.num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                noise = None
                if scheduler.noise_needed and (noise_sampler is not None or fast):
                    noise = self._step_noise(i, latents, noise_sampler, generator, noise_dtype)
                low, high = self._guidance_interval
                guided = self._guidance_scale > 1 and low <= scheduler.guidance_time <= high
                model_input = torch.cat([latents, latents]) if guided else latents
                model_labels = guided_labels if guided else labels
                # t stays float32 for low-precision models: casting it to bf16 would quantise the time. A copy, not a
                # view into `timesteps` whose offset changes every step (a compiled model would recompile on it).
                model_time = t.to(torch.float32, copy=True).expand(model_input.shape[0])
                with _model_autocast(device, autocast_dtype):
                    velocity = self.transformer(
                        model_input.to(model_dtype),
                        model_time,
                        model_labels,
                        return_dict=False,
                        attention_kwargs=self.attention_kwargs,
                    )[0]
                # Always a new tensor: the scheduler may keep it past the next model call (Heun's predictor), and a
                # model replayed as a CUDA graph returns the same output buffer on every call.
                velocity = velocity.to(state_dtype, copy=True)
                if guided:
                    cond, uncond = velocity.chunk(2)
                    velocity = uncond + self._guidance_scale * (cond - uncond)
                if noise is not None:
                    step_kwargs = {"variance_noise": noise}
                else:
                    step_kwargs = {"generator": generator} if step_takes_generator else {}
                latents = scheduler.step(velocity, t, latents, return_dict=False, **step_kwargs)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    if not isinstance(callback_outputs, dict):
                        raise ValueError(
                            f"`callback_on_step_end` must return a dict (the `callback_kwargs` it was given, changed "
                            f"or not), but returned {type(callback_outputs).__name__} at step {i}."
                        )
                    latents = callback_outputs.pop("latents", latents)
                if i == len(timesteps) - 1 or (i + 1) % scheduler.order == 0:
                    progress_bar.update()

        if output_type == "latent":
            image = latents
        else:
            image = self._unscale_latents(latents)
            if self.vae is not None:
                with self._eval_mode():
                    image = self.vae.decode(image.to(device=device, dtype=self.vae.dtype), return_dict=False)[0]
            image = self.image_processor.postprocess(image.float(), output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        """Put the transformer and the VAE in eval mode, and give every submodule its own mode back afterwards."""
        roots = [module for module in (self.transformer, self.vae) if isinstance(module, torch.nn.Module)]
        modes = [(module, module.training) for root in roots for module in root.modules()]
        for root in roots:
            root.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """
        `latents / latent_scale + shift_factor` (diffusers' decoding convention), per channel when the config holds
        lists; an unset scale or shift is the VAE's `scaling_factor` / `shift_factor` (without a VAE: 1 and 0).
        """
        vae_config = getattr(self.vae, "config", None)
        scale, shift = self.config.latent_scale, self.config.get("shift_factor")
        if scale is None:
            scale = getattr(vae_config, "scaling_factor", None) or 1.0
        if shift is None:
            shift = getattr(vae_config, "shift_factor", None) or 0.0
        shape = (1, -1, 1, 1)
        scale = torch.tensor(_as_list(scale), dtype=latents.dtype, device=latents.device)
        shift = torch.tensor(_as_list(shift), dtype=latents.dtype, device=latents.device)
        return latents / scale.view(shape) + shift.view(shape)

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs: Any) -> str:
        """
        Download what the pipeline needs from a Hub repo and return the local snapshot folder.

        Only `model_index.json` and the files of the components it names are fetched: their configs and the weights
        that `variant` and `use_safetensors` select (as diffusers' own `download` does), plus the Hub code files
        (`pipeline_repa.py`, `<component>/*.py`) with `trust_remote_code=True`. Anything else in the repo, such as
        training checkpoints (`checkpoints/checkpoint-N/`, see `HUB_CHECKPOINTS_FOLDER`, or `checkpoint-N/` at the
        root), logs or sample images, is never downloaded; components passed to `from_pretrained` are skipped.

        diffusers' own `download` refuses repos whose `model_index.json` names libraries other than diffusers and
        transformers, which every `save_pretrained` folder of this pipeline does; `from_pretrained(repo_id)` calls
        this instead. Honours `revision`, `cache_dir`, `token`, `local_files_only`, `force_download`, `variant`,
        `use_safetensors`, `trust_remote_code` and the `HF_HUB_OFFLINE` / `HF_HUB_CACHE` environment variables;
        offline, it uses the cached snapshot.

        Raises:
            `ValueError`: when `pretrained_model_name` is neither an existing folder nor a repo that can be found, or
            is not a pipeline repo, or lacks the weights `variant` / `use_safetensors=True` ask for.
        """
        missing = f"There is no folder {str(pretrained_model_name)!r}"
        hub_kwargs = {key: kwargs.get(key) for key in ("revision", "cache_dir", "token")}
        local_files_only = bool(kwargs.get("local_files_only", False))
        force_download = bool(kwargs.get("force_download", False))
        try:
            index_file = hf_hub_download(
                pretrained_model_name,
                cls.config_name,
                local_files_only=local_files_only,
                force_download=force_download,
                **hub_kwargs,
            )
            filenames = None
            if not local_files_only:
                try:
                    info = model_info(pretrained_model_name, revision=hub_kwargs["revision"], token=hub_kwargs["token"])
                    filenames = [sibling.rfilename for sibling in info.siblings]
                except (OSError, ValueError):  # offline (HF_HUB_OFFLINE) or unreachable: use the cached snapshot
                    local_files_only = True
            if filenames is None:
                snapshot = Path(index_file).parent
                filenames = [path.relative_to(snapshot).as_posix() for path in snapshot.rglob("*") if path.is_file()]
            with open(index_file, encoding="utf-8") as file:
                model_index = json.load(file)
            expected_components, _ = cls._get_signature_keys(cls)
            files = select_pipeline_files(
                model_index,
                filenames,
                variant=kwargs.get("variant"),
                use_safetensors=kwargs.get("use_safetensors"),
                skip_components=[name for name in expected_components if name in kwargs],
                include_code=bool(kwargs.get("trust_remote_code", False)),
            )
            return snapshot_download(
                pretrained_model_name,
                allow_patterns=[glob.escape(name) for name in files],
                local_files_only=local_files_only,
                force_download=force_download,
                **hub_kwargs,
            )
        except HFValidationError:
            raise ValueError(
                f"{missing}, and it is not a Hub repo id either ('org/name'): pass a folder written by "
                "`REPAPipeline.save_pretrained` (check the path) or a Hub repo id."
            ) from None
        except LocalEntryNotFoundError:
            if not _in_hub_cache(pretrained_model_name, hub_kwargs):
                raise ValueError(
                    f"{missing}, and the Hub repo {pretrained_model_name!r} is not in the local Hub cache while the "
                    "Hub is offline (HF_HUB_OFFLINE) or unreachable: check the path, or download the repo first."
                ) from None
            raise ValueError(
                f"The cached Hub repo {pretrained_model_name!r} has no {cls.config_name}, so it is not a pipeline "
                "repo: pass a repo or folder written by `REPAPipeline.save_pretrained` (a bare transformer loads "
                "with `SiTTransformer2DModel.from_pretrained`)."
            ) from None
        except RepositoryNotFoundError:
            raise ValueError(
                f"{missing}, and there is no Hub repo {pretrained_model_name!r} (or it is private or gated: log in "
                "with `hf auth login`): check the path or the repo id."
            ) from None
        except EntryNotFoundError:
            raise ValueError(
                f"The Hub repo {pretrained_model_name!r} has no {cls.config_name}, so it is not a pipeline repo: pass "
                "a repo or folder written by `REPAPipeline.save_pretrained` (a bare transformer loads with "
                "`SiTTransformer2DModel.from_pretrained`)."
            ) from None

    def save_pretrained(self, save_directory: str | os.PathLike, hub_code: bool = False, **kwargs: Any) -> None:
        """
        Save the pipeline; with `hub_code=True`, also make the folder loadable by plain diffusers.

        Args:
            save_directory (`str` or `os.PathLike`): The folder to write.
            hub_code (`bool`, defaults to `False`): Copy the source files of the pipeline, transformer and scheduler
                into the folder (they import only torch and diffusers) and point `model_index.json` at them, so that
                `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` works without
                `diffusers_repa` installed. Such a folder always needs `trust_remote_code=True`.
            kwargs: Passed to [`DiffusionPipeline.save_pretrained`] (`safe_serialization`, `variant`, ...).
        """
        if hub_code and kwargs.get("push_to_hub"):
            raise ValueError("Save with `hub_code=True` first, then upload the folder with `upload_folder`.")
        super().save_pretrained(save_directory, **kwargs)
        if hub_code:
            self._write_hub_code(Path(save_directory))

    def _write_hub_code(self, folder: Path) -> None:
        index_file = folder / "model_index.json"
        model_index = json.loads(index_file.read_text())
        components = {"transformer": type(self.transformer), "scheduler": type(self.scheduler)}
        model_index.update(write_hub_code(folder, type(self), components))
        index_file.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n")


# `from .a import x`, `from ..b.c import y`: the imports a module makes inside its own package.
_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\s)", re.MULTILINE)


def write_hub_code(
    folder: str | os.PathLike, pipeline_class: type, components: dict[str, type | Sequence[type]]
) -> dict[str, list[str]]:
    """
    Write the source of a pipeline and its components as Hub code that plain diffusers loads with
    `trust_remote_code=True`: the pipeline module at the root, each component's module in its folder.

    diffusers' remote-code loader only follows single-dot imports between files of one folder, so each module is
    copied with the modules it imports from its package (recursively), flat, with those imports rewritten to
    `from .module import ...`. This is how `pipelines/` is made.

    Args:
        folder (`str` or `os.PathLike`): Where to write (e.g. a `save_pretrained` folder, or `pipelines/`).
        pipeline_class (`type`): The pipeline class, e.g. [`REPAPipeline`].
        components (`dict[str, type | Sequence[type]]`): Component name -> class (or classes, all copied; the
            first one is the entry), e.g. `{"transformer": SiTTransformer2DModel, "scheduler": [SiTEulerScheduler]}`.

    Returns:
        The `model_index.json` entries, e.g. `{"_class_name": ["pipeline_repa", "REPAPipeline"],
        "transformer": ["sit_transformer_2d", "SiTTransformer2DModel"], ...}`.
    """
    folder = Path(folder)
    entries = {}
    for name, classes in {"_class_name": pipeline_class, **components}.items():
        classes = list(classes) if isinstance(classes, Sequence) else [classes]
        target = folder if name == "_class_name" else folder / name
        target.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}
        for cls in classes:
            _copy_module_flat(Path(inspect.getsourcefile(cls)).resolve(), target, written)
        entries[name] = [Path(inspect.getsourcefile(classes[0])).stem, classes[0].__name__]
    return entries


def _copy_module_flat(source: Path, target: Path, written: dict[str, Path]) -> None:
    if source.name in written:
        if written[source.name] != source:
            raise ValueError(
                f"Two modules named {source.name} ({written[source.name]}, {source}) cannot share {target}."
            )
        return
    written[source.name] = source

    def flatten(match: re.Match) -> str:
        prefix, dots, module, suffix = match.groups()
        if not module:
            raise ValueError(f"{source}: `from {dots} import ...` cannot be flattened; import from a module instead.")
        package = source.parent
        for _ in range(len(dots) - 1):
            package = package.parent
        dependency = package.joinpath(*module.split(".")).with_suffix(".py")
        if not dependency.is_file():
            raise ValueError(f"{source} imports {dots}{module}, which is not a module file ({dependency}).")
        _copy_module_flat(dependency.resolve(), target, written)
        return f"{prefix}.{dependency.stem}{suffix}"

    (target / source.name).write_text(_RELATIVE_IMPORT.sub(flatten, source.read_text()))


def _check_sit_scheduler(scheduler: SchedulerMixin) -> None:
    """Raise a `ValueError` unless `scheduler` is one of the SiT schedulers (the pipeline's loop needs their API)."""
    if not hasattr(type(scheduler), "guidance_time"):
        raise ValueError(
            f"{type(scheduler).__name__} is not a SiT scheduler: use SiTEulerMaruyamaScheduler, SiTEulerScheduler "
            "or SiTHeunScheduler (they integrate in model time t in [0, 1] and tell the pipeline when to guide), e.g. "
            "`pipe.scheduler = SiTHeunScheduler.from_config(pipe.scheduler.config)`."
        )


FAST_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _check_fast_options(fast: bool, fast_dtype: torch.dtype | None) -> None:
    """Raise a `ValueError` for a bad `fast` / `fast_dtype` pair."""
    if not isinstance(fast, bool):
        raise ValueError(f"`fast` must be True or False, got {fast!r}.")
    if fast_dtype is not None and not fast:
        raise ValueError("`fast_dtype` only applies to fast sampling: pass `fast=True` with it, or drop it.")
    if fast_dtype is not None and fast_dtype not in FAST_DTYPES:
        raise ValueError(
            f"`fast_dtype` must be one of {', '.join(map(str, FAST_DTYPES))} (the model's autocast dtype), "
            f"got {fast_dtype!r}."
        )


def _fast_autocast_dtype(fast_dtype: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of fast mode (`None`: no autocast): bfloat16 on CUDA, float32 elsewhere, unless given."""
    if fast_dtype is None:
        fast_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return None if fast_dtype == torch.float32 else fast_dtype


def _model_autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _float32_scheduler(scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh copy of a SiT scheduler with a float32 integration state (fast mode); `scheduler` is not touched."""
    return type(scheduler).from_config(scheduler.config, state_dtype="float32")


def _draw_noise_async(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    draw_dtype: torch.dtype,
    dtype: torch.dtype,
) -> torch.Tensor:
    """
    Standard normal noise drawn in `draw_dtype` (the values exact mode draws) and returned in `dtype` on `device`.
    Noise from CPU generators is drawn on the host into pinned memory and copied without blocking, so that drawing
    the next step's noise overlaps the device's work instead of synchronising with it.
    """
    generators = generator if isinstance(generator, list) else [generator]
    on_host = device.type == "cuda" and all(g is not None and g.device.type == "cpu" for g in generators)
    if not on_host:
        return randn_tensor(shape, generator=generator, device=device, dtype=draw_dtype).to(dtype)
    noise = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=draw_dtype).to(dtype)
    return noise.pin_memory().to(device, non_blocking=True)


def _in_hub_cache(repo_id: str, hub_kwargs: dict[str, Any]) -> bool:
    """Whether the local Hub cache holds a snapshot of `repo_id` (at the revision asked for)."""
    try:
        snapshot_download(repo_id, local_files_only=True, **hub_kwargs)
    except (OSError, ValueError):
        return False
    return True


def select_pipeline_files(
    model_index: dict[str, Any],
    filenames: Sequence[str],
    variant: str | None = None,
    use_safetensors: bool | None = None,
    skip_components: Sequence[str] = (),
    include_code: bool = False,
) -> list[str]:
    """
    The files of a pipeline repo that loading it needs: `model_index.json`, and for each component it names (except
    `skip_components`), the files directly in its folder: configs, and the weights that `variant` and
    `use_safetensors` select (with diffusers' own rules: safetensors when every component has them, else the
    `.bin` files; variant files where a component has them, else its plain ones). Python files only with
    `include_code` (the Hub code of `save_pretrained(..., hub_code=True)`).

    Args:
        model_index (`dict`): The repo's `model_index.json`.
        filenames (`Sequence[str]`): Every file of the repo, as paths relative to its root
            (`"transformer/config.json"`).
        variant (`str`, *optional*): e.g. `"fp16"` for `diffusion_pytorch_model.fp16.safetensors`.
        use_safetensors (`bool`, *optional*): `True` requires safetensors weights, `False` takes the `.bin` ones,
            `None` prefers safetensors.
        skip_components (`Sequence[str]`): Components the caller passes in, whose files are not needed.
        include_code (`bool`, defaults to `False`): Also take the pipeline's and the components' `.py` files.

    Returns:
        `list[str]`: The selected paths, sorted. Training checkpoints, logs and anything else outside the component
        folders are never among them.

    Raises:
        `ValueError`: when `variant` or `use_safetensors=True` asks for weights the repo does not have.

    Example:

    ```py
    >>> from diffusers_repa.pipeline_repa import select_pipeline_files

    >>> index = {"_class_name": "REPAPipeline", "transformer": ["m", "SiT"], "vae": [None, None]}
    >>> select_pipeline_files(index, ["model_index.json", "transformer/config.json",
    ...     "transformer/diffusion_pytorch_model.safetensors", "checkpoints/checkpoint-100/optimizer.bin"])
    ['model_index.json', 'transformer/config.json', 'transformer/diffusion_pytorch_model.safetensors']
    ```
    """
    components = [
        name
        for name, entry in model_index.items()
        if not name.startswith("_")
        and isinstance(entry, (list, tuple))
        and len(entry) == 2
        and None not in entry
        and name not in skip_components
    ]
    selected, weights = {DiffusionPipeline.config_name}, set()
    for name in filenames:
        folder, _, base = name.rpartition("/")
        if folder not in components or "/" in folder:
            continue
        if base.endswith(".py"):
            if include_code:
                selected.add(name)
        elif filter_model_files([base]) or _WEIGHT_INDEX.search(base):
            weights.add(name)
        else:
            selected.add(name)
    class_name = model_index.get("_class_name")
    if include_code and isinstance(class_name, (list, tuple)) and f"{class_name[0]}.py" in filenames:
        selected.add(f"{class_name[0]}.py")
    if weights:
        folders = {name.split("/")[0] for name in weights}
        if use_safetensors is not False and is_safetensors_compatible(weights, folder_names=folders, variant=variant):
            ignore = ["*.bin", "*.msgpack", "*.onnx", "*.pb"]
        elif use_safetensors:
            variant_text = f" of variant {variant!r}" if variant else ""
            raise ValueError(
                f"`use_safetensors=True`, but not every component has `.safetensors` weights{variant_text} among "
                f"{sorted(weights)}: pass `use_safetensors=None` to accept `.bin` weights."
            )
        else:
            ignore = ["*.safetensors", "*.msgpack", "*.onnx", "*.pb"]
        usable, _ = variant_compatible_siblings(weights, variant=variant, ignore_patterns=ignore)
        selected.update(usable)
    return sorted(selected)


def shift_factor_from_latent_shift(
    latent_shift: float | Sequence[float], latent_scale: float | Sequence[float]
) -> float | list[float]:
    """
    diffusers' `shift_factor` equal to an encode-side shift: `z * latent_scale + latent_shift` is
    `(z - shift_factor) * latent_scale` for `shift_factor = -latent_shift / latent_scale` (per channel for lists).

    Example:

    ```py
    >>> from diffusers_repa.pipeline_repa import shift_factor_from_latent_shift

    >>> shift_factor_from_latent_shift(0.25, 0.5)
    -0.5
    ```
    """
    return _per_channel(lambda shift, scale: -shift / scale if shift else 0.0, latent_shift, latent_scale)


def latent_shift_from_shift_factor(
    shift_factor: float | Sequence[float], latent_scale: float | Sequence[float]
) -> float | list[float]:
    """The inverse of [`shift_factor_from_latent_shift`]: `latent_shift = -shift_factor * latent_scale`."""
    return _per_channel(lambda shift, scale: -shift * scale if shift else 0.0, shift_factor, latent_scale)


def _per_channel(
    function: Callable[[float, float], float], first: float | Sequence[float], second: float | Sequence[float]
) -> float | list[float]:
    """`function` of two scalars or per-channel lists (a scalar is broadcast); a list when either is a list."""
    if not isinstance(first, (list, tuple)) and not isinstance(second, (list, tuple)):
        return function(float(first), float(second))
    firsts, seconds = _as_list(first), _as_list(second)
    count = max(len(firsts), len(seconds))
    firsts, seconds = (values * count if len(values) == 1 else values for values in (firsts, seconds))
    if len(firsts) != len(seconds):
        raise ValueError(f"Per-channel values of different lengths: {first} and {second}.")
    return [function(a, b) for a, b in zip(firsts, seconds, strict=True)]


def _check_id2label(id2label: dict, num_classes: int) -> dict[str, str]:
    """`id2label` with `str` ids; a `ValueError` for ids that are not integers in [0, num_classes)."""
    checked = {}
    for key, value in id2label.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = None
        if index is None or not 0 <= index < num_classes:
            raise ValueError(
                f"`id2label` must map class ids 0..{num_classes - 1} to names, got the key {key!r}: a name looked up "
                f"there would sample another class (id {num_classes} is the unconditional class of a model trained "
                "with label dropout); check that the ids start at 0 and that the names belong to this model."
            )
        checked[str(index)] = str(value)
    return checked


def _public_labels(id2label: dict[str, str], label_index: dict[str, list[int]]) -> dict[str, int]:
    """`DiTPipeline.labels`: each class name and synonym as written -> its id, leaving out ambiguous names."""
    labels = {}
    for value in id2label.values():
        for name in value.split(","):
            name = " ".join(name.split())
            ids = label_index.get(name.lower())
            if name and ids is not None and len(ids) == 1:
                labels[name] = ids[0]
    return dict(sorted(labels.items()))


def _as_list(value: float | Sequence[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]


def _build_label_index(id2label: dict[str, str]) -> dict[str, list[int]]:
    """Lower-cased synonym -> ids. A name that is the first synonym of one class wins over other classes' aliases."""
    candidates: dict[str, list[tuple[bool, int]]] = {}
    for key, value in id2label.items():
        for position, name in enumerate(value.split(",")):
            name = " ".join(name.lower().split())
            if name:
                candidates.setdefault(name, []).append((position == 0, int(key)))
    index = {}
    for name, entries in candidates.items():
        primary = [i for is_first, i in entries if is_first]
        index[name] = sorted(set(primary if len(primary) == 1 else (i for _, i in entries)))
    return index
