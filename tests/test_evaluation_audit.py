"""Regression tests from an audit of the evaluation code: bad options refused before any work, silent wrong results
turned into errors or warnings, the FID monitor's handling of ADM reference files and of empty per-process shares."""

import argparse
import warnings

import numpy as np
import pytest
import torch

from diffusers_repa.alignment import linear_probe_accuracy, pool_tokens
from diffusers_repa.evaluate_alignment import parse_layers
from diffusers_repa.evaluation import (
    EVALUATE_METRIC_PATH,
    FeatureNetwork,
    FIDInceptionV3,
    ReferenceBatch,
    build_reference_batch,
    compute_activations,
    evaluate_samples,
    feature_statistics,
    frechet_distance,
    inception_score,
    precision_recall,
)
from diffusers_repa.evaluation import batches as batches_module
from diffusers_repa.evaluation import metrics as metrics_module
from diffusers_repa.evaluation.batches import (
    cached_pool_features,
    check_statistics,
    features_name,
    statistics_match,
)
from diffusers_repa.evaluation.inception import check_images
from diffusers_repa.evaluation.monitor import MONITORED_METRICS, CKNNAProbe, FIDMonitor, reference_cache_path

from .test_evaluation import TinyNetwork, random_images


class TinyInception(FIDInceptionV3):
    """Counts as the FID Inception (for ADM reference files) but computes TinyNetwork's 8-d / 6-d features."""

    input_size, pool_dim, spatial_dim = 16, 8, 6

    def __init__(self):
        FeatureNetwork.__init__(self)
        self.tiny = TinyNetwork()
        self.logits_weight = None
        self._feature_id = self.name = "tiny-inception"

    def forward(self, images: torch.Tensor):
        return self.tiny(images)


def adm_style_reference(images: np.ndarray) -> ReferenceBatch:
    """Statistics that no network computed from `images` (as ADM's, of the whole training set), no `network`."""
    rng = np.random.default_rng(5)
    return ReferenceBatch(images, rng.normal(size=8), np.eye(8) * 0.3, rng.normal(size=6), np.eye(6) * 0.2)


# ---------------------------------------------------------------------------------------------------- evaluate_samples


@pytest.mark.parametrize(
    "option, message",
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": -2}, "k must be an integer >= 1"),
        ({"distance_dtype": "bfloat16"}, "distance_dtype must be one of"),
        ({"split_size": 0}, "split_size must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"resize": "bicubic"}, "resize must be one of"),
    ],
)
def test_evaluate_samples_refuses_bad_options_before_running_the_network(monkeypatch, option, message):
    monkeypatch.setattr(batches_module, "compute_activations", lambda *a, **k: pytest.fail("the network ran"))
    images = random_images(8)
    with pytest.raises(ValueError, match=message):
        evaluate_samples(images, images, network=TinyNetwork(with_logits=True), progress=False, **option)


def test_evaluate_samples_warns_when_samples_and_reference_resolutions_differ():
    network, reference = TinyNetwork(), random_images(10, size=12, seed=1)
    with pytest.warns(UserWarning, match="samples are 8x8 but the reference images are 12x12"):
        evaluate_samples(random_images(10, size=8), reference, network=network, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_samples(random_images(10, size=12), reference, network=network, progress=False)


def test_reference_statistics_record_the_resize_mode():
    network, images, samples = TinyNetwork(), random_images(12, size=10, seed=1), random_images(12, size=10, seed=2)
    tf1 = build_reference_batch(images, network=network, progress=False)
    made_with_torch = build_reference_batch(images, network=network, progress=False, resize="torch")
    assert tf1.network == features_name(network) == network.feature_id
    assert made_with_torch.network == features_name(network, "torch") == f"{network.feature_id}; resize torch"
    assert statistics_match(made_with_torch, network, "torch") and not statistics_match(made_with_torch, network)
    direct = evaluate_samples(samples, images, network=network, progress=False, resize="torch")
    stored = evaluate_samples(samples, made_with_torch, network=network, progress=False, resize="torch")
    assert stored["reference_statistics"] == "stored" and stored["fid"] == pytest.approx(direct["fid"], rel=1e-6)
    # Evaluating with the default resize does not mix in statistics made with the other one.
    with pytest.warns(UserWarning, match="recomputing"):
        mixed = evaluate_samples(samples, made_with_torch, network=network, progress=False)
    assert mixed["reference_statistics"] == "computed"
    assert mixed["fid"] == pytest.approx(evaluate_samples(samples, images, network=network, progress=False)["fid"])


def test_statistics_match_and_cached_pool_features():
    images = random_images(6)
    adm = adm_style_reference(images)
    assert statistics_match(adm, TinyInception()) and not statistics_match(adm, TinyInception(), "torch")
    assert not statistics_match(adm, TinyNetwork())  # an ADM file's statistics are the Inception's only
    assert not statistics_match(ReferenceBatch(images), TinyInception())  # no statistics at all
    assert cached_pool_features(adm, TinyInception()) is None
    pool = np.zeros((6, 8), np.float32)
    assert cached_pool_features(ReferenceBatch(images, pool_features=pool), TinyNetwork()) is pool
    assert cached_pool_features(ReferenceBatch(images, pool_features=pool[:5]), TinyNetwork()) is None


def test_compute_activations_after_tf32_was_set_with_the_new_fp32_precision_api():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    seen = []

    class Recording(TinyNetwork):
        def forward(self, images):
            seen.append((matmul.fp32_precision, conv.fp32_precision))
            return super().forward(images)

    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"  # e.g. a notebook's setting; torch.backends.*.allow_tf32
        acts = compute_activations(random_images(3), Recording(), progress=False)  # now raises when read
        assert seen == [("ieee", "ieee")] and (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        np.testing.assert_allclose(acts.pool, compute_activations(random_images(3), TinyNetwork(), progress=False).pool)
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


# ---------------------------------------------------------------------------------------------------- FID monitor


def test_monitor_uses_the_stored_statistics_of_an_adm_reference():
    network, images = TinyInception(), random_images(10, size=16, seed=1)
    adm = adm_style_reference(images)
    monitor = FIDMonitor(adm, network, num_samples=4, num_classes=2)
    np.testing.assert_array_equal(monitor.reference.mu, adm.mu)  # not recomputed from the 10 images
    np.testing.assert_array_equal(monitor.reference.sigma_s, adm.sigma_s)
    assert monitor.reference.network is None and monitor.reference.pool_features.shape == (10, 8)  # computed once
    samples = random_images(6, size=16, seed=2)
    expected = evaluate_samples(samples, adm, network=network, progress=False)
    assert expected["reference_statistics"] == "stored"
    assert monitor.evaluate(samples) == {name: pytest.approx(expected[name]) for name in MONITORED_METRICS}


def test_monitor_evaluate_ignores_the_empty_share_of_a_process_without_samples():
    network, images = TinyNetwork(), random_images(12, size=16, seed=1)
    monitor = FIDMonitor(build_reference_batch(images, network=network, progress=False), network, 5, 3)
    samples = random_images(5, size=16, seed=2)
    # 5 samples on 4 processes: shares of 2, 2, 1 and none (`FIDMonitor.sample` returns a (0, 1, 1, 3) array).
    shares = [samples[:2], samples[2:4], samples[4:], np.zeros((0, 1, 1, 3), np.uint8)]
    assert monitor.evaluate(shares) == monitor.evaluate(samples)


def test_cknna_probe_checks_its_batch_when_built():
    CKNNAProbe(torch.zeros(11, 4, 8, 8), torch.zeros(11, 4, 16))
    with pytest.raises(ValueError, match="more than 10 images"):
        CKNNAProbe(torch.zeros(10, 4, 8, 8), torch.zeros(10, 4, 16))
    with pytest.raises(ValueError, match="12 images and 11 feature rows"):
        CKNNAProbe(torch.zeros(12, 4, 8, 8), torch.zeros(11, 4, 16))


# ---------------------------------------------------------------------------------------------------- metrics


def test_inception_score_warns_about_an_uneven_last_chunk():
    probs = np.eye(5)[[0, 1, 2, 3, 4, 0, 1]]  # chunks of 5 distinct classes (IS 5) and of 2 (IS 2)
    with pytest.warns(UserWarning, match="last one of 2"):
        assert inception_score(probs, split_size=5) == pytest.approx(3.5)  # the ADM's unweighted mean
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert inception_score(np.eye(5)[[0, 1, 2, 3, 4] * 2], split_size=5) == pytest.approx(5.0)
        # One chunk: the mean KL of certain predictions is -mean log(marginal), marginals 2/7 (x 4 rows), 1/7 (x 3).
        assert inception_score(probs, split_size=50) == pytest.approx(np.exp((4 * np.log(3.5) + 3 * np.log(7)) / 7))


def test_frechet_distance_raises_instead_of_returning_nan(monkeypatch):
    monkeypatch.setattr(metrics_module, "_sqrtm", lambda matrix: np.full_like(matrix, np.nan))
    with pytest.warns(UserWarning, match="adding 1e-06"), pytest.raises(ValueError, match="not finite"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_features_without_dimensions_are_refused():
    empty = np.zeros((6, 0))
    with pytest.raises(ValueError, match="feature_dim >= 1"):
        feature_statistics(empty)
    with pytest.raises(ValueError, match="feature_dim >= 1"):
        precision_recall(empty, empty)
    with pytest.raises(ValueError, match="feature_dim >= 1"):
        precision_recall(torch.zeros(6, 0), torch.zeros(6, 0))


def test_precision_recall_progress_bar(capsys):
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 4)), rng.normal(size=(20, 4))
    quiet = precision_recall(real, fake, block_size=8, progress=False)
    assert "distance blocks" not in capsys.readouterr().err
    assert precision_recall(real, fake, block_size=8) == quiet
    bar = capsys.readouterr().err
    assert "Precision/recall distance blocks" in bar and "/37 " in bar  # 4 x 4 + 3 x 3 + 3 x 4 blocks


# ---------------------------------------------------------------------------------------------------- alignment CLI


def test_parse_layers_refuses_a_descending_range():
    assert parse_layers("2-4,7") == [2, 3, 4, 7]
    with pytest.raises(argparse.ArgumentTypeError, match="ranges ascending"):
        parse_layers("5-2")


def test_pool_tokens():
    tokens = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    torch.testing.assert_close(pool_tokens(tokens), tokens.float().mean(dim=1))
    assert pool_tokens(tokens[:, 0]).dtype == torch.float32 and pool_tokens(tokens[:, 0]).shape == (3, 4)
    with pytest.raises(ValueError, match=r"\(batch, tokens, dim\) or \(batch, dim\)"):
        pool_tokens(torch.zeros(2, 3, 4, 5))


def test_check_statistics():
    check_statistics(None, None, None, None)  # none: fine
    check_statistics(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="contains NaN or inf"):
        check_statistics(np.zeros(3), np.full((3, 3), np.nan), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="2048 / 2023"):
        check_statistics(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2), dims=(2048, 2023))


def test_reference_cache_path_is_one_file_per_setting(tmp_path):
    path = reference_cache_path(tmp_path, "some/dataset", 32, "test", None, None)
    assert path.parent == tmp_path and path.name.startswith("fid_reference-") and path.suffix == ".npz"
    assert reference_cache_path(tmp_path, "some/dataset", 32, "test", None, None) == path
    others = [("other/dataset", 32, "test", None, None), ("some/dataset", 64, "test", None, None),
              ("some/dataset", 32, "train", None, None), ("some/dataset", 32, "test", 100, 0)]  # fmt: skip
    assert len({reference_cache_path(tmp_path, *setting) for setting in others} | {path}) == 5


def test_evaluate_module_features_config_is_quiet_by_default(capsys):
    import evaluate  # only here: about 1.6 s to import

    rng = np.random.default_rng(0)
    metric = evaluate.load(EVALUATE_METRIC_PATH, config_name="features")
    capsys.readouterr()
    metric.compute(predictions=rng.normal(size=(12, 3)), references=rng.normal(size=(12, 3)))
    assert "distance blocks" not in capsys.readouterr().err


def test_image_layout_hints():
    with pytest.raises(ValueError, match=r"one \(H, W, 3\) image: add a batch axis"):
        check_images(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="Grayscale images must be repeated"):
        check_images(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="transpose to channels-last"):
        check_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_linear_probe_progress_bar(capsys):
    features = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    labels = (features[:, 0] > 0).long()
    quiet = linear_probe_accuracy(features[:30], labels[:30], features[30:], labels[30:], epochs=3)
    assert "Linear probe epochs" not in capsys.readouterr().err
    shown = linear_probe_accuracy(features[:30], labels[:30], features[30:], labels[30:], epochs=3, show_progress=True)
    assert "Linear probe epochs" in capsys.readouterr().err and shown == quiet  # the bar changes nothing else
