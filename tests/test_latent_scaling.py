"""Latent scaling with a non-zero (per-channel) shift and a scale != 1: training latents from `sample_posterior` are
`z * scale + shift`, and the pipeline maps its final state back with `(x - shift) / scale` before the VAE decodes it.
(A zero shift or a unit scale hides an inverted or misordered formula; these values do not.)"""

import pytest
import torch

from diffusers_repa.data import sample_posterior
from diffusers_repa.pipeline_repa import REPAPipeline
from diffusers_repa.schedulers import SiTEulerScheduler

from .conftest import make_tiny_vae

PER_CHANNEL = ([0.5, 0.18215, 2.0, 1.5], [0.3, -0.2, 0.0, 1.1])
SCALAR = (0.5, 0.3)


def as_channels(value) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32).reshape(1, -1, 1, 1)


def vae_moments(generator: torch.Generator, std_scale: float) -> torch.Tensor:
    """`cat([mean, std])` of a posterior over 8x8x4 latents (the tiny VAE's)."""
    mean = torch.randn(2, 4, 8, 8, generator=generator)
    return torch.cat([mean, std_scale * torch.rand(2, 4, 8, 8, generator=generator)], dim=1)


@pytest.mark.parametrize("scale, shift", [PER_CHANNEL, SCALAR], ids=["per-channel", "scalar"])
def test_sample_posterior_scales_then_shifts(scale, shift):
    moments = vae_moments(torch.Generator().manual_seed(0), std_scale=0.5)
    latents = sample_posterior(moments, as_channels(scale), as_channels(shift), generator=torch.manual_seed(1))
    mean, std = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=torch.manual_seed(1))
    torch.testing.assert_close(latents, (mean + std * noise) * as_channels(scale) + as_channels(shift))


@pytest.mark.parametrize("scale, shift", [PER_CHANNEL, SCALAR], ids=["per-channel", "scalar"])
def test_pipeline_decodes_exactly_the_latents_training_scaled(repa_tiny_sit, scale, shift):
    """Training latents of a zero-std posterior, put in as the sampler's final state, reach the VAE as the posterior
    mean, and the image is the VAE's decoding of that mean."""
    moments = vae_moments(torch.Generator().manual_seed(2), std_scale=0.0)
    vae_latents = moments.chunk(2, dim=1)[0]
    training_latents = sample_posterior(moments, as_channels(scale), as_channels(shift))
    assert not torch.allclose(training_latents, vae_latents)

    vae, decoded = make_tiny_vae(), []
    original_decode = vae.decode

    def decode(latents, *args, **kwargs):
        decoded.append(latents.detach().clone())
        return original_decode(latents, *args, **kwargs)

    vae.decode = decode
    pipeline = REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), vae=vae, latent_scale=scale, latent_shift=shift)
    pipeline.set_progress_bar_config(disable=True)

    def finish_at_training_latents(pipe, step, timestep, tensors):
        if step == pipe.num_timesteps - 1:
            tensors["latents"] = training_latents.to(tensors["latents"])
        return tensors

    images = pipeline(
        [1, 2], num_inference_steps=2, output_type="pt", callback_on_step_end=finish_at_training_latents
    ).images
    (vae_input,) = decoded
    torch.testing.assert_close(vae_input, vae_latents, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        expected = pipeline.image_processor.postprocess(original_decode(vae_latents).sample, output_type="pt")
    torch.testing.assert_close(images, expected, rtol=1e-4, atol=1e-5)
