"""REPAPipeline's fast/exact switch: fast mode computes the same function as exact mode within the stated tolerances."""

import json

import numpy as np
import pytest
import torch

from diffusers_repa.pipeline_repa import REPAPipeline
from diffusers_repa.sample import main
from diffusers_repa.schedulers import SiTEulerMaruyamaScheduler, SiTHeunScheduler

from .test_pipeline_repa import CallRecorder


def latent_pipeline(transformer, scheduler) -> REPAPipeline:
    pipeline = REPAPipeline(transformer, scheduler, latent_scale=1.0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def replayed_noise(steps: int, shape: tuple[int, ...], seed: int = 3) -> torch.Tensor:
    return torch.randn(steps, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def run(pipeline, labels, latents, steps, noises=None, **kwargs) -> torch.Tensor:
    noise_sampler = (lambda i, sample: noises[i]) if noises is not None else None
    call = dict(num_inference_steps=steps, guidance_scale=1.8, guidance_interval=(0.0, 0.7), output_type="latent")
    call.update(kwargs)
    return pipeline(labels, latents=latents, noise_sampler=noise_sampler, **call).images


CASES = {  # name -> (scheduler class, steps, replayed noise)
    "sde_8_fixture_noise": (SiTEulerMaruyamaScheduler, 8, "fixture"),
    "sde_40_replayed_noise": (SiTEulerMaruyamaScheduler, 40, "replayed"),
    "heun_20": (SiTHeunScheduler, 20, None),
}


def case_inputs(name, fixtures):
    scheduler_cls, steps, noise = CASES[name]
    labels, latents = fixtures["labels"].tolist(), fixtures["latents"]
    if noise == "fixture":
        noises = fixtures["sde_cfg.noises"]
    elif noise == "replayed":
        noises = replayed_noise(steps, tuple(latents.shape))
    else:
        noises = None
    return scheduler_cls, steps, labels, latents, noises


@pytest.mark.parametrize("name", list(CASES))
def test_fast_float32_equals_exact(name, repa_tiny_sit, repa_sampler_fixtures):
    scheduler_cls, steps, labels, latents, noises = case_inputs(name, repa_sampler_fixtures)
    pipeline = latent_pipeline(repa_tiny_sit, scheduler_cls())
    exact = run(pipeline, labels, latents, steps, noises)
    fast = run(pipeline, labels, latents, steps, noises, fast=True)  # CPU default: float32 model, float32 state
    assert exact.dtype == torch.float64 and fast.dtype == torch.float32
    assert relative_l2(fast, exact) < 1e-5
    assert pipeline.scheduler.state_dtype == torch.float64  # the pipeline's scheduler is not changed


def test_fast_mode_on_the_official_fixture_stays_close_to_the_official_sampler(repa_tiny_sit, repa_sampler_fixtures):
    fixtures = repa_sampler_fixtures
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler())
    fast = run(pipeline, fixtures["labels"].tolist(), fixtures["latents"], 8, fixtures["sde_cfg.noises"], fast=True)
    torch.testing.assert_close(fast.double(), fixtures["sde_cfg.sample"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_fast_bfloat16_within_one_percent_of_exact(name, repa_tiny_sit, repa_sampler_fixtures):
    scheduler_cls, steps, labels, latents, noises = case_inputs(name, repa_sampler_fixtures)
    pipeline = latent_pipeline(repa_tiny_sit, scheduler_cls())
    exact = run(pipeline, labels, latents, steps, noises)
    dtypes = []
    handle = repa_tiny_sit.proj_out_2.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    try:
        fast = run(pipeline, labels, latents, steps, noises, fast=True, fast_dtype=torch.bfloat16)
    finally:
        handle.remove()
    assert set(dtypes) == {torch.bfloat16}  # the model ran under bf16 autocast
    deviation = relative_l2(fast, exact)
    assert 1e-6 < deviation < 1e-2, deviation  # bf16 rounding is visible, and bounded
    assert repa_tiny_sit.dtype == torch.float32  # autocast, not a cast of the weights


def test_fast_mode_draws_the_same_noise_as_exact_mode(repa_tiny_sit):
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler())
    call = dict(num_inference_steps=12, output_type="latent")
    exact = pipeline([1, 2, 3], generator=torch.manual_seed(5), **call).images
    fast = pipeline([1, 2, 3], generator=torch.manual_seed(5), fast=True, **call).images
    assert relative_l2(fast, exact) < 1e-5
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    exact = pipeline([1, 2, 3], generator=generators, **call).images
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    fast = pipeline([1, 2, 3], generator=generators, fast=True, **call).images
    assert relative_l2(fast, exact) < 1e-5


def test_fast_mode_batches_guidance_like_exact_mode(repa_tiny_sit):
    pipeline = latent_pipeline(repa_tiny_sit, SiTHeunScheduler())
    batches = {}
    for fast in (False, True):
        recorder = CallRecorder(repa_tiny_sit)
        try:
            pipeline([1, 2], num_inference_steps=10, generator=torch.manual_seed(0), output_type="latent", fast=fast)
        finally:
            recorder.remove()
        batches[fast] = recorder.calls
    assert batches[True] == batches[False]
    # Guidance (batch 4) only for steps starting at t <= 0.7; the corrector follows its step's decision.
    assert [batch for batch, _ in batches[True]][:6] == [2] * 6 and batches[True][-1][0] == 4


def test_the_model_gets_its_own_time_tensor_so_a_compiled_model_does_not_recompile_every_step(repa_tiny_sit):
    """The time given to the model is a fresh tensor, not a view into the scheduler's `timesteps`: a view's offset
    changes every step, and `torch.compile` recompiled on it until its limit (found by `bench_sampling.py`)."""
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler())
    offsets = []
    handle = repa_tiny_sit.register_forward_pre_hook(lambda module, args: offsets.append(args[1].storage_offset()))
    try:
        for fast in (False, True):
            pipeline([1, 2], num_inference_steps=4, generator=torch.manual_seed(0), output_type="latent", fast=fast)
    finally:
        handle.remove()
    assert offsets == [0] * 8


@pytest.mark.parametrize("fast", [False, True])
def test_a_model_that_reuses_its_output_buffer_gives_the_same_samples(fast, repa_tiny_sit):
    """A model replayed as a CUDA graph (`compile(mode="reduce-overhead")`) returns the same output buffer on every
    call; Heun keeps its predictor's velocity past the next call, so the pipeline must not hold the buffer itself."""
    pipeline = latent_pipeline(repa_tiny_sit, SiTHeunScheduler())
    call = dict(num_inference_steps=4, guidance_scale=1.0, output_type="latent", fast=fast)
    expected = pipeline([1, 2], generator=torch.manual_seed(0), **call).images
    buffers = {}

    def reuse_buffer(module, args, output):
        buffer = buffers.setdefault(output[0].shape, torch.empty_like(output[0]))
        return (buffer.copy_(output[0]),)

    handle = repa_tiny_sit.register_forward_hook(reuse_buffer)
    try:
        got = pipeline([1, 2], generator=torch.manual_seed(0), **call).images
    finally:
        handle.remove()
    assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fast_dtype": torch.bfloat16}, "pass `fast=True`"),
        ({"fast": True, "fast_dtype": torch.int8}, "`fast_dtype` must be one of"),
        ({"fast": True, "fast_dtype": "bf16"}, "`fast_dtype` must be one of"),
        ({"fast": "yes"}, "`fast` must be True or False"),
    ],
)
def test_bad_fast_options_raise_before_any_model_call(kwargs, message, repa_tiny_sit):
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler())
    recorder = CallRecorder(repa_tiny_sit)
    try:
        with pytest.raises(ValueError, match=message):
            pipeline([1], num_inference_steps=2, output_type="latent", **kwargs)
    finally:
        recorder.remove()
    assert recorder.calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_mode_has_no_host_sync_in_the_loop_and_matches_exact(repa_tiny_sit):
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler()).to("cuda")
    call = dict(num_inference_steps=20, output_type="latent")

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(2)]

    def error_on_sync_after_the_first_step(pipe, step, timestep, tensors):
        torch.cuda.set_sync_debug_mode("error")  # set-up (labels, grid, first noise) may copy; the loop may not
        return tensors

    exact = pipeline([1, 2], generator=generators(), **call).images
    pipeline([1, 2], generator=generators(), fast=True, **call)  # warm-up: pinned-memory pool, kernels
    try:
        fast = pipeline(
            [1, 2], generator=generators(), fast=True, callback_on_step_end=error_on_sync_after_the_first_step, **call
        ).images
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert relative_l2(fast, exact) < 1e-2
    pipeline.to("cpu")


def test_sample_cli_fast_flag(repa_tiny_pipeline_dir, tmp_path):
    def npz(output, *extra):
        argv = ["npz", "--model", str(repa_tiny_pipeline_dir), "--output", str(output), "--scheduler", "sde"]
        return main([*argv, "--steps", "6", "--num_images", "3", "--batch_size", "2", *extra])

    assert npz(tmp_path / "exact.npz") == 0
    assert npz(tmp_path / "fast.npz", "--fast") == 0
    exact, fast = np.load(tmp_path / "exact.npz")["arr_0"], np.load(tmp_path / "fast.npz")["arr_0"]
    assert exact.shape == fast.shape == (3, 16, 16, 3)
    assert np.abs(exact.astype(int) - fast.astype(int)).max() <= 1  # float32 vs float64 state: at most one level
    assert json.loads((tmp_path / "fast.npz.parts" / "settings.json").read_text())["fast"] is True
    # An exact run records no "fast" key (runs started before the flag existed resume), and refuses --fast.
    assert "fast" not in json.loads((tmp_path / "exact.npz.parts" / "settings.json").read_text())
    assert npz(tmp_path / "exact.npz", "--fast") == 2
    grid = tmp_path / "grid.png"
    argv = ["grid", "--model", str(repa_tiny_pipeline_dir), "--classes", "3", "--steps", "2", "--output", str(grid)]
    assert main([*argv, "--fast"]) == 0 and grid.is_file()
