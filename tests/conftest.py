"""Shared fixtures: the official tiny SiT, the official sampler fixtures, a tiny VAE and a saved tiny pipeline."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from diffusers_repa.convert import convert_official_state_dict
from diffusers_repa.pipeline_repa import REPAPipeline
from diffusers_repa.schedulers import SiTEulerMaruyamaScheduler

OFFICIAL_FIXTURES = Path(__file__).parent / "fixtures" / "official-repa"


@pytest.fixture(scope="session")
def repa_tiny_sit():
    """The official tiny SiT (8x8x4 latents, 1000 classes, 5 blocks), converted, in eval mode."""
    state_dict = load_file(OFFICIAL_FIXTURES / "tiny_sit_state_dict.safetensors")
    transformer, _ = convert_official_state_dict(state_dict, num_attention_heads=6, alignment_depth=3)
    return transformer.eval()


@pytest.fixture(scope="session")
def repa_sampler_fixtures() -> dict[str, torch.Tensor]:
    """`samplers.safetensors`: the official sampler inputs, recorded SDE noises and outputs."""
    return load_file(OFFICIAL_FIXTURES / "samplers.safetensors")


def make_tiny_vae() -> AutoencoderKL:
    """A random 2-level AutoencoderKL: 16x16x3 images <-> 8x8x4 latents."""
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=16,
    ).eval()


@pytest.fixture(scope="session")
def repa_tiny_vae() -> AutoencoderKL:
    return make_tiny_vae()


@pytest.fixture(scope="session")
def repa_tiny_pipeline(repa_tiny_sit, repa_tiny_vae) -> REPAPipeline:
    """Tiny SiT + SDE scheduler + tiny VAE, ImageNet labels (the default for 1000 classes)."""
    pipeline = REPAPipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler(), vae=repa_tiny_vae)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="session")
def repa_tiny_pipeline_dir(repa_tiny_pipeline, tmp_path_factory) -> Path:
    """`repa_tiny_pipeline` saved with `save_pretrained` (the package layout)."""
    folder = tmp_path_factory.mktemp("tiny_repa_pipeline")
    repa_tiny_pipeline.save_pretrained(folder)
    return folder
