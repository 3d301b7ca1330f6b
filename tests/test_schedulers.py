"""SiT schedulers: official grids, Heun/SDE bookkeeping, dtypes, config round trips and errors.

Parity of full sampling runs with the official samplers is in `test_pipeline_repa.py`; here each scheduler is
driven by hand, as a diffusers sampling loop would.
"""

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from diffusers_repa.schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler

ALL_SCHEDULERS = [SiTEulerScheduler, SiTHeunScheduler, SiTEulerMaruyamaScheduler]


def run_loop(scheduler, velocity_fn, x, **step_kwargs):
    for t in scheduler.timesteps:
        x = scheduler.step(velocity_fn(x, float(t)), t, x, **step_kwargs).prev_sample
    return x


def test_ode_grid_is_official_linspace():
    for cls in (SiTEulerScheduler, SiTHeunScheduler):
        scheduler = cls()
        scheduler.set_timesteps(8)
        assert torch.equal(scheduler.time_grid, torch.linspace(1, 0, 9, dtype=torch.float64))
        assert torch.equal(scheduler.sigmas, scheduler.time_grid)  # linear path: sigma(t) = t
    scheduler = SiTEulerScheduler()
    scheduler.set_timesteps(8)
    assert torch.equal(scheduler.timesteps, torch.linspace(1, 0, 9, dtype=torch.float64)[:-1])


def test_sde_grid_ends_at_t_last_then_zero():
    scheduler = SiTEulerMaruyamaScheduler()
    scheduler.set_timesteps(8)
    expected = torch.cat([torch.linspace(1.0, 0.04, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    assert torch.equal(scheduler.time_grid, expected)
    assert len(scheduler.timesteps) == 8
    scheduler.set_timesteps(1)  # a single noise-free drift step from 1 to 0
    assert scheduler.time_grid.tolist() == [1.0, 0.0]
    assert not scheduler.noise_needed


def test_heun_calls_and_guidance_times():
    scheduler = SiTHeunScheduler()
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25]
    calls, x = [], torch.zeros(1, 1, 2, 2)
    for t in scheduler.timesteps:
        calls.append((float(t), scheduler.guidance_time, scheduler.state_in_first_order))
        x = scheduler.step(torch.ones_like(x), t, x).prev_sample
    # The corrector at t_{i+1} takes the guidance decision of t_i; the last step has no corrector.
    assert calls == [
        (1.0, 1.0, True),
        (0.75, 1.0, False),
        (0.75, 0.75, True),
        (0.5, 0.75, False),
        (0.5, 0.5, True),
        (0.25, 0.5, False),
        (0.25, 0.25, True),
    ]
    assert torch.allclose(x, torch.full_like(x, -1.0, dtype=torch.float64))  # constant velocity: x_0 = x_1 - v


def test_heun_is_exact_for_linear_velocity_fields():
    # dx/dt = a t: Heun (trapezoid) is exact on every corrected step; the final Euler step from t_{N-1} to 0 is not.
    scheduler = SiTHeunScheduler()
    scheduler.set_timesteps(5)
    x = run_loop(scheduler, lambda x, t: torch.full_like(x, 2.0 * t), torch.zeros(3, dtype=torch.float64))
    t_last = 0.2
    # exact x(t_last) = t_last^2 - 1, then one Euler step of slope 2 t_last down to 0
    expected = (t_last**2 - 1.0) - t_last * 2.0 * t_last
    assert torch.allclose(x, torch.full_like(x, expected))


def test_sde_linear_drift_closed_form():
    # Linear path: score = ((t - 1) v - x) / t, drift = v - t * score = x + (2 - t) v; the last step is drift only.
    scheduler = SiTEulerMaruyamaScheduler()
    scheduler.set_timesteps(3)
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(2, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t, t_next = scheduler.time_grid[:2].tolist()
    out = scheduler.step(v, t, x, variance_noise=noise).prev_sample
    expected = x + (x + (2 - t) * v) * (t_next - t) + (2 * t) ** 0.5 * (t - t_next) ** 0.5 * noise
    assert torch.allclose(out, expected, atol=1e-12)
    scheduler.step(v, scheduler.timesteps[1], out, variance_noise=noise)
    assert not scheduler.noise_needed
    t_last = float(scheduler.timesteps[2])
    final = scheduler.step(v, scheduler.timesteps[2], x).prev_sample
    assert torch.allclose(final, x - t_last * (x + (2 - t_last) * v), atol=1e-12)


def test_sde_noise_needed_and_generator_determinism():
    scheduler = SiTEulerMaruyamaScheduler(path_type="cosine")
    scheduler.set_timesteps(5)
    pattern = []
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x = x0
    for t in scheduler.timesteps:
        pattern.append(scheduler.noise_needed)
        x = scheduler.step(-x, t, x, generator=torch.Generator().manual_seed(int(t * 1e6))).prev_sample
    assert pattern == [True, True, True, True, False]
    scheduler.set_timesteps(5)
    again = run_loop(scheduler, lambda x, t: -x, x0, generator=torch.Generator().manual_seed(0))
    scheduler.set_timesteps(5)
    same = run_loop(scheduler, lambda x, t: -x, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, same)


@pytest.mark.parametrize("cls", ALL_SCHEDULERS)
def test_state_dtype(cls):
    scheduler = cls()
    scheduler.set_timesteps(3)
    x = torch.randn(1, 4, 2, 2).to(torch.bfloat16)
    step_kwargs = {"generator": torch.Generator().manual_seed(0)} if cls is SiTEulerMaruyamaScheduler else {}
    out = scheduler.step(torch.ones_like(x), scheduler.timesteps[0], x, **step_kwargs).prev_sample
    assert out.dtype == torch.float64  # never quantised to the model's dtype
    scheduler = cls(state_dtype="float32")
    scheduler.set_timesteps(3)
    assert scheduler.sigmas.dtype == scheduler.time_grid.dtype == torch.float32
    out = scheduler.step(torch.ones_like(x), scheduler.timesteps[0], x, **step_kwargs).prev_sample
    assert out.dtype == torch.float32


@pytest.mark.parametrize("cls", ALL_SCHEDULERS)
def test_diffusers_scheduler_api(cls, tmp_path):
    scheduler = cls(path_type="cosine")
    assert scheduler.init_noise_sigma == 1.0
    x = torch.randn(1, 4, 2, 2)
    assert scheduler.scale_model_input(x, 0.5) is x
    scheduler.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert dict(loaded.config) == {k: v for k, v in scheduler.config.items() if k != "_use_default_values"}
    # swappable with from_config, keeping the path
    for other in ALL_SCHEDULERS:
        assert other.from_config(scheduler.config).config.path_type == "cosine"
    out_tuple = cls.from_config(scheduler.config)
    out_tuple.set_timesteps(2)
    scheduler.set_timesteps(2)
    kwargs = {"variance_noise": torch.zeros_like(x)} if cls is SiTEulerMaruyamaScheduler else {}
    dict_out = scheduler.step(-x, scheduler.timesteps[0], x, **kwargs).prev_sample
    (tuple_out,) = out_tuple.step(-x, out_tuple.timesteps[0], x, return_dict=False, **kwargs)
    assert torch.equal(dict_out, tuple_out)


@pytest.mark.parametrize("cls", ALL_SCHEDULERS)
def test_begin_index_and_custom_sigmas(cls):
    full = cls()
    full.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    assert full.time_grid.tolist() == full.sigmas.tolist() == [1.0, 0.5, 0.25, 0.0]
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    kwargs = {"variance_noise": torch.zeros_like(x)} if cls is SiTEulerMaruyamaScheduler else {}
    # Starting at the second model call by timestep (or by begin_index) gives the same step.
    by_time = cls()
    by_time.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    by_index = cls()
    by_index.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    by_index.set_begin_index(2 if cls is SiTHeunScheduler else 1)
    assert torch.equal(by_time.step(-x, 0.5, x, **kwargs).prev_sample, by_index.step(-x, 0.5, x, **kwargs).prev_sample)


@pytest.mark.parametrize("cls", ALL_SCHEDULERS)
def test_errors(cls):
    with pytest.raises(ValueError, match="path_type"):
        cls(path_type="edm")
    with pytest.raises(ValueError, match="state_dtype"):
        cls(state_dtype="float16")
    scheduler = cls()
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="set_timesteps"):
        scheduler.step(x, 1.0, x)
    for steps in (0, -3, None, 2.7, "3", True):  # never truncated or parsed: 2.7 is not 2 steps
        with pytest.raises(ValueError, match="num_inference_steps"):
            scheduler.set_timesteps(steps)
    scheduler.set_timesteps(np.int64(3))  # NumPy integers are integers
    assert scheduler.num_inference_steps == 3
    for grid in ([0.5, 0.8], [1.5, 0.5], [1.0, 0.0], [], [1.0, float("nan")], [float("nan")]):  # NaN was accepted
        for name in ("sigmas", "timesteps"):
            with pytest.raises(ValueError, match=name):
                scheduler.set_timesteps(**{name: grid})
    with pytest.raises(ValueError, match="either"):
        scheduler.set_timesteps(sigmas=[1.0, 0.5], timesteps=[1.0, 0.5])
    scheduler.set_timesteps(1)
    with pytest.raises(ValueError, match="not in the schedule"):
        scheduler.step(x, 0.3, x)
    # A guided (doubled) output, or one sample for a batch, was broadcast into a wrong-sized or mixed result.
    for output, sample in ((torch.cat([x, x]), x), (x, torch.cat([x, x]))):
        with pytest.raises(ValueError, match="must have the same shape"):
            scheduler.step(output, 1.0, sample)
    assert scheduler.step_index is None  # nothing was taken
    scheduler.step(x, 1.0, x)
    with pytest.raises(ValueError, match="steps were taken"):
        scheduler.step(x, 1.0, x)


def test_sde_errors():
    with pytest.raises(ValueError, match="t_last"):
        SiTEulerMaruyamaScheduler(t_last=0.0)
    scheduler = SiTEulerMaruyamaScheduler()
    scheduler.set_timesteps(4)
    x = torch.randn(2, 4, 2, 2)
    with pytest.raises(ValueError, match="variance_noise"):
        scheduler.step(x, 1.0, x, variance_noise=torch.randn(1, 4, 2, 2))
    with pytest.raises(TypeError, match="unexpected keyword argument `noies`"):
        scheduler.step(x, 1.0, x, noies=torch.randn(2, 4, 2, 2))


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_time_grid_is_flow_time_and_sigmas_are_noise_scales(path_type):
    """`time_grid` holds the times t the samplers step on; `sigmas` the path's noise scale sigma(t) at those times."""
    scheduler = SiTEulerMaruyamaScheduler(path_type=path_type)
    scheduler.set_timesteps(6)
    times = torch.cat([torch.linspace(1.0, 0.04, 6, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    assert torch.equal(scheduler.time_grid, times)
    assert torch.equal(scheduler.timesteps, times[:-1])
    expected = times if path_type == "linear" else torch.sin(times * torch.pi / 2)
    torch.testing.assert_close(scheduler.sigmas, expected, atol=1e-15, rtol=0)
    if path_type == "cosine":
        assert (scheduler.sigmas[1:-1] > scheduler.time_grid[1:-1]).all()  # not the times any more

    # A custom grid as noise scales (diffusers' `sigmas=`) or as flow times (`timesteps=`) gives the same schedule.
    by_sigma, by_time = SiTEulerScheduler(path_type=path_type), SiTEulerScheduler(path_type=path_type)
    by_sigma.set_timesteps(sigmas=scheduler.sigmas[:-1].tolist())
    by_time.set_timesteps(timesteps=times[:-1].tolist())
    torch.testing.assert_close(by_sigma.time_grid, by_time.time_grid, atol=1e-12, rtol=0)
    torch.testing.assert_close(by_sigma.sigmas, scheduler.sigmas, atol=1e-12, rtol=0)
    if path_type == "linear":  # the noise scales are the times: exactly the same grid
        assert torch.equal(by_sigma.time_grid, by_time.time_grid)


def test_sde_old_noise_argument_still_works_with_a_deprecation():
    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    new, old = SiTEulerMaruyamaScheduler(), SiTEulerMaruyamaScheduler()
    new.set_timesteps(4)
    old.set_timesteps(4)
    expected = new.step(-x, 1.0, x, variance_noise=noise).prev_sample
    with pytest.warns(FutureWarning, match="variance_noise"):
        got = old.step(-x, 1.0, x, noise=noise).prev_sample
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match="once"), pytest.warns(FutureWarning):
        old.step(-x, old.timesteps[1], x, noise=noise, variance_noise=noise)


def test_sde_generator_draws_the_same_noise_as_randn_tensor():
    """Without `variance_noise`, the step draws its noise with the generator (`randn_tensor` of the state's shape and
    dtype): the same as passing that draw explicitly."""
    from diffusers.utils.torch_utils import randn_tensor

    x = torch.randn(2, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    drawn, given = SiTEulerMaruyamaScheduler(), SiTEulerMaruyamaScheduler()
    drawn.set_timesteps(3)
    given.set_timesteps(3)
    generators = [torch.Generator().manual_seed(s) for s in (7, 8)]
    out = drawn.step(-x, 1.0, x, generator=generators).prev_sample
    noise = randn_tensor(x.shape, generator=[torch.Generator().manual_seed(s) for s in (7, 8)], dtype=x.dtype)
    assert torch.equal(out, given.step(-x, 1.0, x, variance_noise=noise).prev_sample)


def test_sit_schedulers_are_compatibles_and_swap_without_losing_or_warning_about_settings(caplog):
    """diffusers' `compatibles` listed nothing (it looks names up in `diffusers` only), so `from_config` between SiT
    schedulers warned that the SDE's `t_last` "will be ignored" (the sample CLI printed it at every heun/euler run);
    a swap SDE -> Heun -> SDE keeps it."""
    assert SiTHeunScheduler().compatibles == [SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler]
    sde = SiTEulerMaruyamaScheduler(path_type="cosine", t_last=0.05)
    diffusers_logging.enable_propagation()  # diffusers' loggers do not reach pytest's `caplog` otherwise
    try:
        with caplog.at_level("WARNING"):
            heun = SiTHeunScheduler.from_config(sde.config)
            back = SiTEulerMaruyamaScheduler.from_config(heun.config)
    finally:
        diffusers_logging.disable_propagation()
    assert "will be ignored" not in caplog.text
    assert heun.config.path_type == "cosine"
    assert (back.config.path_type, back.config.t_last) == ("cosine", 0.05)
