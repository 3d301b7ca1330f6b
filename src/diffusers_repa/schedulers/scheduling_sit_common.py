# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""What the three SiT schedulers share: the time-grid and step-index bookkeeping (the paths are in `flow_paths`).

Conventions (REPA's, `sihyun-yu/REPA` `samplers.py`): flow time `t` in [0, 1], `t = 1` pure noise and `t = 0` data;
`x_t = alpha(t) * x_0 + sigma(t) * noise`; the model predicts the velocity `dx_t/dt`. Unlike diffusers'
`FlowMatch*` schedulers, `timesteps` here *are* model times in [0, 1] (no x1000), so a loop can feed them to
[`SiTTransformer2DModel`] as they are. After `set_timesteps`:

* `time_grid`: the integration grid in flow time, `N + 1` times ending at 0 (what the samplers step on);
* `sigmas`: the noise scale `sigma(t)` of the path at each grid time, as in diffusers (for the linear path
  `sigma(t) = t`, so it equals `time_grid`; for the cosine path it is `sin(pi t / 2)`);
* `timesteps`: the time of each model call (Heun repeats the inner times).

The scheduler modules import only torch, diffusers and `flow_paths`, so that they can ship as Hub code (`pipelines/`).
"""

import math
import numbers
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..flow_paths import check_path_type, path_coefficients

STATE_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class SiTSchedulerMixin(SchedulerMixin, ConfigMixin):
    """
    Base of the SiT schedulers: validated config, the time grid, `step_index`/`begin_index`, and the two questions a
    pipeline asks before each model call (`guidance_time`: which `t` decides classifier-free guidance;
    `noise_needed`: does the next `step` add noise).

    `set_timesteps` sets `time_grid` (the grid in flow time, ending at 0, float64) and `sigmas` (the path's noise
    scale on that grid); a subclass sets `timesteps` (one model time per model call) in `_build_schedule` and
    implements `step`.
    """

    # Swappable with `from_config` (diffusers' `compatibles`); their config keys (e.g. the SDE's `t_last`) are dropped
    # without the "config attributes ... will be ignored" warning when one is built from another's config.
    _compatibles = ["SiTEulerMaruyamaScheduler", "SiTEulerScheduler", "SiTHeunScheduler"]
    order = 1
    # Flow matching starts from unit-variance noise and feeds the model x_t unscaled.
    init_noise_sigma = 1.0

    @classmethod
    def _get_compatibles(cls) -> list[type["SiTSchedulerMixin"]]:
        # diffusers looks the names of `_compatibles` up in the `diffusers` package only; these classes live here.
        names = {cls.__name__, *cls._compatibles}
        found, pending = [], list(SiTSchedulerMixin.__subclasses__())
        while pending:
            subclass = pending.pop()
            pending.extend(subclass.__subclasses__())
            if subclass.__name__ in names and subclass not in found:
                found.append(subclass)
        return sorted(found, key=lambda subclass: subclass.__name__)

    def _init_common(self, path_type: str, state_dtype: str) -> None:
        check_path_type(path_type)
        if state_dtype not in STATE_DTYPES:
            raise ValueError(f"`state_dtype` must be one of {tuple(STATE_DTYPES)}, got {state_dtype!r}.")
        self.timesteps: torch.Tensor | None = None
        self.time_grid: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @property
    def state_dtype(self) -> torch.dtype:
        """The dtype `step` integrates in and returns (float64 by default, like the official samplers)."""
        return STATE_DTYPES[self.config.state_dtype]

    @property
    def step_index(self) -> int | None:
        """Index into `timesteps` of the next model call; `None` before the first `step`."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """First index into `timesteps`, set by the pipeline with `set_begin_index`."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at `timesteps[begin_index]` (call before the first `step`)."""
        self._begin_index = begin_index

    @property
    def _next_index(self) -> int:
        if self._step_index is not None:
            return self._step_index
        return self._begin_index or 0

    @property
    def guidance_time(self) -> float:
        """The `t` whose interval test decides classifier-free guidance for the next model call."""
        return self._grid[self._next_index]

    @property
    def noise_needed(self) -> bool:
        """Whether the next `step` adds noise (only stochastic schedulers do)."""
        return False

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching models take `x_t` unscaled: returns `sample` (kept for DDPM-style pipeline loops)."""
        return sample

    def _default_grid(self, num_inference_steps: int) -> torch.Tensor:
        # The official ODE grid (`euler_sampler`): N uniform steps ending exactly at t = 0.
        return torch.linspace(1, 0, num_inference_steps + 1, dtype=torch.float64)

    def _build_schedule(self, grid: torch.Tensor) -> None:
        raise NotImplementedError

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        sigmas: Sequence[float] | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """
        Set the time grid (`time_grid`, `sigmas` and `timesteps`, in `state_dtype`, on `device`).

        Args:
            num_inference_steps (`int`, *optional*): Number of integration steps (>= 1); the official grid is used.
            device (`str` or `torch.device`, *optional*): Where `timesteps`, `time_grid` and `sigmas` live.
            sigmas (`Sequence[float]`, *optional*): A custom grid given as noise scales `sigma(t)`, strictly
                decreasing in (0, 1], one per step, without the final 0 (appended here), as diffusers'
                `retrieve_timesteps` passes it. For the linear path these are the times themselves; for the cosine
                path each is mapped to `t = 2 / pi * asin(sigma)`.
            timesteps (`Sequence[float]`, *optional*): A custom grid given as flow times `t` (model times, not
                x1000), strictly decreasing in (0, 1], one per step, without the final 0. Pass `sigmas` or
                `timesteps`, not both.
        """
        if num_inference_steps is not None and (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, numbers.Integral)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r} "
                f"({type(num_inference_steps).__name__}); pass e.g. `set_timesteps(50)`."
            )
        if sigmas is not None and timesteps is not None:
            raise ValueError("Pass either `sigmas` (noise scales) or `timesteps` (flow times) to `set_timesteps`.")
        custom, name = (sigmas, "sigmas") if sigmas is not None else (timesteps, "timesteps")
        if custom is None:
            if num_inference_steps is None:
                raise ValueError(
                    "Pass `num_inference_steps` (an integer >= 1), `sigmas` or `timesteps` to `set_timesteps`."
                )
            grid = self._default_grid(int(num_inference_steps))
        else:
            values = torch.as_tensor(custom, dtype=torch.float64).flatten()
            if num_inference_steps is not None and len(values) != num_inference_steps:
                raise ValueError(f"Got {len(values)} `{name}` for {num_inference_steps} steps.")
            if (
                len(values) < 1
                or not torch.isfinite(values).all()  # NaN passes every comparison below
                or values.max() > 1
                or values.min() <= 0
                or (values.diff() >= 0).any()
            ):
                raise ValueError(f"`{name}` must be a non-empty, strictly decreasing sequence in (0, 1], got {values}.")
            times = _time_from_sigma(self.config.path_type, values) if name == "sigmas" else values
            grid = torch.cat([times, times.new_zeros(1)])
        self.num_inference_steps = len(grid) - 1
        self.time_grid = grid.to(device=device, dtype=self.state_dtype)
        self.sigmas = path_coefficients(self.config.path_type, self.time_grid)[1].clone()
        self._grid = grid.tolist()  # host copy: step arithmetic in Python floats (float64), no device syncs
        self._build_schedule(self.time_grid)
        self._step_index = None
        self._begin_index = None

    def index_for_timestep(self, timestep: float | torch.Tensor) -> int:
        """Index of `timestep` in `timesteps`; for a time listed twice (Heun), the second entry, as diffusers does."""
        indices = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps)).nonzero()
        if len(indices) == 0:
            raise ValueError(f"Timestep {float(timestep)} is not in the schedule {self.timesteps.tolist()}.")
        return int(indices[1 if len(indices) > 1 else 0])

    @staticmethod
    def _output(prev_sample: torch.Tensor, return_dict: bool) -> SchedulerOutput | tuple[torch.Tensor]:
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)

    def _begin_step(self, timestep: float | torch.Tensor, model_output: torch.Tensor, sample: torch.Tensor) -> int:
        """The index of this call (initialised from `timestep` or `begin_index` on the first call)."""
        if model_output.shape != sample.shape:  # broadcasting would silently give a wrong-sized or mixed batch
            raise ValueError(
                f"`model_output` {tuple(model_output.shape)} and `sample` {tuple(sample.shape)} must have the same "
                "shape (with classifier-free guidance, combine the cond/uncond halves before `step`)."
            )
        if self.timesteps is None:
            raise ValueError("Call `set_timesteps` before `step`.")
        if self._step_index is None:
            self._step_index = self._begin_index if self._begin_index is not None else self.index_for_timestep(timestep)
        if self._step_index >= len(self.timesteps):
            raise ValueError(f"All {len(self.timesteps)} steps were taken; call `set_timesteps` again.")
        return self._step_index


def _time_from_sigma(path_type: str, sigmas: torch.Tensor) -> torch.Tensor:
    """The flow times at which the path's noise scale `sigma(t)` takes the given values (linear: `t = sigma`)."""
    if path_type == "linear":
        return sigmas
    return (torch.asin(sigmas) * (2 / math.pi)).clamp(0, 1)
