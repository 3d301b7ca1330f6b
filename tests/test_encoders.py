# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""AlignmentEncoder on tiny random transformers models saved to disk, and the official DINOv2 preprocessing."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoConfig
from transformers.utils import is_timm_available

from diffusers_repa import REPAProjector, SiTTransformer2DModel
from diffusers_repa.alignment import AlignmentEncoder, REPALoss, check_compatibility, match_tokens
from diffusers_repa.alignment.encoders import resample_position_embeddings

FIXTURES = Path(__file__).parent / "fixtures" / "official-repa"
RESOLUTION = 64  # -> a 4x4 token grid (resolution / 16)
PATCH = 4  # -> a 16 px network input
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
TOWER = {**TINY, "image_size": 24, "patch_size": PATCH}  # a 6x6 position table, resampled to 4x4 at load
IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])

# family -> (transformers class to save, its config, how many leading tokens are not patches, mean/std)
FAMILIES = {
    "dinov2": ("Dinov2Model", transformers.Dinov2Config(**TOWER), 1, IMAGENET),
    "dinov2_with_registers": (
        "Dinov2WithRegistersModel",
        transformers.Dinov2WithRegistersConfig(**TOWER, num_register_tokens=2),
        3,
        IMAGENET,
    ),
    "clip": ("CLIPModel", transformers.CLIPConfig(text_config=TINY, vision_config=TOWER), 1, CLIP),
    "clip_vision_model": ("CLIPVisionModel", transformers.CLIPVisionConfig(**TOWER), 1, CLIP),
    "siglip": ("SiglipModel", transformers.SiglipConfig(text_config=TINY, vision_config=TOWER), 0, ([0.5] * 3,) * 2),
    "vit_mae": ("ViTMAEModel", transformers.ViTMAEConfig(**TOWER), 1, IMAGENET),
    "ijepa": ("IJepaModel", transformers.IJepaConfig(**TOWER), 0, IMAGENET),
    "vit": ("ViTModel", transformers.ViTConfig(**TOWER), 1, IMAGENET),
}
# The transformers class AlignmentEncoder runs for each family (the vision tower of a full CLIP/SigLIP model).
TOWERS = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """family -> folder with a tiny random model saved by `save_pretrained`."""
    root = tmp_path_factory.mktemp("encoders")
    dirs = {}
    for family, (class_name, config, _, _) in FAMILIES.items():
        torch.manual_seed(0)
        model = getattr(transformers, class_name)(config)
        model.save_pretrained(root / family)
        dirs[family] = root / family
    return dirs


def _images(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, RESOLUTION, RESOLUTION), dtype=torch.uint8, generator=generator)


def _reference_tokens(family, path, pixel_values):
    """Patch tokens from a fresh model built for the 16 px input with the resampled table loaded by hand."""
    class_name = TOWERS.get(family, FAMILIES[family][0])
    num_prefix = FAMILIES[family][2]
    original = getattr(transformers, class_name).from_pretrained(path)
    config = original.config
    config.image_size = PATCH * 4
    if family == "vit_mae":
        config.mask_ratio = 0.0  # REPA's MAE target: every token, unmasked
    fresh = getattr(transformers, class_name)(config).eval()
    state = original.state_dict()
    for key, table in state.items():
        if key.endswith("position_embeddings") or key.endswith("position_embedding.weight"):
            has_cls = int(family not in ("siglip", "ijepa"))
            resampled = resample_position_embeddings(table.reshape(1, -1, table.shape[-1]), 4, has_cls)
            state[key] = resampled.reshape(-1, table.shape[-1]) if table.ndim == 2 else resampled
    fresh.load_state_dict(state)
    with torch.no_grad():
        output = fresh(pixel_values=pixel_values)
    hidden = output.last_hidden_state
    if family == "vit_mae":  # undo MAE's random (unmasked) shuffle
        index = output.ids_restore.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        return torch.gather(hidden[:, 1:], 1, index)
    return hidden[:, num_prefix:]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_returns_frozen_patch_tokens(family, model_dirs):
    encoder = AlignmentEncoder.from_pretrained(str(model_dirs[family]), resolution=RESOLUTION)
    assert (encoder.embed_dim, encoder.num_tokens, encoder.input_size) == (16, 16, 16)
    assert type(encoder.model).__name__ == TOWERS.get(family, FAMILIES[family][0])
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor(FAMILIES[family][3][0]))
    torch.testing.assert_close(encoder.std.flatten(), torch.tensor(FAMILIES[family][3][1]))
    assert not any(p.requires_grad for p in encoder.parameters())
    assert not encoder.train().training and not encoder.model.training

    images = _images()
    rng_state = torch.get_rng_state()
    features = encoder(images)
    assert torch.equal(torch.get_rng_state(), rng_state)  # no global randomness consumed (ViT-MAE's shuffle)
    assert features.shape == (2, 16, 16) and not features.requires_grad
    expected = _reference_tokens(family, model_dirs[family], encoder.preprocess(images))
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(encoder(images.float()), features, atol=0, rtol=0)  # float in [0, 255] == uint8


def test_dinov2_preprocessing_and_position_resampling_match_official(tmp_path):
    misc = load_file(FIXTURES / "misc.safetensors")
    table = misc["dinov2_posembed_resample.in"]  # (1, 1 + 37*37, 8), like a hub DINOv2 at 518 px
    for grid, key in ((16, "out_16"), (32, "out_32")):
        expected = misc[f"dinov2_posembed_resample.{key}"]
        torch.testing.assert_close(resample_position_embeddings(table, grid), expected, atol=0, rtol=0)

    config = transformers.Dinov2Config(**{**TINY, "hidden_size": 8}, image_size=518, patch_size=14)
    model = transformers.Dinov2Model(config)
    with torch.no_grad():
        model.embeddings.position_embeddings.copy_(table)
    model.save_pretrained(tmp_path)
    for resolution, key in ((256, "out_16"), (512, "out_32")):
        encoder = AlignmentEncoder.from_pretrained(str(tmp_path), resolution=resolution)
        assert encoder.input_size == 224 * resolution // 256 and encoder.model.config.image_size == encoder.input_size
        position_embeddings = encoder.model.embeddings.position_embeddings
        torch.testing.assert_close(position_embeddings, misc[f"dinov2_posembed_resample.{key}"], atol=0, rtol=0)

    encoder = AlignmentEncoder.from_pretrained(str(tmp_path), resolution=256)
    pixel_values = encoder.preprocess(misc["dinov2_preprocess.raw_uint8"]).double()
    torch.testing.assert_close(
        pixel_values[:, :, ::7, ::7].float(), misc["dinov2_preprocess.out_sub7"], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(pixel_values[:, :, 100].float(), misc["dinov2_preprocess.out_row100"], atol=1e-6, rtol=0)
    sums, sumsq = pixel_values.sum(dim=(0, 2, 3)), pixel_values.square().sum(dim=(0, 2, 3))
    torch.testing.assert_close(sums, misc["dinov2_preprocess.out_sum_per_channel"], atol=1e-3, rtol=0)
    torch.testing.assert_close(sumsq, misc["dinov2_preprocess.out_sumsq_per_channel"], atol=1e-3, rtol=1e-7)

    # HF's own runtime interpolation (no antialias) would give different targets: the reason for resampling.
    raw = transformers.Dinov2Model.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        runtime = raw(pixel_values=pixel_values.float()).last_hidden_state[:, 1:]
    assert (runtime - encoder(misc["dinov2_preprocess.raw_uint8"])).abs().max() > 1e-3


def test_dinov2_with_registers_matches_hf_antialiased_runtime_interpolation(model_dirs):
    encoder = AlignmentEncoder.from_pretrained(str(model_dirs["dinov2_with_registers"]), resolution=RESOLUTION)
    raw = transformers.Dinov2WithRegistersModel.from_pretrained(model_dirs["dinov2_with_registers"]).eval()
    images = _images(seed=1)
    with torch.no_grad():  # this model interpolates its 6x6 table at run time, bicubic with antialias
        expected = raw(pixel_values=encoder.preprocess(images)).last_hidden_state[:, 1 + 2 :]
    torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=1e-5)


def test_preprocessor_config_mean_std_are_used(model_dirs, tmp_path):
    path = tmp_path / "clip"
    transformers.CLIPVisionModel(FAMILIES["clip_vision_model"][1]).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 2, 3]}))
    encoder = AlignmentEncoder.from_pretrained(str(path), resolution=RESOLUTION)
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(encoder.std.flatten(), torch.tensor([1.0, 2.0, 3.0]))


def test_num_tokens_enlarges_the_input_or_pools(model_dirs):
    path = str(model_dirs["dinov2"])
    finer = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, num_tokens=64)  # 8x8 > default 4x4
    assert (finer.input_size, finer.grid_size, finer.num_tokens) == (32, 8, 64)
    assert finer(_images()).shape == (2, 64, 16)

    coarser = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, num_tokens=4)  # 2x2 < 4x4: pooled
    default = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION)
    assert (coarser.input_size, coarser.grid_size, coarser.num_tokens) == (16, 4, 4)
    torch.testing.assert_close(coarser(_images()), match_tokens(default(_images()), 4))

    pinned = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, input_size=12, num_tokens=16)
    assert (pinned.grid_size, pinned.num_tokens) == (3, 16) and pinned(_images()).shape == (2, 16, 16)
    with pytest.raises(ValueError, match="upsample the features more than 2x"):
        AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, input_size=8, num_tokens=36)
    with pytest.raises(ValueError, match="multiple of the encoder's stride 4"):
        AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, input_size=18)
    with pytest.raises(ValueError, match="positive multiple of 16"):
        AlignmentEncoder.from_pretrained(path, resolution=100)


def test_match_tokens():
    features = torch.arange(2 * 16 * 3, dtype=torch.float32).reshape(2, 16, 3)
    assert match_tokens(features, 16) is features
    pooled = match_tokens(features, 4)  # 4x4 -> 2x2: mean of each 2x2 block, raster order
    grid = features.reshape(2, 4, 4, 3)
    torch.testing.assert_close(pooled[:, 0], grid[:, :2, :2].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[:, 3], grid[:, 2:, 2:].mean(dim=(1, 2)))
    assert match_tokens(features.half(), 64).dtype == torch.float16  # 2x upsampling is allowed
    with pytest.raises(ValueError, match="more than 2x"):
        match_tokens(features, 144)
    with pytest.raises(ValueError, match="not a square grid"):
        match_tokens(features, 8)
    with pytest.raises(ValueError, match="not a square grid"):
        match_tokens(features[:, :12], 4)
    for empty in (0, -4):  # 0 gave (2, 0, 3) features, -4 an isqrt error
        with pytest.raises(ValueError, match=r"`num_tokens` \(-?[0-9]+\) is not a square grid"):
            match_tokens(features, empty)


def test_several_encoders_feed_the_loss_and_check_compatibility(model_dirs):
    encoders = [
        AlignmentEncoder.from_pretrained(str(model_dirs["dinov2"]), resolution=RESOLUTION),
        AlignmentEncoder.from_pretrained(str(model_dirs["siglip"]), resolution=RESOLUTION),
    ]
    transformer = SiTTransformer2DModel(
        sample_size=8, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=8, alignment_depth=1
    )
    projector = REPAProjector(hidden_size=16, projector_dim=8, z_dims=[e.embed_dim for e in encoders])
    check_compatibility(encoders, transformer, projector)
    check_compatibility(encoders[0], transformer)

    images = _images(batch=3)
    targets = [encoder(images) for encoder in encoders]
    output = REPALoss()(transformer, projector, torch.randn(3, 4, 8, 8), torch.tensor([0, 1, 2]), targets)
    assert torch.isfinite(output.loss)

    with pytest.raises(ValueError, match=r"z_dims \[16\] must equal the encoders' embed_dims \[16, 16\]"):
        check_compatibility(encoders, transformer, REPAProjector(hidden_size=16, projector_dim=8, z_dims=[16]))
    narrow = REPAProjector(hidden_size=12, projector_dim=8, z_dims=[e.embed_dim for e in encoders])
    with pytest.raises(ValueError, match=r"width 12, but the transformer's are 16 wide"):
        check_compatibility(encoders, transformer, narrow)  # it failed only in the first step's matmul
    wider = SiTTransformer2DModel(
        sample_size=16, patch_size=2, num_layers=2, num_attention_heads=2, attention_head_dim=8, alignment_depth=1
    )
    with pytest.raises(ValueError, match=r"encoder 0 \(.*\) gives 16 tokens .* has 64 .*num_tokens=64"):
        check_compatibility(encoders, wider)


def test_invalid_inputs_raise_clear_errors(model_dirs, tmp_path):
    encoder = AlignmentEncoder.from_pretrained(str(model_dirs["vit"]), resolution=RESOLUTION)
    with pytest.raises(ValueError, match=r"\(batch, 3, 64, 64\) images in \[0, 255\]"):
        encoder(torch.zeros(2, 4, 8, 8))
    images = _images().float()
    for wrong in (images / 255, images / 127.5 - 1, images * 2):  # [0, 1], [-1, 1], [0, 510]
        with pytest.raises(ValueError, match=r"uint8, or float in \[0, 255\]"):
            encoder(wrong)  # would be divided by 255 into near-black inputs
    nan_images = images.clone()
    nan_images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="float values in"):
        encoder(nan_images)
    encoder(torch.zeros_like(images))  # an all-black batch is valid in both conventions
    transformers.BertModel(transformers.BertConfig(**TINY, vocab_size=10)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' model, which AlignmentEncoder does not support"):
        AlignmentEncoder.from_pretrained(str(tmp_path))


def test_half_precision_encoder(model_dirs):
    encoder = AlignmentEncoder.from_pretrained(str(model_dirs["dinov2"]), resolution=RESOLUTION, dtype=torch.bfloat16)
    features = encoder(_images())
    assert features.dtype == torch.bfloat16
    full = AlignmentEncoder.from_pretrained(str(model_dirs["dinov2"]), resolution=RESOLUTION)(_images())
    torch.testing.assert_close(features.float(), full, atol=0.1, rtol=0.05)


@pytest.mark.skipif(
    not is_timm_available(),
    reason="timm is not importable in this environment (with torch 2.13 torchvision does not import); install "
    "torch==2.14.1 torchvision==0.29.1 timm to run the TimmWrapperModel path",
)
@pytest.mark.parametrize("architecture, prefix", [("test_vit", 1), ("test_resnet", 0)])
def test_timm_wrapper(architecture, prefix, tmp_path):
    import timm

    torch.manual_seed(0)
    config = transformers.TimmWrapperConfig(architecture=architecture)
    transformers.TimmWrapperModel(config).save_pretrained(tmp_path)
    encoder = AlignmentEncoder.from_pretrained(str(tmp_path), resolution=RESOLUTION)
    stride = 16 if architecture == "test_vit" else 32
    timm_model = encoder.model.timm_model
    assert (encoder.input_size, encoder.num_tokens, encoder.embed_dim) == (4 * stride, 16, timm_model.num_features)
    assert encoder.num_prefix_tokens == prefix
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor(timm_model.pretrained_cfg["mean"]).float())
    images = _images()
    features = encoder(images)
    assert features.shape == (2, 16, timm_model.num_features)

    # Reference: timm itself, created for the encoder's input size, with the saved weights (pos-embed resampled).
    reference = (
        timm.create_model(architecture, pretrained=False, num_classes=0, img_size=encoder.input_size)
        if (architecture == "test_vit")
        else timm.create_model(architecture, pretrained=False, num_classes=0)
    )
    state = transformers.TimmWrapperModel.from_pretrained(tmp_path).timm_model.state_dict()
    if "pos_embed" in state:
        state["pos_embed"] = resample_position_embeddings(state["pos_embed"], 4, prefix)
    reference.load_state_dict(state)
    with torch.no_grad():
        hidden = reference.eval().forward_features(encoder.preprocess(images))
    expected = hidden.flatten(2).transpose(1, 2) if hidden.ndim == 4 else hidden[:, prefix:]
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)

    in_memory = transformers.TimmWrapperModel.from_pretrained(tmp_path)  # a timm model already in memory
    torch.testing.assert_close(AlignmentEncoder.from_model(in_memory, resolution=RESOLUTION)(images), features)


@pytest.mark.parametrize("family", ["dinov2", "dinov2_with_registers", "clip", "siglip", "vit_mae", "vit"])
def test_from_model_in_memory_equals_from_pretrained_of_the_same_weights(family, model_dirs):
    """A model already in memory (here loaded by hand, as a user holds it) gives the encoder `from_pretrained` gives:
    same family, same resampled position table, same features. CLIP and SigLIP come as full models."""
    class_name = FAMILIES[family][0]
    in_memory = getattr(transformers, class_name).from_pretrained(model_dirs[family])
    wrapped = AlignmentEncoder.from_model(in_memory, resolution=RESOLUTION)
    loaded = AlignmentEncoder.from_pretrained(str(model_dirs[family]), resolution=RESOLUTION)
    assert type(wrapped.model) is type(loaded.model)
    assert (wrapped.embed_dim, wrapped.num_tokens, wrapped.input_size, wrapped.num_prefix_tokens) == (
        loaded.embed_dim,
        loaded.num_tokens,
        loaded.input_size,
        loaded.num_prefix_tokens,
    )
    torch.testing.assert_close(wrapped.mean, loaded.mean, atol=0, rtol=0)
    torch.testing.assert_close(wrapped.std, loaded.std, atol=0, rtol=0)
    assert not wrapped.training and not any(p.requires_grad for p in wrapped.parameters())
    images = _images()
    torch.testing.assert_close(wrapped(images), loaded(images), atol=0, rtol=0)


def test_from_model_of_a_tiny_dinov2_built_in_memory(tmp_path):
    """A random Dinov2 that never touched the disk: family from its config, ImageNet constants, the same encoder as
    `from_pretrained` of its saved weights; a classification model is reduced to its backbone."""
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**TOWER))
    model.save_pretrained(tmp_path / "saved")
    classifier = transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**TOWER, num_labels=3))
    classifier.dinov2.load_state_dict(model.state_dict())
    encoder = AlignmentEncoder.from_model(model, resolution=RESOLUTION, num_tokens=4)
    assert encoder.model is model and encoder.name == "Dinov2Model"  # wrapped, not copied
    assert model.embeddings.position_embeddings.shape == (1, 1 + 16, 16)  # resampled in place, 6x6 -> 4x4
    torch.testing.assert_close(encoder.mean.flatten(), torch.tensor(IMAGENET[0]))
    reference = AlignmentEncoder.from_pretrained(str(tmp_path / "saved"), resolution=RESOLUTION, num_tokens=4)
    images = _images(seed=3)
    torch.testing.assert_close(encoder(images), reference(images), atol=0, rtol=0)
    backbone = AlignmentEncoder.from_model(classifier, resolution=RESOLUTION, num_tokens=4)
    assert backbone.model is classifier.dinov2
    torch.testing.assert_close(backbone(images), reference(images), atol=0, rtol=0)

    custom = AlignmentEncoder.from_model(
        transformers.Dinov2Model(transformers.Dinov2Config(**TOWER)),
        resolution=RESOLUTION,
        mean=[0.5] * 3,
        std=[0.25] * 3,
    )
    torch.testing.assert_close(custom.std.flatten(), torch.full((3,), 0.25))
    with pytest.raises(ValueError, match="'bert' model, which AlignmentEncoder does not support"):
        AlignmentEncoder.from_model(transformers.BertModel(transformers.BertConfig(**TINY, vocab_size=10)))
    with pytest.raises(ValueError, match="from_pretrained"):
        AlignmentEncoder.from_model("facebook/dinov2-base")


def test_buffers_follow_the_model_device_and_dtype():
    """The normalisation buffers are made on the wrapped model's device, and `.to()` moves them with it."""
    with torch.device("meta"):
        model = transformers.Dinov2Model(transformers.Dinov2Config(**TOWER))
    encoder = AlignmentEncoder.from_model(model, resolution=RESOLUTION)
    assert encoder.mean.device.type == encoder.std.device.type == "meta"
    torch.manual_seed(0)
    encoder = AlignmentEncoder.from_model(
        transformers.Dinov2Model(transformers.Dinov2Config(**TOWER)), resolution=RESOLUTION
    )
    moved = encoder.to("meta")
    assert {buffer.device.type for buffer in moved.buffers()} == {"meta"}
    assert {parameter.device.type for parameter in moved.parameters()} == {"meta"}


def test_forced_input_size_defaults_to_the_official_token_count(model_dirs):
    """`input_size` alone keeps the documented default num_tokens, (resolution / 16) ** 2 (it was the grid of the
    forced input: 64 tokens here, which no SiT/2 at this resolution has)."""
    path = str(model_dirs["dinov2"])
    encoder = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, input_size=32)
    assert (encoder.grid_size, encoder.num_tokens) == (8, 16)
    full = AlignmentEncoder.from_pretrained(path, resolution=RESOLUTION, input_size=32, num_tokens=64)
    torch.testing.assert_close(encoder(_images()), match_tokens(full(_images()), 16))


@pytest.mark.parametrize("num_tokens", [0, -16, True, 16.0, 15])
def test_invalid_num_tokens_are_refused_before_loading(num_tokens, model_dirs, monkeypatch):
    """0 and True were accepted (0 gave empty targets at the first training step); -16 and 16.0 failed in isqrt."""
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *args, **kwargs: pytest.fail("loaded before checking"))
    with pytest.raises(ValueError, match="`num_tokens`"):
        AlignmentEncoder.from_pretrained(str(model_dirs["dinov2"]), resolution=RESOLUTION, num_tokens=num_tokens)
    with pytest.raises(ValueError, match="`num_tokens`"):
        AlignmentEncoder.from_model(
            transformers.Dinov2Model(FAMILIES["dinov2"][1]), resolution=RESOLUTION, num_tokens=num_tokens
        )


def test_autocast_features_are_float32_after_the_final_layer_norm(model_dirs):
    """The documented output dtype: under autocast the final LayerNorm runs in float32."""
    encoder = AlignmentEncoder.from_pretrained(str(model_dirs["dinov2"]), resolution=RESOLUTION)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = encoder(_images())
    assert features.dtype == torch.float32
    torch.testing.assert_close(features, encoder(_images()), atol=0.1, rtol=0.05)


def test_offline_docstring_examples_run():
    """The examples that need no download run as written (the ones loading facebook/dinov2-base need the Hub)."""
    import doctest

    import diffusers_repa.alignment.encoders as module

    names = {"resample_position_embeddings", "match_tokens", "AlignmentEncoder.from_model"}
    tests = [t for t in doctest.DocTestFinder().find(module) if t.name.split("encoders.", 1)[-1] in names]
    assert len(tests) == len(names)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0
