# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Euler ODE sampler of SiT flows: the official REPA `euler_sampler(..., heun=False)` as a diffusers scheduler."""

import torch
from diffusers.configuration_utils import register_to_config

# diffusers' loader looks up `SchedulerMixin` in the module that model_index.json names, i.e. this one.
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401

from .scheduling_sit_common import SiTSchedulerMixin


# Not built on FlowMatchEulerDiscreteScheduler: its step() keeps sigmas in float32 and casts the state to float32
# and then to the model dtype, so it cannot carry the official float64 grid and state.
class SiTEulerScheduler(SiTSchedulerMixin):
    r"""
    Euler integration of the probability-flow ODE `dx/dt = v(x, t)` from `t = 1` (noise) to `t = 0` (data) on the
    official grid `linspace(1, 0, N + 1)`, exactly as REPA's `euler_sampler` with `heun=False`.

    One model call per step, at `timesteps[i] = t_i` (model time in [0, 1]); `step` returns
    `x_{i+1} = x_i + (t_{i+1} - t_i) * v`.

    Args:
        path_type (`str`, defaults to `"linear"`): The interpolation path the model was trained on (`"linear"` or
            `"cosine"`). The velocity ODE is the same for every path, so the update does not use it (nor does the
            official sampler); it is kept so that `from_config` swaps with [`SiTEulerMaruyamaScheduler`] keep it.
        state_dtype (`str`, defaults to `"float64"`): Dtype of the integration state (`"float64"` like the official
            samplers, or `"float32"`, e.g. on MPS). The model may run in any dtype.

    Example:

    ```py
    >>> import torch
    >>> from diffusers_repa import SiTEulerScheduler

    >>> scheduler = SiTEulerScheduler()
    >>> scheduler.set_timesteps(4)
    >>> scheduler.timesteps
    tensor([1.0000, 0.7500, 0.5000, 0.2500], dtype=torch.float64)
    >>> x = torch.randn(1, 4, 8, 8)
    >>> for t in scheduler.timesteps:
    ...     velocity = -x  # stands in for model(x, t, labels).sample
    ...     x = scheduler.step(velocity, t, x).prev_sample
    >>> x.dtype
    torch.float64
    ```
    """

    @register_to_config
    def __init__(self, path_type: str = "linear", state_dtype: str = "float64"):
        self._init_common(path_type, state_dtype)

    def _build_schedule(self, grid: torch.Tensor) -> None:
        self.timesteps = grid[:-1]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """
        One Euler step from `timestep` to the next grid time.

        Args:
            model_output (`torch.Tensor` of shape `(batch, channels, height, width)`): The (guided) velocity at
                `(sample, timestep)`.
            timestep (`float` or `torch.Tensor`): The current entry of `timesteps`.
            sample (`torch.Tensor`, same shape): The current state `x_t`.
            return_dict (`bool`, defaults to `True`): Return a [`SchedulerOutput`] instead of a tuple.

        Returns:
            [`SchedulerOutput`] whose `prev_sample` is the state at the next time, in `state_dtype`.
        """
        index = self._begin_step(timestep, model_output, sample)
        dt = self._grid[index + 1] - self._grid[index]
        prev_sample = sample.to(self.state_dtype) + dt * model_output.to(self.state_dtype)
        self._step_index += 1
        return self._output(prev_sample, return_dict)
