# Copyright 2026 The diffusers-repa authors. Licensed under the Apache License, Version 2.0.
"""REPA's alignment metrics: CKNNA against a direct loop implementation, the SiT hidden-state hooks, the linear
probe, and the `evaluate_alignment` CLI end to end on tiny random models."""

import json
import math

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from diffusers_repa import REPAPipeline, SiTEulerScheduler, SiTTransformer2DModel
from diffusers_repa.alignment import (
    AlignmentEncoder,
    LinearProbe,
    alignment_cknna,
    cknna,
    encoder_features,
    linear_probe_accuracy,
    sit_hidden_states,
)
from diffusers_repa.evaluate_alignment import JSON_NAME, PLOT_NAME, main, parse_layers
from diffusers_repa.flow_paths import path_coefficients

# ----------------------------------------------------------------------------------------------------------------------
# CKNNA
# ----------------------------------------------------------------------------------------------------------------------


def _loop_hsic_unbiased(k, l):
    """Song et al. 2012, Eq. 5, written out with explicit sums (diagonals ignored)."""
    n = len(k)
    k = [[0.0 if i == j else k[i][j] for j in range(n)] for i in range(n)]
    l = [[0.0 if i == j else l[i][j] for j in range(n)] for i in range(n)]
    trace = sum(k[i][j] * l[j][i] for i in range(n) for j in range(n))
    sum_k = sum(map(sum, k))
    sum_l = sum(map(sum, l))
    ones_kl_ones = sum(k[i][m] * l[m][j] for i in range(n) for m in range(n) for j in range(n))
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2 * ones_kl_ones / (n - 2)) / (n * (n - 3))


def _loop_hsic_biased(k, l):
    """tr(K H L H) with H = I - 11ᵀ/n, as explicit sums."""
    n = len(k)
    h = [[(1.0 if i == j else 0.0) - 1.0 / n for j in range(n)] for i in range(n)]

    def matmul(a, b):
        return [[sum(a[i][m] * b[m][j] for m in range(n)) for j in range(n)] for i in range(n)]

    product = matmul(matmul(matmul(k, h), l), h)
    return sum(product[i][i] for i in range(n))


def _loop_cknna(a, b, topk, unbiased=True):
    """CKNNA from its definition, one row and one pair at a time (float64 numpy rows, no vectorised kernels)."""
    a = [row / np.sqrt(sum(x * x for x in row)) for row in a]
    b = [row / np.sqrt(sum(x * x for x in row)) for row in b]
    n = len(a)
    k = [[float(sum(a[i] * a[j])) for j in range(n)] for i in range(n)]
    l = [[float(sum(b[i] * b[j])) for j in range(n)] for i in range(n)]

    def neighbours(kernel, i):
        candidates = [j for j in range(n) if not (unbiased and j == i)]
        return set(sorted(candidates, key=lambda j: -kernel[i][j])[:topk])

    nk = [neighbours(k, i) for i in range(n)]
    nl = [neighbours(l, i) for i in range(n)]

    def masked(kernel, keep):
        return [[kernel[i][j] if keep(i, j) else 0.0 for j in range(n)] for i in range(n)]

    hsic = _loop_hsic_unbiased if unbiased else _loop_hsic_biased
    kk = masked(k, lambda i, j: j in nk[i])
    ll = masked(l, lambda i, j: j in nl[i])

    def mutual(i, j):
        return j in nk[i] and j in nl[i]

    return hsic(masked(k, mutual), masked(l, mutual)) / (math.sqrt(hsic(kk, kk) * hsic(ll, ll)) + 1e-6)


def _correlated(n=24, dim_a=6, dim_b=9, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, dim_a))
    b = np.concatenate([a, np.zeros((n, dim_b - dim_a))], axis=1) + noise * rng.standard_normal((n, dim_b))
    return a, b


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("topk", [3, 7])
def test_cknna_equals_direct_loop_implementation(unbiased, topk):
    a, b = _correlated()
    expected = _loop_cknna(a, b, topk, unbiased=unbiased)
    assert cknna(a, b, topk=topk, unbiased=unbiased) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # torch input (float32) gives the same value: computed in float64 from the same numbers
    a32, b32 = torch.from_numpy(a).float(), torch.from_numpy(b).float()
    assert cknna(a32, b32, topk=topk, unbiased=unbiased) == pytest.approx(
        _loop_cknna(a32.double().numpy(), b32.double().numpy(), topk, unbiased), rel=1e-9
    )


def test_cknna_invariances_and_extremes():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 32, generator=generator)
    other = features + 0.7 * torch.randn(300, 32, generator=generator)
    reference = cknna(features, other)
    assert 0.1 < reference < 0.95
    rotation = torch.linalg.qr(torch.randn(32, 32, generator=generator, dtype=torch.float64)).Q
    assert cknna(features.double() @ rotation, other) == pytest.approx(reference, rel=1e-9)
    assert cknna(features, 5.0 * other) == pytest.approx(reference, rel=1e-9)
    per_sample = torch.rand(300, 1, generator=generator) + 0.5  # L2 normalisation removes per-sample scale too
    assert cknna(features * per_sample, other) == pytest.approx(reference, rel=1e-9)
    # nearly symmetric: the k-NN masks make the kernels asymmetric, and 1ᵀK~L~1 differs from 1ᵀL~K~1
    assert cknna(features, other) == pytest.approx(cknna(other, features), rel=1e-3)
    assert cknna(features, features) == pytest.approx(1.0, abs=1e-3)
    assert cknna(features.numpy(), 2.0 * features.numpy() @ rotation.float().numpy()) == pytest.approx(1.0, abs=1e-3)
    independent = torch.randn(300, 48, generator=generator)
    assert abs(cknna(features, independent)) < 0.1
    # without normalisation, scaling one side by a constant still cancels (kernel alignment is scale-free)
    assert cknna(features, 3.0 * other, normalize=False) == pytest.approx(cknna(features, other, normalize=False))


def test_cknna_errors():
    features = np.random.default_rng(0).standard_normal((20, 4))
    with pytest.raises(ValueError, match="NaN or infinite"):
        cknna(np.where(np.eye(20, 4) > 0, np.nan, features), features)
    with pytest.raises(ValueError, match="NaN or infinite"):
        cknna(features, torch.full((20, 4), float("inf")))
    with pytest.raises(ValueError, match="same samples, got 20 and 19"):
        cknna(features, features[:19])
    with pytest.raises(ValueError, match="at least 11 samples, got 10"):
        cknna(features[:10], features[:10], topk=10)
    with pytest.raises(ValueError, match="shape \\(num_samples, dim\\)"):
        cknna(features.reshape(20, 2, 2), features)
    with pytest.raises(ValueError, match="topk"):
        cknna(features, features, topk=1)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        cknna(features.tolist(), features)
    with pytest.raises(ValueError, match="`features_a` is the same for every sample"):
        cknna(np.ones((20, 4)), features)
    with pytest.raises(ValueError, match="`features_b` is the same for every sample after L2"):
        cknna(features, np.arange(1.0, 21.0)[:, None] * np.ones((20, 4)))
    with pytest.raises(ValueError, match="self-alignment HSIC terms are -0.1"):  # only two distinct rows
        cknna(np.array([[1.0], [2.0], [3.0], [4.0], [-1.0]]), features[:5, :3], topk=2)


# ----------------------------------------------------------------------------------------------------------------------
# SiT hidden states
# ----------------------------------------------------------------------------------------------------------------------


def _tiny_sit(seed=0, **overrides):
    """A small SiT with every weight randomised (the default init makes every block the identity)."""
    config = {"sample_size": 8, "patch_size": 2, "in_channels": 4, "num_layers": 4, "num_attention_heads": 2}
    config.update(attention_head_dim=8, num_classes=10, alignment_depth=2)
    config.update(overrides)
    torch.manual_seed(seed)
    model = SiTTransformer2DModel(**config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("path_type", ["linear", "cosine"])
def test_hidden_states_match_the_models_alignment_states_with_null_label(path_type):
    model = _tiny_sit().train()
    sample = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    hidden = sit_hidden_states(model, sample, 0.3, layers=[2, 1, 3], noise=noise, path_type=path_type)
    assert list(hidden) == [1, 2, 3] and hidden[2].shape == (6, model.hidden_size)
    assert model.training  # the mode is restored

    alpha, sigma, _, _ = path_coefficients(path_type, torch.tensor(0.3))
    noisy = alpha * sample + sigma * noise
    model.eval()
    with torch.no_grad():
        null = torch.full((6,), 10)
        expected = model(noisy, torch.full((6,), 0.3), null, output_alignment_states=True).alignment_states
        labelled = model(noisy, torch.full((6,), 0.3), torch.arange(6), output_alignment_states=True)
    torch.testing.assert_close(hidden[2], expected.mean(dim=1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hidden[2], labelled.alignment_states.mean(dim=1), atol=1e-3)  # no label injected
    assert not torch.allclose(hidden[1], hidden[2], atol=1e-3)

    # a generator gives the same noise as drawing it with that generator; results do not depend on batching
    drawn = sit_hidden_states(model, sample, 0.3, [2], generator=torch.Generator().manual_seed(2), path_type=path_type)
    batched = sit_hidden_states(
        model, sample, 0.3, [2], generator=torch.Generator().manual_seed(2), path_type=path_type, batch_size=4
    )
    torch.testing.assert_close(drawn[2], hidden[2])
    torch.testing.assert_close(batched[2], hidden[2])


def test_hidden_states_skip_blocks_after_the_deepest_layer():
    model = _tiny_sit()
    calls = []
    handle = model.transformer_blocks[3].register_forward_hook(lambda *args: calls.append(1))
    sit_hidden_states(model, torch.randn(2, 4, 8, 8), 0.5, layers=2)
    assert calls == []
    sit_hidden_states(model, torch.randn(2, 4, 8, 8), 0.5, layers=4)
    assert calls == [1]
    handle.remove()
    assert not model.transformer_blocks[1]._forward_hooks  # hooks removed


def test_hidden_states_of_a_wrapped_model():
    model = _tiny_sit()
    wrapper = torch.nn.Module()
    wrapper.module = model  # how DDP (accelerate.prepare) holds the model
    sample, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    expected = sit_hidden_states(model, sample, 0.4, [3], noise=noise)[3]
    torch.testing.assert_close(sit_hidden_states(wrapper, sample, 0.4, [3], noise=noise)[3], expected)


def test_hidden_states_errors():
    model = _tiny_sit()
    sample = torch.randn(2, 4, 8, 8)
    with pytest.raises(ValueError, match="in \\[1, 4\\]"):
        sit_hidden_states(model, sample, 0.5, layers=[0])
    with pytest.raises(ValueError, match="in \\[1, 4\\]"):
        sit_hidden_states(model, sample, 0.5, layers=[5])
    with pytest.raises(ValueError, match="flow time"):
        sit_hidden_states(model, sample, 1.5, layers=[1])
    with pytest.raises(ValueError, match="shape \\(N, 4, 8, 8\\)"):
        sit_hidden_states(model, torch.randn(2, 3, 8, 8), 0.5, layers=[1])
    with pytest.raises(ValueError, match="shape of `sample`"):
        sit_hidden_states(model, sample, 0.5, layers=[1], noise=torch.randn(3, 4, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        sit_hidden_states(model, sample * float("nan"), 0.5, layers=[1])
    with pytest.raises(ValueError, match="path_type"):
        sit_hidden_states(model, sample, 0.5, layers=[1], path_type="vp")
    with pytest.raises(ValueError, match="no null class"):
        sit_hidden_states(_tiny_sit(class_dropout_prob=0.0), sample, 0.5, layers=[1])
    with pytest.raises(TypeError, match="transformer_blocks"):
        sit_hidden_states(torch.nn.Linear(2, 2), sample, 0.5, layers=[1])


def test_alignment_cknna_uses_the_alignment_layer():
    model = _tiny_sit()
    sample = torch.randn(40, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(40, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    hidden = sit_hidden_states(model, sample, 0.25, layers=[2], noise=noise)[2]
    tokens = hidden[:, None, :].expand(40, 16, -1) + 0.3 * torch.randn(40, 16, hidden.shape[1])
    value = alignment_cknna(model, sample, tokens, timestep=0.25, noise=noise, topk=5)
    assert value == pytest.approx(cknna(hidden, tokens.mean(dim=1), topk=5), rel=1e-9)
    assert value > 0.5
    assert alignment_cknna(model, sample, tokens, layer=4, timestep=0.25, noise=noise, topk=5) != pytest.approx(value)
    with pytest.raises(ValueError, match="same images"):
        alignment_cknna(model, sample, tokens[:39], noise=noise)
    with pytest.raises(ValueError, match="more than 10 images"):
        alignment_cknna(model, sample[:10], tokens[:10])


def test_encoder_features_mean_pool_tokens(tmp_path):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4
    )
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    encoder = AlignmentEncoder.from_pretrained(str(tmp_path), resolution=16, num_tokens=16)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    pooled = encoder_features(encoder, images, batch_size=2)
    torch.testing.assert_close(pooled, encoder(images).float().mean(dim=1))
    with pytest.raises(ValueError, match="non-empty"):
        encoder_features(encoder, images[:0])


# ----------------------------------------------------------------------------------------------------------------------
# Linear probe
# ----------------------------------------------------------------------------------------------------------------------


def _planted(num_samples=1000, dim=16, num_classes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_samples, dim, generator=generator)
    labels = (features @ torch.randn(dim, num_classes, generator=generator)).argmax(dim=1)
    return 4.0 * features + 3.0, labels  # scaled and shifted: BatchNorm handles it


def test_linear_probe_recovers_a_planted_linear_signal():
    features, labels = _planted()
    accuracy = linear_probe_accuracy(features[:800], labels[:800], features[800:], labels[800:], seed=0)
    assert accuracy > 0.9
    # numpy input, fixed seed: the same number
    again = linear_probe_accuracy(
        features[:800].numpy(), labels[:800].numpy(), features[800:].numpy(), labels[800:].numpy(), seed=0
    )
    assert again == accuracy


def test_linear_probe_is_at_chance_on_random_labels():
    features, _ = _planted()
    labels = torch.randint(0, 4, (1000,), generator=torch.Generator().manual_seed(5))
    accuracy = linear_probe_accuracy(features[:800], labels[:800], features[800:], labels[800:])
    assert 0.12 < accuracy < 0.38  # chance 0.25; 200 test samples


def test_linear_probe_module_and_errors():
    probe = LinearProbe(8, 3)
    assert not probe.norm.affine and probe.norm.eps == 1e-6
    assert probe(torch.randn(4, 8)).shape == (4, 3)
    features, labels = _planted(num_samples=40)
    with pytest.raises(ValueError, match="same width"):
        linear_probe_accuracy(features, labels, features[:, :8], labels)
    with pytest.raises(ValueError, match="integer class ids"):
        linear_probe_accuracy(features, labels.float(), features, labels)
    with pytest.raises(ValueError, match="one class id per feature row"):
        linear_probe_accuracy(features, labels[:30], features, labels)
    with pytest.raises(ValueError, match="in \\[0, 2\\)"):
        linear_probe_accuracy(features, labels, features, labels, num_classes=2)
    with pytest.raises(ValueError, match="NaN"):
        linear_probe_accuracy(features * float("nan"), labels, features, labels)
    with pytest.raises(ValueError, match="at least 2 training"):
        linear_probe_accuracy(features[:1], labels[:1], features, labels)


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------

COLORS = [(220, 40, 40), (40, 200, 60), (50, 60, 230)]


def _write_image_folder(root, per_class=12, side=16):
    """Three classes of noisy solid-colour images, one sub-folder each (an `imagefolder` dataset)."""
    rng = np.random.default_rng(0)
    for label, color in enumerate(COLORS):
        (root / f"class_{label}").mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{label}" / f"{index}.png")


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, repa_tiny_vae):
    root = tmp_path_factory.mktemp("evaluate_alignment")
    # pixel-space SiT on 16x16 RGB, patch 4: 16 tokens; saved as a pipeline folder
    transformer = _tiny_sit(sample_size=16, patch_size=4, in_channels=3, num_classes=3, alignment_depth=2)
    REPAPipeline(transformer, SiTEulerScheduler(path_type="cosine"), latent_scale=1.0).save_pretrained(root / "pixel")
    # tiny DINOv2 (patch 4): 16 tokens at 16 px
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16, patch_size=4
    )
    transformers.Dinov2Model(config).save_pretrained(root / "encoder")
    _write_image_folder(root / "images")
    # latent SiT (8x8x4, patch 2: 16 tokens) with the tiny VAE (16x16x3 <-> 8x8x4)
    latent = _tiny_sit(num_classes=3, alignment_depth=3)
    REPAPipeline(latent, SiTEulerScheduler(), vae=repa_tiny_vae).save_pretrained(root / "latent")
    latent.save_pretrained(root / "latent_transformer_only")
    return root


def _run(cli_setup, tmp_path, *extra, model="pixel"):
    output_dir = tmp_path / "out"
    argv = [
        "--pretrained_model_name_or_path", str(cli_setup / model), "--encoder", str(cli_setup / "encoder"),
        "--train_data_dir", str(cli_setup / "images"), "--num_images", "30", "--topk", "5", "--timestep", "0.2",
        "--probe_epochs", "30", "--output_dir", str(output_dir), "--device", "cpu", *extra,
    ]  # fmt: skip
    return main(argv), output_dir


def test_cli_end_to_end_pixel_space(cli_setup, tmp_path, capsys):
    code, output_dir = _run(cli_setup, tmp_path, "--batch_size", "7")
    assert code == 0
    printed = capsys.readouterr().out
    assert "layer" in printed and "CKNNA" in printed and "probe acc" in printed and "2*" in printed
    results = json.loads((output_dir / JSON_NAME).read_text())
    assert [row["layer"] for row in results["layers"]] == [1, 2, 3, 4]
    assert results["path_type"] == "cosine" and results["input"] == "pixels" and results["alignment_depth"] == 2
    assert results["probe"]["num_train"] == 24 and results["probe"]["num_test"] == 6
    for row in results["layers"]:
        assert -1.0 <= row["cknna"] <= 1.0 + 1e-9 and 0.0 <= row["probe_accuracy"] <= 1.0
        assert f"{row['cknna']:.4f}" in printed
    # the colours separate the classes: the encoder's and the first layer's features are linearly decodable
    assert results["encoder_probe_accuracy"] >= 0.8 and results["layers"][0]["probe_accuracy"] >= 0.8
    with Image.open(output_dir / PLOT_NAME) as plot:
        assert plot.format == "PNG" and plot.size[0] > 200

    # the same numbers with another batch size (per-image noise) and a layer subset
    code, again = _run(cli_setup, tmp_path / "again", "--batch_size", "30", "--layers", "2-3")
    assert code == 0
    rows = json.loads((again / JSON_NAME).read_text())["layers"]
    assert [row["layer"] for row in rows] == [2, 3]
    for row, reference in zip(rows, results["layers"][1:3]):
        assert row["cknna"] == pytest.approx(reference["cknna"], rel=1e-6)
        assert row["probe_accuracy"] == pytest.approx(reference["probe_accuracy"], abs=1 / 6 + 1e-6)


def test_cli_without_encoder_runs_only_the_probe(cli_setup, tmp_path, capsys):
    output_dir = tmp_path / "out"
    argv = [
        "--pretrained_model_name_or_path", str(cli_setup / "pixel" / "transformer"), "--train_data_dir",
        str(cli_setup / "images"), "--num_images", "20", "--topk", "5", "--layers", "1", "--probe_epochs", "5",
        "--output_dir", str(output_dir), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((output_dir / JSON_NAME).read_text())
    assert results["encoder"] is None and results["encoder_probe_accuracy"] is None
    assert results["layers"][0]["cknna"] is None and 0.0 <= results["layers"][0]["probe_accuracy"] <= 1.0
    assert results["path_type"] == "linear"  # a transformer folder alone: no scheduler, the default path
    assert "-" in capsys.readouterr().out.splitlines()[1]
    assert (output_dir / PLOT_NAME).is_file()


def test_cli_latent_model_through_the_pipelines_vae(cli_setup, tmp_path):
    code, output_dir = _run(cli_setup, tmp_path, model="latent")
    assert code == 0
    results = json.loads((output_dir / JSON_NAME).read_text())
    assert results["input"] == "vae" and results["resolution"] == 16 and len(results["layers"]) == 4


def test_cli_prepared_latents_dataset(cli_setup, tmp_path):
    datasets = pytest.importorskip("datasets")
    # the prepare_latents.py layout: image (PNG crops), label, moments = cat([mean, std])
    rng = np.random.default_rng(0)
    images, labels = [], []
    for label, color in enumerate(COLORS):
        for _ in range(10):
            pixels = np.clip(np.array(color) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    moments = np.concatenate([rng.standard_normal((30, 4, 8, 8)), np.full((30, 4, 8, 8), 0.1)], axis=1)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["r", "g", "b"]),
            "moments": datasets.Array3D((8, 8, 8), "float32"),
        }
    )
    data_dir = tmp_path / "prepared"
    (data_dir / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(
        {"image": images, "label": labels, "moments": moments.astype(np.float32)}, features=features
    ).to_parquet(str(data_dir / "data" / "train-00000.parquet"))
    output_dir = tmp_path / "out"
    argv = [
        "--pretrained_model_name_or_path", str(cli_setup / "latent_transformer_only"),
        "--encoder", str(cli_setup / "encoder"), "--dataset_name", str(data_dir), "--num_images", "30",
        "--topk", "5", "--layers", "3", "--probe_epochs", "5", "--output_dir", str(output_dir), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((output_dir / JSON_NAME).read_text())
    assert results["input"] == "moments" and [row["layer"] for row in results["layers"]] == [3]


def test_cli_errors(cli_setup, tmp_path, capsys):
    assert parse_layers("1,3-5") == [1, 3, 4, 5] and parse_layers("all") is None
    code, output_dir = _run(cli_setup, tmp_path, "--layers", "1,9")
    assert code == 2 and "--layers must be block indices in [1, 4]" in capsys.readouterr().err
    assert not output_dir.exists()  # refused before any work
    code, _ = _run(cli_setup, tmp_path, "--num_images", "40")
    assert code == 2 and "has 36 images, fewer than --num_images 40" in capsys.readouterr().err
    code, _ = _run(cli_setup, tmp_path, model="latent_transformer_only")
    assert code == 2 and "prepare_latents.py output" in capsys.readouterr().err
    code, _ = _run(cli_setup, tmp_path, model="missing")
    assert code == 2 and "could not be fetched" in capsys.readouterr().err
    for bad in (["--timestep", "1.5"], ["--num_images", "5"], ["--probe_test_fraction", "0"], ["--layers", "x"]):
        with pytest.raises(SystemExit):
            _run(cli_setup, tmp_path, *bad)
