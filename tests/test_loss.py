# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPALoss against the official `SILoss` numbers (tests/fixtures/official-repa/siloss.safetensors)."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from diffusers_repa.alignment import REPALoss, projection_loss
from diffusers_repa.convert import convert_official_state_dict
from diffusers_repa.flow_paths import path_coefficients, time_from_noise_ratio

FIXTURES = Path(__file__).parent / "fixtures" / "official-repa"
EXTRA_PREFIX = "two_projectors.extra_weights."
# run tag -> (path_type, weighting, number of projectors, seed of the global generator before the official call)
RUNS = {
    "linear_uniform": ("linear", "uniform", 1, 1500),
    "cosine_lognormal": ("cosine", "lognormal", 1, 1501),
    "two_projectors_linear_uniform": ("linear", "uniform", 2, 1502),
}


@pytest.fixture(scope="module")
def siloss():
    return load_file(FIXTURES / "siloss.safetensors")


@pytest.fixture(scope="module")
def models(siloss):
    """run tag -> (transformer, projector) in eval mode, as in the fixture."""
    state_dict = load_file(FIXTURES / "tiny_sit_state_dict.safetensors")
    one = convert_official_state_dict(state_dict, num_attention_heads=6, alignment_depth=3)
    extra = {key[len(EXTRA_PREFIX) :]: value for key, value in siloss.items() if key.startswith(EXTRA_PREFIX)}
    two = convert_official_state_dict({**state_dict, **extra}, num_attention_heads=6, alignment_depth=3)
    return {"one": one, "two": two}


def _inputs(tag, siloss, models):
    num_projectors = RUNS[tag][2]
    transformer, projector = models["one" if num_projectors == 1 else "two"]
    targets = [siloss[f"target_zs_{index}"] for index in range(num_projectors)]
    return transformer, projector, siloss["images"], siloss["y"], targets


def _assert_matches_official(output, tag, siloss):
    expected = siloss[f"{tag}.denoising_loss"].mean()
    torch.testing.assert_close(output.denoising_loss, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(output.projection_loss, siloss[f"{tag}.proj_loss"], atol=1e-6, rtol=0)
    torch.testing.assert_close(output.loss, siloss[f"{tag}.total_loss_proj_coeff_0.5"], atol=1e-6, rtol=0)
    torch.testing.assert_close(output.timesteps, siloss[f"{tag}.time_input"].flatten(), atol=0, rtol=0)


@pytest.mark.parametrize("tag", RUNS)
def test_loss_matches_official_with_replayed_time_and_noise(tag, siloss, models):
    path_type, weighting, _, _ = RUNS[tag]
    loss_fn = REPALoss(path_type=path_type, weighting=weighting, proj_coeff=0.5)
    output = loss_fn(
        *_inputs(tag, siloss, models), timesteps=siloss[f"{tag}.time_input"], noise=siloss[f"{tag}.noises"]
    )
    _assert_matches_official(output, tag, siloss)


@pytest.mark.parametrize("tag", RUNS)
def test_loss_draws_time_and_noise_in_the_official_order(tag, siloss, models):
    path_type, weighting, _, seed = RUNS[tag]
    loss_fn = REPALoss(path_type=path_type, weighting=weighting)
    torch.manual_seed(seed)  # the fixture's global-generator seed before the official call
    output = loss_fn(*_inputs(tag, siloss, models))
    _assert_matches_official(output, tag, siloss)


def test_model_input_and_target_follow_the_path(siloss):
    time_input, noise, images = (
        siloss["cosine_lognormal.time_input"],
        siloss["cosine_lognormal.noises"],
        siloss["images"],
    )
    alpha, sigma, _, _ = path_coefficients("cosine", time_input)
    torch.testing.assert_close(alpha * images + sigma * noise, siloss["cosine_lognormal.model_input"], atol=0, rtol=0)
    draw = siloss["cosine_lognormal.rng_time_draw"]
    torch.testing.assert_close(time_from_noise_ratio("cosine", draw.exp()), time_input, atol=0, rtol=0)
    # Linear: v = eps - x0, and the derivatives are constants.
    t = torch.rand(5)
    alpha, sigma, d_alpha, d_sigma = path_coefficients("linear", t)
    torch.testing.assert_close(alpha + sigma, torch.ones(5))
    assert d_alpha.tolist() == [-1.0] * 5 and d_sigma.tolist() == [1.0] * 5
    # Cosine: the derivatives are those of cos/sin(pi t / 2).
    _, _, d_alpha, d_sigma = path_coefficients("cosine", t)
    torch.testing.assert_close(d_alpha, -math.pi / 2 * torch.sin(math.pi * t / 2))
    torch.testing.assert_close(d_sigma, math.pi / 2 * torch.cos(math.pi * t / 2))


def test_projection_loss_equals_official_per_sample_loop():
    generator = torch.Generator().manual_seed(0)
    targets = [torch.randn(3, 5, 8, generator=generator), torch.randn(3, 5, 4, generator=generator)]
    projected = [torch.randn(3, 5, 8, generator=generator), torch.randn(3, 5, 4, generator=generator)]
    official = 0.0  # SILoss: per encoder, per sample, token-mean of -cos; divided by n_encoders * batch
    for z, z_tilde in zip(targets, projected):
        for z_j, z_tilde_j in zip(z, z_tilde):
            official += (-(F.normalize(z_j, dim=-1) * F.normalize(z_tilde_j, dim=-1)).sum(dim=-1)).mean()
    official /= len(targets) * 3
    torch.testing.assert_close(projection_loss(targets, projected), official, atol=1e-7, rtol=0)


def test_projection_loss_is_computed_in_float32():
    # |x|^2 overflows float16 (max 65504) for entries of 300, so a half-precision normalisation gives inf/NaN.
    target = torch.full((2, 4, 16), 300.0, dtype=torch.float16)
    projected = torch.full((2, 4, 16), -300.0, dtype=torch.float16)
    loss = projection_loss([target], [projected])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.tensor(1.0))


def test_explicit_generator_is_reproducible(siloss, models):
    loss_fn = REPALoss(path_type="linear", weighting="lognormal")
    inputs = _inputs("linear_uniform", siloss, models)
    first = loss_fn(*inputs, generator=torch.Generator().manual_seed(7))
    second = loss_fn(*inputs, generator=torch.Generator().manual_seed(7))
    third = loss_fn(*inputs, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.loss, second.loss) and torch.equal(first.timesteps, second.timesteps)
    assert not torch.equal(first.timesteps, third.timesteps)
    assert ((first.timesteps > 0) & (first.timesteps < 1)).all()


def test_proj_coeff_override_and_zero_skips_the_projector(siloss, models):
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    fixed = {"timesteps": siloss["linear_uniform.time_input"].flatten(), "noise": siloss["linear_uniform.noises"]}
    loss_fn = REPALoss()
    full = loss_fn(transformer, projector, images, labels, targets, proj_coeff=2.0, **fixed)
    torch.testing.assert_close(full.loss, full.denoising_loss + 2.0 * full.projection_loss)

    def must_not_run(*args, **kwargs):
        raise AssertionError("the projector ran although proj_coeff=0")

    off = loss_fn(transformer, must_not_run, images, labels, None, proj_coeff=0.0, **fixed)
    assert torch.equal(off.loss, off.denoising_loss) and off.projection_loss.item() == 0.0
    torch.testing.assert_close(off.denoising_loss, full.denoising_loss, atol=0, rtol=0)
    REPALoss(proj_coeff=0.0)(transformer, None, images, labels, None, **fixed)


def test_gradients_reach_the_projector_and_the_transformer(siloss, models):
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    transformer.zero_grad(), projector.zero_grad()
    REPALoss()(transformer, projector, images, labels, targets, generator=torch.manual_seed(0)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert transformer.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    transformer.zero_grad(), projector.zero_grad()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: [t[0][:, :4]], "Encoder 0 gives 4 tokens but the SiT has 16"),
        (lambda t: [t[0][..., :10]], "Encoder 0 gives 10-dim features but projector head 0 outputs 24"),
        (lambda t: [t[0], t[0]], "The projector has 1 head"),
        (lambda t: [t[0][:2]], r"must have shape \(4, tokens, dim\)"),
        (lambda t: [], "`target_features` is empty"),
        (lambda t: t[0], "must be a list"),
    ],
)
def test_invalid_targets_raise_clear_errors(change, message, siloss, models):
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    with pytest.raises(ValueError, match=message):
        REPALoss()(transformer, projector, images, labels, change(targets), generator=torch.manual_seed(0))


def test_invalid_arguments_raise_clear_errors(siloss, models):
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    with pytest.raises(ValueError, match="Unknown `path_type`"):
        REPALoss(path_type="edm")
    with pytest.raises(ValueError, match="Unknown `weighting`"):
        REPALoss(weighting="cosmap")
    with pytest.raises(ValueError, match="`proj_coeff` must be >= 0"):
        REPALoss(proj_coeff=-1.0)
    with pytest.raises(ValueError, match="`projector` is None"):
        REPALoss()(transformer, None, images, labels, targets)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        REPALoss()(transformer, projector, images, labels, targets, timesteps=torch.full((4,), 999.0))
    with pytest.raises(ValueError, match="`noise` must have the shape"):
        REPALoss()(transformer, projector, images, labels, targets, noise=torch.randn(4, 4, 4, 4))


def test_targets_are_constants_no_gradient_reaches_the_encoder(siloss, models):
    """Official targets are computed under no_grad; features that still carry a graph (an encoder left trainable)
    must not be trained through the alignment loss."""
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    encoder = torch.nn.Linear(24, 24)
    features = [encoder(targets[0])]
    assert features[0].requires_grad
    output = REPALoss()(transformer, projector, images, labels, features, generator=torch.manual_seed(0))
    output.loss.backward()
    assert encoder.weight.grad is None and encoder.bias.grad is None
    assert projector.projectors[0][0].weight.grad.abs().sum() > 0  # the SiT side still learns
    transformer.zero_grad(), projector.zero_grad()


def test_bad_coefficient_time_and_noise_are_refused_or_adapted(siloss, models):
    transformer, projector, images, labels, targets = _inputs("linear_uniform", siloss, models)
    for coeff in (math.inf, math.nan):  # inf gave an infinite loss
        with pytest.raises(ValueError, match="`proj_coeff` must be >= 0 and finite"):
            REPALoss(proj_coeff=coeff)
        with pytest.raises(ValueError, match="`proj_coeff` must be >= 0 and finite"):
            REPALoss()(transformer, projector, images, labels, targets, proj_coeff=coeff)
    nan_time = torch.tensor([0.5, math.nan, 0.1, 0.2])  # passed the [0, 1] check before
    with pytest.raises(ValueError, match=r"`timesteps` are flow times and must lie in \[0, 1\]"):
        REPALoss()(transformer, projector, images, labels, targets, timesteps=nan_time)
    fixed = {"timesteps": siloss["linear_uniform.time_input"].flatten(), "noise": siloss["linear_uniform.noises"]}
    expected = REPALoss()(transformer, projector, images, labels, targets, **fixed)
    # float64 noise (and a list of times) gave a dtype error deep in the patch embedding.
    output = REPALoss()(
        transformer,
        projector,
        images,
        labels,
        targets,
        timesteps=fixed["timesteps"].tolist(),
        noise=fixed["noise"].double(),
    )
    torch.testing.assert_close(output.loss, expected.loss, atol=1e-6, rtol=0)


def test_loss_docstring_example_runs():
    import doctest

    import diffusers_repa.alignment.loss as module

    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_projection_loss_refuses_shapes_that_would_broadcast():
    """Called directly, one projected token against 5 target tokens broadcast into a plausible loss; a shorter list
    was silently truncated by zip."""
    targets = [torch.randn(3, 5, 8)]
    with pytest.raises(ValueError, match=r"Target features 0 have shape \(3, 5, 8\) but the projected states"):
        projection_loss(targets, [torch.randn(3, 1, 8)])
    with pytest.raises(ValueError, match="one projected tensor per target tensor, got 1 and 2"):
        projection_loss(targets * 2, [torch.randn(3, 5, 8)])
