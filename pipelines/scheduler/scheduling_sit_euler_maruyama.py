# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Euler-Maruyama SDE sampler of SiT flows: the official REPA `euler_maruyama_sampler` as a diffusers scheduler."""

import math
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config

# diffusers' loader looks up `SchedulerMixin` in the module that model_index.json names, i.e. this one.
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401
from diffusers.utils import deprecate
from diffusers.utils.torch_utils import randn_tensor

from .flow_paths import path_coefficients
from .scheduling_sit_common import SiTSchedulerMixin


# Not built on FlowMatchEulerDiscreteScheduler: its `stochastic_sampling` re-noises x_0 to the next sigma, which is
# not this SDE, and it keeps the state in float32.
class SiTEulerMaruyamaScheduler(SiTSchedulerMixin):
    r"""
    Euler-Maruyama integration of the reverse SDE of a SiT flow, exactly as REPA's `euler_maruyama_sampler` (the
    sampler of the paper's FID 1.42 result, with 250 steps).

    Grid: `linspace(1, t_last, N)` followed by `0`. With diffusion `w(t) = 2 t` and the score recovered from the
    velocity (`r = alpha / alpha'`, `var = sigma^2 - r sigma' sigma`, `score = (r v - x) / var`), the drift is
    `f = v - w(t) / 2 * score`. Steps `0 .. N-2` are stochastic,
    `x <- x + f dt + sqrt(w(t)) sqrt(|dt|) * noise` with `noise ~ N(0, I)`; the last step (`t_last -> 0`) is the
    noise-free drift step `x_0 = x + f dt`.

    Noise comes from `step(..., variance_noise=...)` when given (diffusers' name; a pipeline's `noise_sampler`, to
    replay a run), otherwise it is drawn with `generator` in `state_dtype` (the official code draws `randn_like` of
    its float64 state).

    Args:
        path_type (`str`, defaults to `"linear"`): The interpolation path the model was trained on, `"linear"` or
            `"cosine"`; it sets the score (linear: `score = ((t - 1) v - x) / t`).
        state_dtype (`str`, defaults to `"float64"`): Dtype of the integration state and of drawn noise.
        t_last (`float`, defaults to 0.04): Time of the last stochastic grid point, in (0, 1).

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import SiTEulerMaruyamaScheduler

    >>> scheduler = SiTEulerMaruyamaScheduler()
    >>> scheduler.set_timesteps(250)
    >>> round(float(scheduler.time_grid[-2]), 2), float(scheduler.time_grid[-1])
    (0.04, 0.0)
    >>> generator = torch.Generator().manual_seed(0)
    >>> x = torch.randn(1, 4, 8, 8, generator=generator)
    >>> for t in scheduler.timesteps[:3]:
    ...     x = scheduler.step(-x, t, x, generator=generator).prev_sample  # -x stands in for the velocity
    ```
    """

    @register_to_config
    def __init__(self, path_type: str = "linear", state_dtype: str = "float64", t_last: float = 0.04):
        if not 0 < t_last < 1:
            raise ValueError(f"`t_last` must be in (0, 1), got {t_last}.")
        self._init_common(path_type, state_dtype)

    def _default_grid(self, num_inference_steps: int) -> torch.Tensor:
        times = torch.linspace(1.0, self.config.t_last, num_inference_steps, dtype=torch.float64)
        return torch.cat([times, times.new_zeros(1)])

    def _build_schedule(self, grid: torch.Tensor) -> None:
        self.timesteps = grid[:-1]

    @property
    def noise_needed(self) -> bool:
        """Whether the next `step` is stochastic (all but the last)."""
        return self.timesteps is not None and self._next_index < self.num_inference_steps - 1

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """
        One Euler-Maruyama step from `timestep` to the next grid time.

        Args:
            model_output (`torch.Tensor` of shape `(batch, channels, height, width)`): The (guided) velocity at
                `(sample, timestep)`; guiding the velocity equals the official guiding of the drift.
            timestep (`float` or `torch.Tensor`): The current entry of `timesteps`.
            sample (`torch.Tensor`, same shape): The current state `x_t`.
            generator (`torch.Generator` or a list of them, *optional*): Draws the noise when `variance_noise` is not
                given (with `randn_tensor`, like diffusers' stochastic schedulers).
            variance_noise (`torch.Tensor`, same shape as `sample`, *optional*): Standard normal noise for this step,
                instead of drawing it (diffusers' name, as in `DDIMScheduler.step`); ignored on the last
                (noise-free) step. The old name `noise=` still works, with a deprecation warning.
            return_dict (`bool`, defaults to `True`): Return a [`SchedulerOutput`] instead of a tuple.

        Returns:
            [`SchedulerOutput`] whose `prev_sample` is the state at the next time, in `state_dtype`.
        """
        if kwargs:  # the old name `noise=`; anything else is a TypeError, as for any unknown argument
            legacy_noise = deprecate(
                "noise", "1.0.0", "Pass the step's noise as `variance_noise=` (diffusers' name).", take_from=kwargs
            )
            if variance_noise is not None:
                raise ValueError("Pass the step's noise once, as `variance_noise=` (`noise=` is its old name).")
            variance_noise = legacy_noise
        index = self._begin_step(timestep, model_output, sample)
        noisy = index < self.num_inference_steps - 1
        t = self._grid[index]
        dt = self._grid[index + 1] - t
        sample = sample.to(self.state_dtype)
        velocity = model_output.to(self.state_dtype)

        coefficients = path_coefficients(self.config.path_type, torch.tensor(t, dtype=torch.float64))
        alpha, sigma, d_alpha, d_sigma = (float(c) for c in coefficients)
        alpha_ratio = alpha / d_alpha
        variance = sigma**2 - alpha_ratio * d_sigma * sigma
        score = (alpha_ratio * velocity - sample) / variance
        diffusion = 2 * t
        drift = velocity - 0.5 * diffusion * score

        if noisy:
            if variance_noise is None:
                noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
            elif variance_noise.shape != sample.shape:
                raise ValueError(
                    f"`variance_noise` must have the sample's shape {tuple(sample.shape)}, got "
                    f"{tuple(variance_noise.shape)}."
                )
            else:
                noise = variance_noise.to(sample)
            prev_sample = sample + drift * dt + math.sqrt(diffusion) * (noise * math.sqrt(abs(dt)))
        else:
            prev_sample = sample + dt * drift
        self._step_index += 1
        return self._output(prev_sample, return_dict)
