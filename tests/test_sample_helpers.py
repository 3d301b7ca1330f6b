"""The sampling CLI's helpers, pinned with values that tell right from wrong: class-balanced labels, the per-image
seeds, and the truncating float -> uint8 conversion of the official `generate.py`; then labels and seeds through the
`npz` command, with a 3-class model so that the labels wrap around and with seeds 0 and 1."""

import numpy as np
import pytest
import torch

from diffusers_repa import REPAPipeline, SiTEulerScheduler, SiTTransformer2DModel
from diffusers_repa.sample import SEED_STRIDE, image_generators, main, sample_labels, to_uint8

from .conftest import make_tiny_vae


def test_balanced_labels_cycle_through_the_classes_and_never_give_the_null_class():
    for num_images, num_classes in ((2500, 1000), (23, 10), (10, 10), (3, 7)):
        labels = sample_labels(num_images, num_classes, "balanced", seed=5)
        assert labels.tolist() == [index % num_classes for index in range(num_images)]
        assert labels.max() < num_classes  # the null (unconditional) id is num_classes
    counts = np.bincount(sample_labels(50_000, 1000, "balanced", seed=0), minlength=1001)
    assert (counts[:1000] == 50).all() and counts[1000] == 0  # the ADM FID layout: 50 per class
    random = sample_labels(20_000, 10, "random", seed=1)
    assert random.min() == 0 and random.max() == 9 and np.bincount(random).min() > 1800
    assert not np.array_equal(random, sample_labels(20_000, 10, "random", seed=2))


def test_per_image_seeds_differ_across_seeds_and_ignore_batching():
    # Image i of a run with --seed s: CPU generator seeded with (s * SEED_STRIDE + i) % 2**32 (the CPU generator keeps
    # 32 bits of its seed, so `(s << 32) + i` would make every --seed give the images of seed 0).
    assert [g.initial_seed() for g in image_generators(0, range(3))] == [0, 1, 2]
    expected = [(3 * SEED_STRIDE + index) % 2**32 for index in (5, 6)]
    assert [g.initial_seed() for g in image_generators(3, range(5, 7))] == expected
    # What a generator draws differs across seeds (not just its recorded seed), also for the seeds s and s + 1
    # that `seed + index` would overlap by all but one image.
    first, second = image_generators(0, range(64)), image_generators(1, range(64))
    noise = [torch.stack([torch.randn(8, generator=g) for g in gens]) for gens in (first, second)]
    assert torch.cdist(noise[0], noise[1]).min() > 0
    # Seeds 0..999 share no generator within runs of 1M images (a 50K FID run per seed, with room).
    starts = np.sort(np.array([g.initial_seed() for seed in range(1000) for g in image_generators(seed, range(1))]))
    assert np.diff(np.append(starts, starts[0] + 2**32)).min() > 1_000_000
    # Independent of batching: a generator depends on the seed and the image index only.
    assert image_generators(2, range(10))[7].initial_seed() == image_generators(2, range(7, 9))[0].initial_seed()


def test_to_uint8_truncates_like_the_official_generate_script():
    images = np.array([0.0, 0.999, 0.5, 1.0, 1 / 255, 0.9999 / 255, -0.2, 1.3, 254.9 / 255], dtype=np.float32)
    expected = [0, 254, 127, 255, 1, 0, 0, 255, 254]
    assert to_uint8(images).tolist() == expected and to_uint8(images).dtype == np.uint8
    # The official conversion: clamp(255 * x, 0, 255) cast to uint8 (x = (sample + 1) / 2).
    official = torch.clamp(255.0 * torch.from_numpy(images), 0, 255).to(torch.uint8).numpy()
    np.testing.assert_array_equal(to_uint8(images), official)


@pytest.fixture(scope="module")
def three_class_pipeline_dir(tmp_path_factory):
    """A random 1-block SiT on the tiny VAE's 8x8x4 latents with 3 classes, so that balanced labels wrap around."""
    torch.manual_seed(0)
    config = SiTTransformer2DModel.preset_config(
        "SiT-S/4", sample_size=8, num_classes=3, num_layers=1, num_attention_heads=2, attention_head_dim=8,
        alignment_depth=1,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("three_classes")
    pipeline = REPAPipeline(SiTTransformer2DModel(**config), SiTEulerScheduler(), vae=make_tiny_vae(), latent_scale=1.0)
    pipeline.save_pretrained(folder)
    return folder


def test_npz_labels_wrap_without_the_null_class_and_seeds_share_no_image(three_class_pipeline_dir, tmp_path):
    def npz(seed: int) -> dict[str, np.ndarray]:
        output = tmp_path / f"seed{seed}.npz"
        argv = ["npz", "--model", str(three_class_pipeline_dir), "--output", str(output), "--scheduler", "euler",
                "--steps", "1", "--num_images", "7", "--batch_size", "4", "--seed", str(seed)]  # fmt: skip
        assert main(argv) == 0
        return dict(np.load(output))

    first, second = npz(0), npz(1)
    assert first["labels"].tolist() == second["labels"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    pairs = [(i, j) for i in range(7) for j in range(7)]
    shared = [(i, j) for i, j in pairs if np.array_equal(first["arr_0"][i], second["arr_0"][j])]
    assert not shared, f"--seed 0 and --seed 1 made the same images: {shared}"
    assert len({image.tobytes() for image in first["arr_0"]}) == 7
