"""REPAPipeline as diffusers users expect it (issue 9): loading only what a pipeline needs from a Hub repo that also
holds training checkpoints, sampling from a model in memory in one call, `labels`, `do_classifier_free_guidance`,
`attention_kwargs`, latent scaling defaults and names, the SDE noise path (`generator` / `variance_noise`)."""

import copy
import fnmatch
import json
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers.training_utils import EMAModel
from diffusers.utils.torch_utils import randn_tensor

from diffusers_repa import (
    REPAPipeline,
    SiTEulerMaruyamaScheduler,
    SiTEulerScheduler,
    SiTHeunScheduler,
    SiTTransformer2DModel,
    pipeline_repa,
)
from diffusers_repa.pipeline_repa import HUB_CHECKPOINTS_FOLDER, select_pipeline_files
from tests.conftest import make_tiny_vae
from tests.test_hub_loading import lay_out_hub_cache

PIPELINE_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
FP16_FILES = [name.replace(".safetensors", ".fp16.safetensors") for name in PIPELINE_FILES]
CALL = {"class_labels": ["tench", 3], "num_inference_steps": 3, "output_type": "np"}


# ----------------------------------------------------------------------------------------------------------------------
# 1. Loading from the Hub: only what model_index.json names
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_repo(repa_tiny_pipeline, tmp_path_factory) -> Path:
    """A model repo as a training run pushes it: the pipeline (plus an fp16 variant), the projector, training
    checkpoints both where the trainer pushes them now (`checkpoints/checkpoint-N/`) and at the root (older repos),
    validation samples, logs and the card."""
    folder = tmp_path_factory.mktemp("training_repo")
    repa_tiny_pipeline.save_pretrained(folder)
    repa_tiny_pipeline.save_pretrained(folder, variant="fp16")
    (folder / "projector").mkdir()
    (folder / "projector" / "config.json").write_text("{}")
    (folder / "projector" / "diffusion_pytorch_model.safetensors").write_bytes(b"projector weights")
    for checkpoint in (f"{HUB_CHECKPOINTS_FOLDER}/checkpoint-4", "checkpoint-2"):
        for name in (
            "optimizer.bin",
            "scheduler.bin",
            "model.safetensors",
            "random_states_0.pkl",
            "training_state.json",
            "transformer_ema/config.json",
            "transformer_ema/diffusion_pytorch_model.safetensors",
        ):
            path = folder / checkpoint / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{checkpoint}/{name}".encode())
    (folder / "samples").mkdir()
    (folder / "samples" / "step_2.png").write_bytes(b"png")
    (folder / "logs").mkdir()
    (folder / "logs" / "events.out.tfevents").write_bytes(b"events")
    (folder / "README.md").write_text("card")
    (folder / "training_args.json").write_text("{}")
    return folder


def repo_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def reference_images(repa_tiny_pipeline):
    return repa_tiny_pipeline(**CALL, generator=torch.manual_seed(0)).images


class RecordingSnapshotDownload:
    """Wraps `snapshot_download` in `pipeline_repa` and records the `allow_patterns` of each call."""

    def __init__(self, monkeypatch, replacement=None):
        self.calls = []
        self.replacement = replacement or pipeline_repa.snapshot_download
        monkeypatch.setattr(pipeline_repa, "snapshot_download", self)

    def __call__(self, repo_id, **kwargs):
        self.calls.append(kwargs)
        return self.replacement(repo_id, **kwargs)

    def selected(self, files: list[str]) -> list[str]:
        (call,) = self.calls
        return sorted(name for name in files if any(fnmatch.fnmatchcase(name, p) for p in call["allow_patterns"]))


def test_offline_hub_cache_of_a_training_repo_loads_only_the_pipeline_files(
    training_repo, reference_images, tmp_path, monkeypatch
):
    cache = tmp_path / "hub"
    lay_out_hub_cache(training_repo, cache, "org/trained")
    files = repo_files(training_repo)
    assert any(name.startswith(f"{HUB_CHECKPOINTS_FOLDER}/checkpoint-4/") for name in files)

    for variant, expected in ((None, PIPELINE_FILES), ("fp16", FP16_FILES)):
        recorder = RecordingSnapshotDownload(monkeypatch)
        pipe = REPAPipeline.from_pretrained("org/trained", cache_dir=cache, local_files_only=True, variant=variant)
        assert recorder.selected(files) == sorted(expected)  # no checkpoint, projector, sample, log or card file
        pipe.set_progress_bar_config(disable=True)
        np.testing.assert_array_equal(pipe(**CALL, generator=torch.manual_seed(0)).images, reference_images)


def test_download_fetches_only_what_model_index_names(training_repo, reference_images, tmp_path, monkeypatch):
    """The online path, simulated: the repo listing comes from `model_info`, and a fake `snapshot_download` copies
    the files its `allow_patterns` select, as the real one downloads them. Checkpoints never reach the disk."""
    files = repo_files(training_repo)
    info = SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in files])
    monkeypatch.setattr(pipeline_repa, "model_info", lambda repo_id, **kwargs: info)
    monkeypatch.setattr(pipeline_repa, "hf_hub_download", lambda repo_id, name, **kwargs: str(training_repo / name))
    downloads = tmp_path / "downloads"

    def fake_snapshot_download(repo_id, allow_patterns, **kwargs):
        target = downloads / f"{len(list(downloads.glob('*'))) if downloads.exists() else 0}"
        for name in files:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in allow_patterns):
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(training_repo / name, target / name)
        return str(target)

    recorder = RecordingSnapshotDownload(monkeypatch, fake_snapshot_download)
    pipe = REPAPipeline.from_pretrained("org/trained")
    (folder,) = downloads.iterdir()
    assert repo_files(folder) == PIPELINE_FILES
    assert not recorder.calls[0]["local_files_only"]
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(pipe(**CALL, generator=torch.manual_seed(0)).images, reference_images)

    # A component passed in is not downloaded; .bin weights only when safetensors are refused.
    shutil.rmtree(downloads)
    REPAPipeline.from_pretrained("org/trained", vae=make_tiny_vae())
    (folder,) = downloads.iterdir()
    assert repo_files(folder) == [name for name in PIPELINE_FILES if not name.startswith("vae/")]


def test_select_pipeline_files_weights_code_and_errors():
    index = {
        "_class_name": ["pipeline_repa", "REPAPipeline"],
        "transformer": ["sit_transformer_2d", "SiTTransformer2DModel"],
        "scheduler": ["scheduling_sit_euler", "SiTEulerScheduler"],
        "vae": [None, None],
    }
    files = [
        "model_index.json",
        "pipeline_repa.py",
        "scheduler/scheduler_config.json",
        "scheduler/scheduling_sit_euler.py",
        "transformer/config.json",
        "transformer/sit_transformer_2d.py",
        "transformer/diffusion_pytorch_model.bin",
        "transformer/diffusion_pytorch_model.safetensors",
        "transformer/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.fp16.json",
        "vae/config.json",  # the index says no VAE
        "checkpoints/checkpoint-10/optimizer.bin",
        "checkpoint-5/model.safetensors",
    ]
    base = ["model_index.json", "scheduler/scheduler_config.json", "transformer/config.json"]
    assert select_pipeline_files(index, files) == sorted([*base, "transformer/diffusion_pytorch_model.safetensors"])
    assert select_pipeline_files(index, files, use_safetensors=False) == sorted(
        [*base, "transformer/diffusion_pytorch_model.bin"]
    )
    assert select_pipeline_files(index, files, variant="fp16") == sorted(
        [*base, *(name for name in files if "fp16" in name)]
    )
    assert select_pipeline_files(index, files, include_code=True) == sorted(
        [
            *base,
            "pipeline_repa.py",
            "scheduler/scheduling_sit_euler.py",
            "transformer/sit_transformer_2d.py",
            "transformer/diffusion_pytorch_model.safetensors",
        ]
    )
    assert select_pipeline_files(index, files, skip_components=["transformer"]) == [
        "model_index.json",
        "scheduler/scheduler_config.json",
    ]
    bin_only = [name for name in files if not name.endswith("safetensors")]
    assert "transformer/diffusion_pytorch_model.bin" in select_pipeline_files(index, bin_only)
    with pytest.raises(ValueError, match="use_safetensors=True"):
        select_pipeline_files(index, bin_only, use_safetensors=True)
    with pytest.raises(ValueError, match="variant=bf16"):
        select_pipeline_files(index, files, variant="bf16")


def test_a_repo_without_model_index_is_not_a_pipeline_repo(tmp_path):
    folder = tmp_path / "bare"
    SiTTransformer2DModel(
        sample_size=4, patch_size=2, num_layers=1, num_attention_heads=1, attention_head_dim=8, alignment_depth=1
    ).save_pretrained(folder)
    cache = tmp_path / "hub"
    lay_out_hub_cache(folder, cache, "org/bare")
    with pytest.raises(ValueError, match="no model_index.json, so it is not a pipeline repo"):
        REPAPipeline.from_pretrained("org/bare", cache_dir=cache, local_files_only=True)


# ----------------------------------------------------------------------------------------------------------------------
# 2. A model in memory, one call
# ----------------------------------------------------------------------------------------------------------------------


def tiny_pixel_sit(**overrides) -> SiTTransformer2DModel:
    torch.manual_seed(0)
    config = {"sample_size": 8, "patch_size": 2, "in_channels": 3, "num_layers": 2, "num_attention_heads": 2}
    config.update(attention_head_dim=8, num_classes=10, alignment_depth=1, **overrides)
    model = SiTTransformer2DModel.from_preset("SiT-S/2", **config)
    with torch.no_grad():  # not the zero-gated initialisation, under which the blocks do not reach the output
        for parameter in model.parameters():
            parameter.copy_(0.2 * torch.randn_like(parameter))
    return model


def test_training_ema_in_memory_samples_in_one_call_in_eval_mode():
    model = tiny_pixel_sit()
    ema = EMAModel(model.parameters(), decay=0.9, min_decay=0.9)
    for _ in range(2):  # a few "training" updates
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        ema.step(model.parameters())
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model.parameters())
    assert ema_model.training  # as the trainer holds it

    pipe = REPAPipeline(transformer=ema_model, scheduler=SiTEulerScheduler())  # no VAE: a pixel-space model
    pipe.set_progress_bar_config(disable=True)
    labels, call = list(range(10)) * 2, {"num_inference_steps": 4, "output_type": "np"}
    images = pipe(labels, generator=torch.manual_seed(0), **call).images
    assert images.shape == (20, 8, 8, 3) and ema_model.training  # its mode is given back

    reference = copy.deepcopy(ema_model).eval()
    ref_pipe = REPAPipeline(transformer=reference, scheduler=SiTEulerScheduler(), latent_scale=1.0, shift_factor=0.0)
    ref_pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(1)  # label dropout (train mode) would draw from the global generator
    np.testing.assert_array_equal(images, ref_pipe(labels, generator=torch.manual_seed(0), **call).images)
    # pixel space: the image is the final sample mapped from [-1, 1] to [0, 1]
    latents = ref_pipe(labels, generator=torch.manual_seed(0), num_inference_steps=4, output_type="latent").images
    np.testing.assert_allclose(images, (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy(), atol=1e-6)

    with pytest.raises(ValueError, match="ema.copy_to"):
        REPAPipeline(transformer=ema, scheduler=SiTEulerScheduler())


def test_a_wrapped_model_is_unwrapped():
    model = tiny_pixel_sit()
    pipe = REPAPipeline(transformer=torch.nn.DataParallel(model), scheduler=SiTEulerScheduler())
    assert pipe.transformer is model


def test_latent_scale_and_shift_default_from_the_vae(repa_tiny_sit):
    vae = make_tiny_vae()
    pipe = REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), vae=vae)
    assert (pipe.config.latent_scale, pipe.config.shift_factor) == (vae.config.scaling_factor, 0.0) == (0.18215, 0.0)

    shifted = make_tiny_vae()
    shifted.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    decoded = []
    shifted.decode = lambda latents, **kwargs: decoded.append(latents) or (torch.zeros(len(latents), 3, 16, 16),)
    pipe = REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), vae=shifted)
    pipe.set_progress_bar_config(disable=True)
    assert (pipe.config.latent_scale, pipe.config.shift_factor) == (0.5, 0.25)
    final = pipe([1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="latent").images
    pipe([1], num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt")
    torch.testing.assert_close(decoded[0], (final / 0.5 + 0.25).float())  # diffusers: x / scaling + shift

    # no VAE: nothing stored, decoded with scale 1 and shift 0 (pixels); a VAE added at load time is used
    bare = REPAPipeline(repa_tiny_sit, SiTEulerScheduler())
    assert bare.config.latent_scale is None and bare.config.shift_factor is None


def test_a_pipeline_saved_without_vae_takes_the_scale_of_a_vae_given_at_load(repa_tiny_sit, tmp_path):
    REPAPipeline(repa_tiny_sit, SiTEulerScheduler()).save_pretrained(tmp_path)
    vae = make_tiny_vae()
    vae.register_to_config(scaling_factor=0.5)
    loaded = REPAPipeline.from_pretrained(tmp_path, vae=vae)
    assert loaded.config.latent_scale == 0.5


# ----------------------------------------------------------------------------------------------------------------------
# 4. Conventions of DiTPipeline and the flow-matching pipelines
# ----------------------------------------------------------------------------------------------------------------------


def test_labels_map_every_unambiguous_name_to_its_id(repa_tiny_pipeline):
    labels = repa_tiny_pipeline.labels
    assert labels["tench"] == labels["Tinca tinca"] == 0 and labels["golden retriever"] == 207
    assert "crane" not in labels  # two classes (134, 517) are called crane
    assert list(labels) == sorted(labels)
    sample = list(labels.items())[::50]
    assert repa_tiny_pipeline.get_label_ids([name for name, _ in sample]) == [i for _, i in sample]
    assert REPAPipeline(tiny_pixel_sit(), SiTEulerScheduler(), id2label={0: "zero, nil", 1: "one"}).labels == {
        "nil": 0,
        "one": 1,
        "zero": 0,
    }


def test_do_classifier_free_guidance_and_attention_kwargs_during_a_call(repa_tiny_pipeline):
    pipe, seen, calls = repa_tiny_pipeline, [], []

    def record(pipeline, i, t, tensors):
        seen.append((pipeline.do_classifier_free_guidance, pipeline.attention_kwargs))
        return tensors

    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["attention_kwargs"]), with_kwargs=True
    )
    try:
        pipe([1], num_inference_steps=2, guidance_scale=1.8, output_type="latent", callback_on_step_end=record)
        pipe([1], num_inference_steps=2, guidance_scale=1.0, attention_kwargs={"scale": 0.5}, output_type="latent",
             callback_on_step_end=record)  # fmt: skip
    finally:
        handle.remove()
    assert seen == [(True, None)] * 2 + [(False, {"scale": 0.5})] * 2
    assert calls == [None, None, {"scale": 0.5}, {"scale": 0.5}]


def test_attention_kwargs_scale_a_lora_adapter_per_call():
    from peft import LoraConfig

    model = tiny_pixel_sit().eval()
    pipe = REPAPipeline(transformer=copy.deepcopy(model), scheduler=SiTEulerScheduler())
    pipe.set_progress_bar_config(disable=True)
    call = {"class_labels": [1, 2], "num_inference_steps": 2, "output_type": "latent"}
    base = pipe(**call, generator=torch.manual_seed(0)).images
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.transformer.add_adapter(lora)
    full = pipe(**call, generator=torch.manual_seed(0)).images
    off = pipe(**call, generator=torch.manual_seed(0), attention_kwargs={"scale": 0.0}).images
    half = pipe(**call, generator=torch.manual_seed(0), attention_kwargs={"scale": 0.5}).images
    assert (full - base).abs().max() > 1e-3
    torch.testing.assert_close(off, base, atol=1e-6, rtol=0)
    assert 0 < (half - base).abs().max() < (full - base).abs().max()
    torch.testing.assert_close(pipe(**call, generator=torch.manual_seed(0)).images, full)  # scale restored
    with pytest.raises(ValueError, match="supports only `scale`"):
        pipe(**call, attention_kwargs={"scale": 1.0, "mask": None})


class StepSpy:
    """Records the keyword arguments of every `scheduler.step` call."""

    def __init__(self, scheduler):
        self.kwargs, self.step = [], scheduler.step
        self.__wrapped__ = scheduler.step  # `inspect.signature` sees the step's parameters
        scheduler.step = self

    def __call__(self, *args, **kwargs):
        self.kwargs.append(sorted(kwargs))
        return self.step(*args, **kwargs)


def test_sde_noise_is_drawn_by_the_scheduler_from_the_generator(repa_tiny_sit):
    """Exact mode hands `generator` to `scheduler.step`, which draws the noise; a `noise_sampler` hands its noise over
    as `variance_noise`. Drawing the same numbers through a noise sampler gives the same sample, bit for bit."""
    pipe = REPAPipeline(repa_tiny_sit, SiTEulerMaruyamaScheduler(), latent_scale=1.0)
    pipe.set_progress_bar_config(disable=True)
    spy = StepSpy(pipe.scheduler)
    call = {"class_labels": [3, 5], "num_inference_steps": 4, "output_type": "latent"}
    drawn = pipe(**call, generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    assert spy.kwargs == [["generator", "return_dict"]] * 4

    spy.kwargs.clear()
    replay_generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    latents = randn_tensor((2, 4, 8, 8), generator=replay_generators, dtype=torch.float32)
    replay = pipe(
        **call,
        latents=latents,
        noise_sampler=lambda i, x: randn_tensor(x.shape, generator=replay_generators, dtype=x.dtype),
    ).images
    assert spy.kwargs == [["return_dict", "variance_noise"]] * 3 + [["generator", "return_dict"]]
    assert torch.equal(replay, drawn)

    for scheduler in (SiTEulerScheduler(), SiTHeunScheduler()):  # deterministic schedulers get no generator
        pipe.scheduler = scheduler
        spy = StepSpy(scheduler)
        pipe(**call, generator=torch.manual_seed(0))
        assert all(kwargs == ["return_dict"] for kwargs in spy.kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# 5. latent_shift -> shift_factor
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale, latent_shift", [(0.5, 0.25), ([0.5, 1.0, 2.0, 4.0], [0.25, 0.0, -1.0, 2.0])])
def test_deprecated_latent_shift_is_converted_to_shift_factor(repa_tiny_sit, scale, latent_shift):
    with pytest.warns(FutureWarning, match="shift_factor=-latent_shift / latent_scale"):
        old = REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), latent_scale=scale, latent_shift=latent_shift)
    expected = [-s / c if s else 0.0 for s, c in zip(np.broadcast_to(latent_shift, 4), np.broadcast_to(scale, 4))]
    assert np.allclose(old.config.shift_factor, expected if isinstance(scale, list) else expected[0])
    assert "latent_shift" not in old.config
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    channel = torch.tensor(np.broadcast_to(scale, 4).tolist(), dtype=torch.float64).view(1, -1, 1, 1)
    shift = torch.tensor(np.broadcast_to(latent_shift, 4).tolist(), dtype=torch.float64).view(1, -1, 1, 1)
    torch.testing.assert_close(old._unscale_latents(x), (x - shift) / channel)  # the old decoding, unchanged
    with pytest.raises(ValueError, match="not both"):
        REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), latent_shift=latent_shift, shift_factor=0.1)


def test_saved_pipelines_with_latent_shift_still_load(repa_tiny_pipeline, tmp_path):
    repa_tiny_pipeline.save_pretrained(tmp_path)
    index_file = tmp_path / "model_index.json"
    index = json.loads(index_file.read_text())
    del index["shift_factor"]
    for latent_shift, shift_factor in ((0.0, 0.0), (0.18215, -1.0)):  # as an older version wrote it
        index_file.write_text(json.dumps({**index, "latent_shift": latent_shift}))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = REPAPipeline.from_pretrained(tmp_path)
        deprecations = [w for w in caught if issubclass(w.category, FutureWarning) and "latent_shift" in str(w.message)]
        assert len(deprecations) == (1 if latent_shift else 0)  # a zero shift means the same in both conventions
        assert loaded.config.shift_factor == pytest.approx(shift_factor)


def test_evaluate_alignment_reads_shift_factor_and_the_old_latent_shift(repa_tiny_sit, tmp_path):
    """`evaluate_alignment` encodes training latents as `z * scale + latent_shift`: from a new folder's `shift_factor`
    (`latent_shift = -shift_factor * scale`) and from an old folder's `latent_shift` as stored."""
    from diffusers_repa.evaluate_alignment import load_model, parse_args

    pipe = REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), latent_scale=0.5, shift_factor=-0.5)
    pipe.save_pretrained(tmp_path / "new")
    argv = ["--pretrained_model_name_or_path", str(tmp_path / "new"), "--train_data_dir", str(tmp_path)]
    _, info = load_model(parse_args(argv))
    assert (info["latent_scale"], info["latent_shift"]) == (0.5, 0.25)

    index_file = tmp_path / "new" / "model_index.json"
    index = json.loads(index_file.read_text())
    del index["shift_factor"]
    index_file.write_text(json.dumps({**index, "latent_shift": 0.75}))
    _, info = load_model(parse_args(argv))
    assert (info["latent_scale"], info["latent_shift"]) == (0.5, 0.75)


# ----------------------------------------------------------------------------------------------------------------------
# 6. CLI vocabulary (sample and convert: tests/test_sample.py, tests/test_convert.py)
# ----------------------------------------------------------------------------------------------------------------------


def test_evaluate_reference_takes_dataset_split_like_the_trainer():
    from diffusers_repa.evaluate import parse_reference_args

    common = ["--source", "data", "--output", "ref.npz", "--resolution", "32"]
    new = parse_reference_args([*common, "--dataset_split", "test"])
    assert new.dataset_split == "test" and vars(new) == vars(parse_reference_args([*common, "--split", "test"]))
