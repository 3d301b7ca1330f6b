"""FID and CKNNA while training (`train_repa.py --fid_steps/--cknna_steps`, `diffusers_repa.evaluation.monitor`),
with the tiny injected feature network of the evaluation tests standing in for the Inception (loaded once, counted).

One trainer run (module fixture): 4 steps, FID and CKNNA every 2 steps against a reference built from the workspace's
image folder and cached in the output folder. The samples of each FID are recorded to check that they are the fixed
class-balanced set, drawn from the EMA weights in eval mode.
"""

import json
import types

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusers_repa import REPAPipeline, SiTEulerScheduler, SiTTransformer2DModel
from diffusers_repa.evaluation import build_reference_batch, evaluate_samples, monitor
from diffusers_repa.evaluation.monitor import MONITORED_METRICS, CKNNAProbe, FIDMonitor
from diffusers_repa.training_utils import TrainingEvaluation

from .test_evaluation import TinyNetwork
from .train_fixtures import build_workspace, latent_args, run_training

FID_ARGS = [
    "--max_train_steps", "4", "--checkpointing_steps", "4", "--fid_steps", "2", "--fid_num_samples", "6",
    "--fid_num_inference_steps", "2", "--fid_batch_size", "4", "--cknna_steps", "2", "--cknna_num_images", "12",
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("train_fid"))


class Recorder:
    """Counts feature-network loads and records each FID's samples and the model's mode while they are drawn."""

    def __init__(self, patch: pytest.MonkeyPatch):
        self.loads, self.samples, self.modes = 0, [], []
        original_sample, original_evaluate = FIDMonitor.sample, FIDMonitor.evaluate

        def load_inception(device=None):
            self.loads += 1
            return TinyNetwork()

        def sample(monitor_self, pipeline, *args, **kwargs):
            self.modes.append(pipeline.transformer.training)
            return original_sample(monitor_self, pipeline, *args, **kwargs)

        def evaluate(monitor_self, images):
            self.samples.append(np.concatenate(list(images)) if not isinstance(images, np.ndarray) else images)
            return original_evaluate(monitor_self, images)

        patch.setattr(monitor, "load_inception", load_inception)
        patch.setattr(FIDMonitor, "sample", sample)
        patch.setattr(FIDMonitor, "evaluate", evaluate)


@pytest.fixture(scope="module")
def run(workspace):
    output = workspace.root / "run"
    with pytest.MonkeyPatch.context() as patch:
        recorder = Recorder(patch)
        run_training(latent_args(workspace, output, *FID_ARGS, "--fid_reference", str(workspace.images)))
    return types.SimpleNamespace(output=output, recorder=recorder)


def test_fid_and_cknna_are_logged_recorded_and_in_the_model_card(run):
    document = json.loads((run.output / "eval_metrics.json").read_text())
    assert [entry["step"] for entry in document["history"]] == [2, 4]
    for entry in document["history"]:
        assert set(entry) == {"step", "cknna", *MONITORED_METRICS}
        assert entry["fid"] >= 0 and 0 <= entry["precision"] <= 1 and 0 <= entry["recall"] <= 1
        assert -1 <= entry["cknna"] <= 1
    assert document["final"] == document["history"][-1]
    assert "6 class-balanced samples (2 Euler ODE steps, no guidance" in document["description"]
    assert "tiny-test-network" in document["description"]
    assert (
        "CKNNA (top-10) between the SiT's mean-pooled hidden states after the alignment layer"
        in document["description"]
    )
    assert "of 12 fixed training images" in document["description"]

    events = EventAccumulator(str(run.output / "logs" / "repa")).Reload()
    for tag in ("fid", "sfid", "precision", "recall", "cknna"):
        assert [(event.step, event.value) for event in events.Scalars(tag)] == [
            (entry["step"], pytest.approx(entry[tag], rel=1e-6)) for entry in document["history"]
        ], tag

    card = ModelCard.load(run.output / "README.md").text
    assert "## Evaluation" in card and document["description"] in card
    assert f"| fid | {document['final']['fid']:.4g} |" in card and "| step | 4 |" in card
    # The architecture line describes the model trained (a 2-block cut of SiT-S/4), not the preset's name.
    assert "| `architecture` | `SiT (2 blocks, width 32, 2 heads, patch 4)` |" in card
    assert "SiT-S/4" not in card


def test_inception_loads_once_and_fid_samples_are_the_fixed_set_from_the_ema_in_eval_mode(run):
    assert run.recorder.loads == 1
    assert run.recorder.modes == [False, False]  # eval mode: no label dropout while sampling
    first, last = run.recorder.samples
    assert first.shape == last.shape == (6, 32, 32, 3) and first.dtype == np.uint8
    assert not np.array_equal(first, last)  # the weights changed between steps 2 and 4

    # The final pipeline holds the step-4 EMA weights: the monitor's fixed labels and noise reproduce the samples.
    pipeline = REPAPipeline.from_pretrained(run.output)
    pipeline.scheduler = SiTEulerScheduler.from_config(pipeline.scheduler.config)
    sampler = FIDMonitor(None, None, num_samples=6, num_classes=3, num_inference_steps=2, batch_size=4)
    assert sampler.labels.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(sampler.sample(pipeline), last)
    # Shares of two processes concatenate to the same set.
    shares = [sampler.sample(pipeline, rank, 2) for rank in range(2)]
    np.testing.assert_array_equal(np.concatenate(shares), last)


def test_reference_is_cached_in_the_output_folder_and_reused(run, workspace, tmp_path, monkeypatch):
    (cached,) = run.output.glob("fid_reference-*.npz")
    expected = build_reference_batch(str(workspace.images), resolution=32, network=TinyNetwork(), progress=False)
    with np.load(cached) as stored:
        np.testing.assert_array_equal(stored["arr_0"], expected.images)
        np.testing.assert_allclose(stored["mu"], expected.mu, rtol=1e-6)

    monkeypatch.setattr(monitor, "load_inception", lambda device=None: TinyNetwork())
    monkeypatch.setattr(monitor, "build_reference_batch", lambda *a, **k: pytest.fail("the reference was rebuilt"))
    again = FIDMonitor.from_source(
        str(workspace.images), cache_dir=run.output, resolution=32, split="train", num_images=None,
        reference_seed=None, num_classes=3, num_samples=6,
    )  # fmt: skip
    assert again.reference.network == TinyNetwork().feature_id and len(again.reference) == 24


def test_a_resumed_run_keeps_the_history_up_to_its_step(run, workspace, tmp_path, monkeypatch):
    output = tmp_path / "resumed"
    monkeypatch.setattr(monitor, "load_inception", lambda device=None: TinyNetwork())
    args = latent_args(workspace, output, *FID_ARGS, "--fid_reference", str(workspace.images))
    args[args.index("--checkpointing_steps") + 1] = "2"
    run_training(args + ["--max_train_steps", "2"])
    run_training(args + ["--resume_from_checkpoint", "latest"])
    resumed = json.loads((output / "eval_metrics.json").read_text())
    uninterrupted = json.loads((run.output / "eval_metrics.json").read_text())
    assert [entry["step"] for entry in resumed["history"]] == [2, 4]
    for got, want in zip(resumed["history"], uninterrupted["history"], strict=True):
        assert got == pytest.approx(want, rel=1e-5)


def test_monitor_uses_an_adm_reference_as_it_is_and_checks_its_inputs(tmp_path, workspace):
    network = TinyNetwork()
    reference = tmp_path / "ref.npz"
    build_reference_batch(str(workspace.images), reference, resolution=32, network=network, progress=False)
    fid = FIDMonitor.from_source(str(reference), num_classes=3, num_samples=4, network=network)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    expected = evaluate_samples(images, str(reference), network=network, progress=False)
    assert fid.evaluate(images) == {name: pytest.approx(expected[name]) for name in MONITORED_METRICS}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FIDMonitor.from_source(str(tmp_path / "missing.npz"), num_classes=3, num_samples=4, network=network)
    with pytest.raises(ValueError, match="at least 4"):
        FIDMonitor(None, None, num_samples=3, num_classes=3)
    with pytest.raises(ValueError, match="only samples"):
        FIDMonitor(None, None, num_samples=4, num_classes=3).evaluate(images)


def test_cknna_probe_is_deterministic_and_restores_the_mode():
    torch.manual_seed(0)
    model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=16, num_classes=3, alignment_depth=2,
                                              num_layers=2, num_attention_heads=2, attention_head_dim=16)  # fmt: skip
    sample, features = torch.randn(16, 4, 16, 16), torch.randn(16, 4, 8)
    probe = CKNNAProbe(sample, features, seed=3, batch_size=5)
    model.train()
    value = probe(model)
    assert model.training and -1 <= value <= 1 and probe(model) == value


def test_evaluation_cadence_and_the_final_one():
    evaluation = TrainingEvaluation(fid_steps=3, cknna_steps=2)
    assert (
        evaluation.due(6) == (True, True) and evaluation.due(4) == (False, True) and evaluation.due(5) == (False,) * 2
    )
    assert evaluation.due(5, final=True) == (True, True)  # nothing measured at the last step yet
    evaluation._ran.add((5, "fid"))
    assert evaluation.due(5, final=True) == (False, True)
    assert TrainingEvaluation().due(5, final=True) == (False, False)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--fid_steps", "10"], "--fid_steps needs --fid_reference"),
        (["--cknna_steps", "10", "--proj_coeff", "0"], "--cknna_steps .* needs --proj_coeff > 0"),
        (["--fid_num_samples", "3"], "--fid_num_samples must be at least 4"),
        (["--cknna_num_images", "10"], "--cknna_num_images must be more than 10"),
        (["--fid_steps", "-1"], "--fid_steps must be >= 0"),
        (["--logging_steps", "0"], "--logging_steps must be a positive integer"),
    ],
)
def test_bad_evaluation_options_are_refused_at_parse_time(flags, message, capsys):
    import re

    from .train_fixtures import training_module

    with pytest.raises(SystemExit):
        training_module("train_repa").parse_args(["--train_data_dir", "images", *flags])
    assert re.search(message, capsys.readouterr().err)


def test_a_finished_run_resumed_at_its_last_step_is_not_evaluated_again(run, tmp_path):
    evaluation = TrainingEvaluation(fid_steps=2, cknna_steps=2, path=run.output / "eval_metrics.json")
    evaluation.resume(4)
    assert [entry["step"] for entry in evaluation.history] == [2, 4]
    assert evaluation.due(4, final=True) == (False, False)
    evaluation.resume(3)  # resumed from an earlier step: the later entries are dropped, step 4 is measured again
    assert [entry["step"] for entry in evaluation.history] == [2] and evaluation.due(4, final=True) == (True, True)
