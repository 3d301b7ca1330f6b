# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Heun ODE sampler of SiT flows: the official REPA `euler_sampler(..., heun=True)` as a diffusers scheduler."""

import torch
from diffusers.configuration_utils import register_to_config

# diffusers' loader looks up `SchedulerMixin` in the module that model_index.json names, i.e. this one.
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput  # noqa: F401

from .scheduling_sit_common import SiTSchedulerMixin


# Not built on FlowMatchHeunDiscreteScheduler: it has no float64 state, takes no custom grid, and recovers the
# derivative as (x - (x - sigma v)) / sigma, which loses precision at small t.
class SiTHeunScheduler(SiTSchedulerMixin):
    r"""
    Heun (2nd-order) integration of the probability-flow ODE on the grid `linspace(1, 0, N + 1)`, exactly as REPA's
    `euler_sampler` with `heun=True`: every step but the last is an Euler predictor at `t_i` followed by a corrector
    at `t_{i+1}`, `x_{i+1} = x_i + (t_{i+1} - t_i) * (v_i / 2 + v'_{i+1} / 2)`; the last step (to `t = 0`) is plain
    Euler. That is `2N - 1` model calls: `timesteps = [t_0, t_1, t_1, t_2, t_2, ..., t_{N-1}, t_{N-1}]`, and `step`
    is called once per model call (diffusers' `order = 2` convention).

    The corrector uses the classifier-free-guidance decision of the step's start `t_i` (official behaviour), which
    [`~SiTSchedulerMixin.guidance_time`] returns; `state_in_first_order` tells which half comes next.

    Args:
        path_type (`str`, defaults to `"linear"`): The path the model was trained on; the velocity ODE does not use
            it (see [`SiTEulerScheduler`]).
        state_dtype (`str`, defaults to `"float64"`): Dtype of the integration state (`"float64"` or `"float32"`).

    Example:

    ```py
    >>> from diffusers_repa import SiTHeunScheduler

    >>> scheduler = SiTHeunScheduler()
    >>> scheduler.set_timesteps(3)
    >>> scheduler.timesteps.tolist()
    [1.0, 0.6666666666666667, 0.6666666666666667, 0.33333333333333337, 0.33333333333333337]
    ```
    """

    order = 2

    @register_to_config
    def __init__(self, path_type: str = "linear", state_dtype: str = "float64"):
        self._init_common(path_type, state_dtype)
        self._predictor_state: tuple[torch.Tensor, torch.Tensor] | None = None

    def _build_schedule(self, grid: torch.Tensor) -> None:
        times = grid[:-1]
        self.timesteps = torch.cat([times[:1], times[1:].repeat_interleave(2)])
        self._predictor_state = None

    @property
    def state_in_first_order(self) -> bool:
        """`True` when the next model call is a predictor (Euler) call, `False` for a corrector call."""
        return self._next_index % 2 == 0

    @property
    def guidance_time(self) -> float:
        """The start `t_i` of the current step, for the predictor and the corrector alike."""
        return self._grid[self._next_index // 2]

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> SchedulerOutput | tuple[torch.Tensor]:
        """
        Advance by one model call: a predictor returns the Euler estimate at `t_{i+1}` (where the corrector is then
        evaluated), a corrector returns the Heun update `x_{i+1}`.

        Args:
            model_output (`torch.Tensor` of shape `(batch, channels, height, width)`): The (guided) velocity at
                `(sample, timestep)`.
            timestep (`float` or `torch.Tensor`): The current entry of `timesteps`.
            sample (`torch.Tensor`, same shape): The state the model was evaluated at.
            return_dict (`bool`, defaults to `True`): Return a [`SchedulerOutput`] instead of a tuple.

        Returns:
            [`SchedulerOutput`] whose `prev_sample` (in `state_dtype`) is the input of the next model call, or the
            final sample after the last call.
        """
        index = self._begin_step(timestep, model_output, sample)
        step = index // 2
        dt = self._grid[step + 1] - self._grid[step]
        velocity = model_output.to(self.state_dtype)
        if index % 2 == 0:  # predictor
            sample = sample.to(self.state_dtype)
            prev_sample = sample + dt * velocity
            is_last = step == self.num_inference_steps - 1
            self._predictor_state = None if is_last else (sample, velocity)
        else:  # corrector, evaluated at the predictor's output
            if self._predictor_state is None:
                raise ValueError("A Heun corrector step needs the predictor step before it; call `set_timesteps`.")
            start, start_velocity = self._predictor_state
            prev_sample = start + dt * (0.5 * start_velocity + 0.5 * velocity)
            self._predictor_state = None
        self._step_index += 1
        return self._output(prev_sample, return_dict)
