# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""Image datasets, the ADM center crop, robust image decoding and VAE-posterior sampling."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffusers_repa.data import (
    ImageTransform,
    SkippedImages,
    adm_center_crop,
    load_image_dataset,
    preprocess_image,
    sample_posterior,
)

RESOLUTION = 64


def _adm_reference(pil_image, image_size):
    """`center_crop_arr` of guided-diffusion / EDM2 `center_crop_imagenet`, verbatim apart from names."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def _random_image(width, height, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "CMYK": 4}.get(mode)
    shape = (height, width, channels) if channels else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode if channels else "L")


def _encode(image, fmt, **save_kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(600, 400), (400, 600), (257, 129), (128, 128), (130, 65), (33, 20), (64, 64)])
def test_adm_center_crop_matches_reference(size):
    image = _random_image(*size, seed=sum(size))
    cropped = adm_center_crop(image, RESOLUTION)
    assert cropped.size == (RESOLUTION, RESOLUTION)
    np.testing.assert_array_equal(np.asarray(cropped), _adm_reference(image, RESOLUTION))


@pytest.mark.parametrize("size", [(64, 64), (600, 400), (65, 64)])
def test_preprocess_is_the_adm_crop_and_leaves_a_prepared_crop_as_it_is(size, monkeypatch):
    """Any image gives the reference ADM crop; one already at the resolution (a prepared crop) is decoded without the
    crop's resize and copy (its crop is itself), which the loader's speed depends on."""
    import diffusers_repa.data as data

    image = _random_image(*size, seed=3)
    expected = torch.from_numpy(_adm_reference(image, RESOLUTION).copy()).permute(2, 0, 1)
    calls = []
    monkeypatch.setattr(data, "adm_center_crop", lambda *args: calls.append(1) or adm_center_crop(*args))
    tensor = preprocess_image(_encode(image, "PNG"), RESOLUTION)
    assert torch.equal(tensor, expected) and tensor.is_contiguous()
    assert len(calls) == (0 if size == (RESOLUTION, RESOLUTION) else 1)


def test_preprocess_converts_every_mode_to_rgb():
    rgb = _random_image(96, 80)
    cases = {
        "grayscale L": _random_image(96, 80, "L"),
        "CMYK JPEG": _encode(_random_image(96, 80, "CMYK"), "JPEG"),
        "palette PNG with transparency": _encode(rgb.convert("P"), "PNG", transparency=0),
        "RGBA": _random_image(96, 80, "RGBA"),
        "bilevel": rgb.convert("1"),
    }
    for name, image in cases.items():
        tensor = preprocess_image(image, RESOLUTION)
        assert tensor is not None, name
        assert tensor.shape == (3, RESOLUTION, RESOLUTION) and tensor.dtype == torch.uint8, name

    gray = preprocess_image(cases["grayscale L"], RESOLUTION)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    rgba = preprocess_image(cases["RGBA"], RESOLUTION)  # alpha dropped, colour kept
    expected = adm_center_crop(cases["RGBA"].convert("RGB"), RESOLUTION)
    assert torch.equal(rgba, torch.from_numpy(np.array(expected)).permute(2, 0, 1))


def test_sixteen_bit_images_are_rescaled_not_clipped():
    levels = np.array([[0, 257 * 128, 65535]], dtype=np.uint16).repeat(64, axis=0).repeat(32, axis=1)
    image = Image.open(io.BytesIO(_encode(Image.fromarray(levels), "PNG")))
    assert image.mode.startswith("I")
    tensor = preprocess_image(image, RESOLUTION)  # 96x64: no resize, crop columns 16..79
    assert [tensor[0, 10, column].item() for column in (5, 30, 60)] == [0, 128, 255]  # Pillow alone: [0, 255, 255]


def test_bad_images_are_skipped_and_counted(tmp_path):
    png = _encode(_random_image(100, 100), "PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    skipped = SkippedImages()
    assert preprocess_image(b"\x00 not an image", RESOLUTION, skipped=skipped, identifier="garbage.jpg") is None
    assert preprocess_image(str(truncated), RESOLUTION, skipped=skipped) is None
    assert preprocess_image({"bytes": None, "path": None}, RESOLUTION, skipped=skipped) is None
    tiny = _random_image(4, 4)
    assert preprocess_image(tiny, RESOLUTION, skipped=skipped) is None  # 4 px < 64 / 8
    assert preprocess_image(tiny, RESOLUTION, max_upscale=None).shape == (3, RESOLUTION, RESOLUTION)
    assert preprocess_image(_random_image(8, 30), RESOLUTION) is not None  # exactly 8x upscaling is allowed

    assert skipped.total == 4 and skipped.as_dict() == {"skipped_images/too_small": 1, "skipped_images/unreadable": 3}
    names = [name for name, _ in skipped.examples]
    assert names[:2] == ["garbage.jpg", str(truncated)]
    assert "truncated" in skipped.examples[1][1] and "4x4" in skipped.examples[3][1]
    assert str(skipped).startswith("4 images skipped (1 too_small, 3 unreadable)")
    assert str(SkippedImages()) == "no images skipped"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of small images, including every kind of bad file."""
    root = tmp_path_factory.mktemp("images")
    (root / "cat").mkdir()
    (root / "dog").mkdir()
    _random_image(120, 90, seed=1).save(root / "cat" / "rgb.png")
    _random_image(90, 120, "L", seed=2).save(root / "cat" / "gray.png")
    _random_image(100, 100, "CMYK", seed=3).save(root / "dog" / "cmyk.jpg")
    _random_image(70, 80, seed=4).convert("P").save(root / "dog" / "palette.png")
    _random_image(4, 4, seed=5).save(root / "dog" / "tiny.png")
    (root / "dog" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    png = _encode(_random_image(100, 100, seed=6), "PNG")
    (root / "cat" / "truncated.png").write_bytes(png[: len(png) // 2])
    return root


def test_image_folder_dataset_through_a_dataloader(image_folder, tmp_path):
    dataset = load_image_dataset(train_data_dir=str(image_folder), cache_dir=str(tmp_path))
    assert dataset.features["label"].names == ["cat", "dog"] and len(dataset) == 7
    transform = ImageTransform(RESOLUTION)

    def run():
        loader = DataLoader(dataset.with_transform(transform), batch_size=4, collate_fn=transform.collate)
        return list(loader)

    batches = run()
    skipped = SkippedImages()
    for batch in batches:
        assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape[1:] == (3, 64, 64)
        assert len(batch["class_labels"]) == len(batch["pixel_values"])
        skipped.update(batch["skipped"])
    labels = torch.cat([batch["class_labels"] for batch in batches])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]  # rgb, gray | cmyk, palette
    assert skipped.as_dict() == {"skipped_images/too_small": 1, "skipped_images/unreadable": 2}
    assert {name.rsplit("/", 1)[-1] for name, _ in skipped.examples} == {"tiny.png", "corrupt.jpg", "truncated.png"}

    again = run()  # deterministic: same tensors on a second pass
    for first, second in zip(batches, again):
        assert torch.equal(first["pixel_values"], second["pixel_values"])

    streamed = load_image_dataset(train_data_dir=str(image_folder), streaming=True)
    loader = DataLoader(streamed.map(transform, batched=True, batch_size=4), batch_size=4, collate_fn=transform.collate)
    assert sum(len(batch["pixel_values"]) for batch in loader) == 4


def test_all_skipped_batch_collates_to_an_empty_batch():
    transform = ImageTransform(RESOLUTION)
    examples = transform({"image": [b"bad", b"worse"], "label": [0, 1]})
    batch = transform.collate([dict(zip(examples, values)) for values in zip(*examples.values())])
    assert batch["pixel_values"].shape == (0, 3, RESOLUTION, RESOLUTION) and batch["class_labels"].shape == (0,)
    assert [reason for reason, _, _ in batch["skipped"]] == ["unreadable", "unreadable"]
    with pytest.raises(KeyError, match="no column 'label'"):
        transform({"image": [b"bad"]})


def test_load_image_dataset_validates_arguments(image_folder, tmp_path):
    with pytest.raises(ValueError, match="exactly one of"):
        load_image_dataset()
    with pytest.raises(ValueError, match="exactly one of"):
        load_image_dataset(dataset_name="x", train_data_dir=str(image_folder))
    with pytest.raises(ValueError, match="is not a folder"):
        load_image_dataset(train_data_dir=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no column 'class'.*set `label_column`"):
        load_image_dataset(train_data_dir=str(image_folder), label_column="class", cache_dir=str(tmp_path))


def test_a_folder_without_images_is_one_sentence(tmp_path):
    (tmp_path / "empty" / "tench").mkdir(parents=True)
    (tmp_path / "notes" / "tench").mkdir(parents=True)
    (tmp_path / "notes" / "tench" / "README.txt").write_text("no images here")
    for folder in ("empty", "notes"):  # datasets' EmptyDatasetError / "corresponds to no data" before
        with pytest.raises(ValueError, match="holds no image files: put the images in one sub-folder per class"):
            load_image_dataset(train_data_dir=str(tmp_path / folder), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="holds no data files"):
        load_image_dataset(dataset_name=str(tmp_path / "empty"), cache_dir=str(tmp_path / "cache"))


def test_sample_posterior_matches_official_and_is_reproducible():
    generator = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn(2, 4, 8, 8, generator=generator), torch.rand(2, 4, 8, 8, generator=generator)], 1)
    torch.manual_seed(3)
    ours = sample_posterior(moments)
    torch.manual_seed(3)  # the official: mean + std * randn_like(mean), then * scale + bias
    mean, std = torch.chunk(moments, 2, dim=1)
    official = (mean + std * torch.randn_like(mean)) * 0.18215 + 0.0
    torch.testing.assert_close(ours, official, atol=0, rtol=0)

    first = sample_posterior(moments, generator=torch.Generator().manual_seed(1))
    second = sample_posterior(moments, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    scale = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    zero_std = torch.cat([mean, torch.zeros_like(std)], dim=1)
    torch.testing.assert_close(sample_posterior(zero_std, scale, latent_shift=-1.0), mean * scale - 1.0)
    with pytest.raises(ValueError, match=r"\(batch, 2\*C, h, w\)"):
        sample_posterior(torch.zeros(2, 3, 8, 8))


def test_module_docstring_examples():
    """The examples run (the closing fences were read as expected output, and the module example needed a folder)."""
    import doctest

    import diffusers_repa.data as module

    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("resolution", [0, -64, True])
def test_a_bad_resolution_is_one_error_before_any_image(resolution):
    """0 or a negative side halved every image down to 0 px and failed in Pillow, image after image."""
    with pytest.raises(ValueError, match="`resolution` must be a positive integer"):
        ImageTransform(resolution)
    with pytest.raises(ValueError, match="`resolution` must be a positive integer"):
        preprocess_image(_random_image(100, 80), resolution)
    with pytest.raises(ValueError, match="`resolution` must be a positive integer"):
        adm_center_crop(_random_image(100, 80), resolution)


def test_sample_posterior_per_channel_values_apply_to_channels():
    """A list or a (C,) tensor of per-channel values scales the channels: the list raised a TypeError, and the (C,)
    tensor broadcast over the width (silently, when the width equals C)."""
    generator = torch.Generator().manual_seed(0)
    moments = torch.cat([torch.randn(2, 4, 4, 4, generator=generator), torch.zeros(2, 4, 4, 4)], dim=1)
    mean = moments[:, :4]
    scale, shift = [1.0, 2.0, 3.0, 4.0], [0.5, -0.5, 0.0, 1.0]
    expected = mean * torch.tensor(scale).view(1, 4, 1, 1) + torch.tensor(shift).view(1, 4, 1, 1)
    for as_given in (list, torch.tensor, lambda v: torch.tensor(v, dtype=torch.float64).view(1, 4, 1, 1)):
        latents = sample_posterior(moments, as_given(scale), as_given(shift))
        assert latents.dtype == torch.float32
        torch.testing.assert_close(latents, expected)
    torch.testing.assert_close(sample_posterior(moments, torch.tensor(2.0)), mean * 2.0)
    with pytest.raises(ValueError, match=r"`latent_scale` must be a number or one value per latent channel \(4\)"):
        sample_posterior(moments, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"`latent_shift` must be a number or one value per latent channel"):
        sample_posterior(moments, 1.0, torch.ones(1, 1, 1, 4))
