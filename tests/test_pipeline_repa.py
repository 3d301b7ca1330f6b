"""REPAPipeline: parity with the official samplers, labels, input errors, outputs, save/load, conversion."""

import copy
import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from diffusers_repa.convert import main as convert_main
from diffusers_repa.models import SiTTransformer2DModel
from diffusers_repa.pipeline_repa import REPAPipeline, load_imagenet_id2label
from diffusers_repa.schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler
from tests.conftest import OFFICIAL_FIXTURES

# run key -> (scheduler, guidance_scale, guidance_interval), as recorded in fixtures.json
OFFICIAL_RUNS = {
    "ode_euler_cfg": (SiTEulerScheduler(), 1.8, (0.0, 0.7)),
    "ode_heun_cfg": (SiTHeunScheduler(), 1.8, (0.0, 0.7)),
    "ode_euler_nocfg": (SiTEulerScheduler(), 1.0, (0.0, 1.0)),
    "ode_heun_nocfg": (SiTHeunScheduler(), 1.0, (0.0, 1.0)),
    "ode_euler_cfg_full": (SiTEulerScheduler(), 4.0, (0.0, 1.0)),
    "sde_cfg": (SiTEulerMaruyamaScheduler(), 1.8, (0.0, 0.7)),
    "sde_nocfg": (SiTEulerMaruyamaScheduler(), 1.0, (0.0, 1.0)),
    "sde_cfg_cosine": (SiTEulerMaruyamaScheduler(path_type="cosine"), 1.8, (0.0, 0.7)),
}


class CallRecorder:
    """Counts transformer calls and records (batch size, t) per call."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls.append((args[0].shape[0], float(args[1][0])))

    def remove(self):
        self.handle.remove()


def latent_pipeline(transformer, scheduler):
    pipeline = REPAPipeline(transformer, scheduler, latent_scale=1.0)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize("run", list(OFFICIAL_RUNS))
def test_official_sampler_parity(run, repa_tiny_sit, repa_sampler_fixtures):
    scheduler, guidance_scale, interval = OFFICIAL_RUNS[run]
    pipeline = latent_pipeline(repa_tiny_sit, scheduler)
    fixtures = repa_sampler_fixtures
    noise_sampler = (lambda i, sample: fixtures[f"{run}.noises"][i]) if run.startswith("sde") else None
    recorder = CallRecorder(repa_tiny_sit)
    try:
        sample = pipeline(
            fixtures["labels"].tolist(),
            num_inference_steps=8,
            guidance_scale=guidance_scale,
            guidance_interval=interval,
            latents=fixtures["latents"],
            noise_sampler=noise_sampler,
            output_type="latent",
        ).images
    finally:
        recorder.remove()
    assert sample.dtype == torch.float64
    torch.testing.assert_close(sample, fixtures[f"{run}.sample"], atol=1e-5, rtol=1e-5)
    recorded = json.loads((OFFICIAL_FIXTURES / "fixtures.json").read_text())["samplers"]["runs"][run]
    assert [batch for batch, _ in recorder.calls] == recorded["call_batch_sizes"]
    assert [t for _, t in recorder.calls] == pytest.approx(recorded["call_t_float32"], abs=1e-7)


def test_labels(repa_tiny_pipeline):
    pipe = repa_tiny_pipeline
    assert pipe.get_label_ids(["tench", 207, "Golden Retriever", "toilet paper", 1000]) == [0, 207, 207, 999, 1000]
    assert pipe.get_label_ids("goldfish") == [1]
    assert pipe.get_label_ids(torch.tensor([3, 5])) == [3, 5]
    assert pipe.get_label_ids("giant panda") == [388]
    with pytest.raises(ValueError, match="'golden retriever'"):
        pipe.get_label_ids("golden retreiver")
    with pytest.raises(ValueError, match="ambiguous.*134.*517"):
        pipe.get_label_ids("crane")
    for bad in (1001, -1, 2.5, True, [], np.array([1.0]), np.array([[1, 2]])):
        with pytest.raises(ValueError):
            pipe.get_label_ids(bad)
    # NumPy integers and arrays, as `np.random.randint` or a labels column gives them.
    assert pipe.get_label_ids([np.int64(3), np.int32(207)]) == [3, 207]
    assert pipe.get_label_ids(np.int64(5)) == [5]
    assert pipe.get_label_ids(np.arange(3)) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        pipe.get_label_ids([np.int64(-5)])
    assert pipe.config.id2label == load_imagenet_id2label()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"class_labels": "not a class"}, "Unknown class name"),
        ({"class_labels": 1001}, "outside"),
        ({"class_labels": -1}, "outside"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_interval": (0.8, 0.2)}, "guidance_interval"),
        ({"guidance_interval": (-0.1, 0.5)}, "guidance_interval"),
        ({"guidance_interval": (0.0, 1.5)}, "guidance_interval"),
        ({"guidance_interval": (0.5,)}, "guidance_interval"),
        ({"latents": torch.randn(2, 4, 8, 8)}, "latents"),
        ({"latents": torch.randn(1, 4, 4, 4)}, "latents"),
        ({"latents": torch.full((1, 4, 8, 8), float("nan"))}, "NaN or infinite"),
        ({"latents": torch.randn(1, 4, 8, 8).index_fill_(2, torch.tensor([3]), float("inf"))}, "NaN or infinite"),
        ({"latents": torch.ones(1, 4, 8, 8, dtype=torch.long)}, "floating-point"),
        ({"output_type": "jpg"}, "output_type"),
        ({"noise_sampler": lambda i, x: torch.randn(1, 4, 4, 4)}, "noise_sampler"),
        ({"noise_sampler": "randn"}, "noise_sampler"),
        ({"callback_on_step_end_tensor_inputs": ["velocity"]}, "callback_on_step_end_tensor_inputs"),
        # One generator per image: a list of another length was an IndexError (or, with `latents` given, an error
        # from the SDE scheduler's first noise draw, after a model call); a longer list was silently cut.
        ({"generator": [torch.Generator()] * 2}, "list of generators of length 2"),
        ({"generator": [torch.Generator()] * 2, "latents": torch.randn(1, 4, 8, 8)}, "list of generators"),
        ({"generator": 0}, "torch.Generator"),
        ({"callback_on_step_end": "stop"}, "callback_on_step_end"),
        ({"attention_kwargs": {"lora_scale": 0.5}}, "supports only `scale`"),
        ({"attention_kwargs": 0.5}, "attention_kwargs"),
    ],
)
def test_bad_input_raises_before_any_model_call(kwargs, message, repa_tiny_pipeline):
    call = {"class_labels": [3], "num_inference_steps": 2, "output_type": "np", **kwargs}
    recorder = CallRecorder(repa_tiny_pipeline.transformer)
    try:
        with pytest.raises(ValueError, match=message):
            repa_tiny_pipeline(**call)
    finally:
        recorder.remove()
    assert recorder.calls == []


@pytest.mark.parametrize(
    "id2label, key",
    [
        # 1-based ids: "toilet paper" (999) became id 1000, the unconditional class, and sampled without a class.
        ({str(int(k) + 1): v for k, v in load_imagenet_id2label().items()}, "'1000'"),
        ({"-1": "x"}, "'-1'"),
        ({"tench": "0"}, "'tench'"),  # was `invalid literal for int()`
    ],
)
def test_id2label_ids_outside_the_model_classes_are_refused(id2label, key, repa_tiny_sit):
    with pytest.raises(ValueError, match=f"`id2label` must map class ids 0..999 to names, got the key {key}"):
        REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), id2label=id2label)
    assert REPAPipeline(repa_tiny_sit, SiTEulerScheduler(), id2label={5: "b", "7": "c"}).get_label_ids("c") == [7]


def test_a_model_without_the_null_class_refuses_guidance_and_the_null_id_before_any_model_call():
    """A model trained with class_dropout_prob=0 has no row for id num_classes: the default guidance (1.8) and the
    id num_classes were errors from the model after a model call (on CUDA, an out-of-range embedding index)."""
    transformer = SiTTransformer2DModel.from_preset(
        "SiT-S/2", sample_size=4, in_channels=3, num_classes=10, class_dropout_prob=0.0, num_layers=1, alignment_depth=1
    ).eval()
    assert transformer.class_embedder.embedding_table.num_embeddings == 10
    pipeline = latent_pipeline(transformer, SiTEulerScheduler())
    recorder = CallRecorder(transformer)
    try:
        with pytest.raises(ValueError, match="needs the unconditional class, which this model lacks"):
            pipeline([3], num_inference_steps=2, output_type="latent")
        with pytest.raises(ValueError, match=r"Class id 10 is outside \[0, 9\] \(this model, trained without"):
            pipeline([10], num_inference_steps=2, guidance_scale=1.0, output_type="latent")
    finally:
        recorder.remove()
    assert recorder.calls == []
    assert pipeline([9], num_inference_steps=2, guidance_scale=1.0, output_type="latent").images.shape == (1, 3, 4, 4)


def test_a_scheduler_swapped_in_for_a_non_sit_one_is_refused_before_any_model_call(repa_tiny_sit):
    """`pipe.scheduler = X.from_config(pipe.scheduler.config)` (diffusers' idiom) skips `__init__`'s check: a
    diffusers scheduler was an AttributeError ('... has no attribute state_dtype')."""
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerScheduler())
    pipeline.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipeline.scheduler.config)
    recorder = CallRecorder(repa_tiny_sit)
    try:
        with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler is not a SiT scheduler"):
            pipeline([1], num_inference_steps=2, output_type="latent")
    finally:
        recorder.remove()
    assert recorder.calls == []
    with pytest.raises(ValueError, match="not a SiT scheduler"):
        REPAPipeline(repa_tiny_sit, FlowMatchEulerDiscreteScheduler())


def test_pixel_output_needs_a_vae_or_three_channels(repa_tiny_sit):
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerScheduler())
    with pytest.raises(ValueError, match="output_type='latent'"):
        pipeline([1], num_inference_steps=1)


def test_output_types_and_determinism(repa_tiny_pipeline):
    pipe = repa_tiny_pipeline
    call = {"class_labels": ["tench", 3], "num_inference_steps": 3}
    images = pipe(**call, generator=torch.manual_seed(0)).images
    assert all(isinstance(image, PIL.Image.Image) and image.size == (16, 16) for image in images)
    array = pipe(**call, generator=torch.manual_seed(0), output_type="np").images
    assert array.shape == (2, 16, 16, 3) and 0 <= array.min() and array.max() <= 1
    np.testing.assert_array_equal(np.asarray(images[0]), (array[0] * 255).round().astype(np.uint8))
    tensor = pipe(**call, generator=torch.manual_seed(0), output_type="pt").images
    assert tensor.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy(), array, atol=1e-6)
    other = pipe(**call, generator=torch.manual_seed(1), output_type="np").images
    assert np.abs(other - array).max() > 1e-3
    (latents,) = pipe(**call, generator=torch.manual_seed(0), output_type="latent", return_dict=False)
    assert latents.shape == (2, 4, 8, 8)


def test_batch_equals_single_with_per_image_generators(repa_tiny_pipeline):
    pipe = repa_tiny_pipeline
    call = {"num_inference_steps": 4, "output_type": "latent"}
    batch = pipe([3, 512], generator=[torch.Generator().manual_seed(s) for s in (5, 6)], **call).images
    singles = [
        pipe([label], generator=torch.Generator().manual_seed(s), **call).images for label, s in ((3, 5), (512, 6))
    ]
    torch.testing.assert_close(batch, torch.cat(singles), atol=1e-6, rtol=0)


def test_unconditional_label_and_no_guidance_use_one_pass(repa_tiny_pipeline):
    recorder = CallRecorder(repa_tiny_pipeline.transformer)
    try:
        repa_tiny_pipeline([1000, 2], num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    finally:
        recorder.remove()
    assert [batch for batch, _ in recorder.calls] == [2, 2, 2]


def test_callbacks(repa_tiny_pipeline):
    pipe = repa_tiny_pipeline

    def zero_last(pipeline, i, t, kwargs):
        if i == pipeline.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    out = pipe([1], num_inference_steps=3, output_type="latent", callback_on_step_end=zero_last).images
    assert out.abs().sum() == 0

    def raise_guidance(pipeline, i, t, kwargs):
        pipeline._guidance_scale += 1.0
        return kwargs

    pipe([1], num_inference_steps=3, guidance_scale=2.0, output_type="latent", callback_on_step_end=raise_guidance)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps


def test_a_callback_that_returns_nothing_is_named(repa_tiny_pipeline):
    with pytest.raises(ValueError, match="callback_on_step_end` must return a dict.*NoneType at step 0"):
        repa_tiny_pipeline([1], num_inference_steps=2, output_type="latent", callback_on_step_end=lambda *args: None)


def test_samples_in_eval_mode_whatever_mode_it_was_given(repa_tiny_sit, repa_tiny_vae):
    """A model in train mode (fresh from the constructor, from_config or a training EMA) drops labels at random."""
    labels = list(range(32))
    latents = torch.randn(32, 4, 8, 8, generator=torch.manual_seed(0))
    call = {"num_inference_steps": 3, "latents": latents, "output_type": "latent", "guidance_scale": 1.0}
    reference = latent_pipeline(repa_tiny_sit, SiTEulerScheduler())(labels, **call).images
    transformer, vae = copy.deepcopy(repa_tiny_sit).train(), copy.deepcopy(repa_tiny_vae).train()
    transformer.transformer_blocks[0].eval()  # a mixed mode is given back as it was, too
    modes = {name: module.training for name, module in transformer.named_modules()}
    pipe = REPAPipeline(transformer, SiTEulerScheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    for seed in (1, 2):  # label dropout draws from the global generator: two seeds would differ in train mode
        torch.manual_seed(seed)
        torch.testing.assert_close(pipe(labels, **call).images, reference, atol=0, rtol=0)
    pipe([1], num_inference_steps=2, output_type="np")  # through the VAE
    assert {name: module.training for name, module in transformer.named_modules()} == modes
    assert vae.training and all(module.training for module in vae.modules())


@pytest.mark.parametrize("name", ["no_such_pipeline_folder", "no-such-org/no-such-repo"])
def test_a_missing_folder_or_repo_is_one_sentence(name):
    with pytest.raises(ValueError, match=f"There is no folder '{name}'.*not in the local Hub cache"):
        REPAPipeline.from_pretrained(name, local_files_only=True)


def test_low_precision_transformer(repa_tiny_pipeline, repa_tiny_sit):
    reference = repa_tiny_pipeline([3], num_inference_steps=4, generator=torch.manual_seed(0), output_type="latent")
    pipe = REPAPipeline(copy.deepcopy(repa_tiny_sit).to(torch.bfloat16), SiTEulerMaruyamaScheduler())
    pipe.set_progress_bar_config(disable=True)
    out = pipe([3], num_inference_steps=4, generator=torch.manual_seed(0), output_type="latent").images
    assert out.dtype == torch.float64  # the state stays float64 whatever the model dtype
    assert (out - reference.images).abs().max() < 0.25


@pytest.mark.parametrize("scheduler", [SiTHeunScheduler(), SiTEulerScheduler(), SiTEulerMaruyamaScheduler()])
def test_progress_bar_counts_inference_steps_not_model_calls(scheduler, repa_tiny_sit, capsys):
    pipe = REPAPipeline(repa_tiny_sit, scheduler, latent_scale=1.0)
    recorder = CallRecorder(repa_tiny_sit)
    try:
        pipe([3], num_inference_steps=3, output_type="latent")
    finally:
        recorder.remove()
    assert len(recorder.calls) == (5 if isinstance(scheduler, SiTHeunScheduler) else 3)  # Heun: 2N - 1 calls
    bar = capsys.readouterr().err
    assert "3/3" in bar and "4/3" not in bar and "5/" not in bar


def test_save_load_round_trip(repa_tiny_pipeline, repa_tiny_pipeline_dir, tmp_path):
    loaded = REPAPipeline.from_pretrained(repa_tiny_pipeline_dir)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.id2label == repa_tiny_pipeline.config.id2label
    call = {"class_labels": ["tench", 1], "num_inference_steps": 3, "output_type": "np"}
    np.testing.assert_array_equal(
        loaded(**call, generator=torch.manual_seed(0)).images,
        repa_tiny_pipeline(**call, generator=torch.manual_seed(0)).images,
    )
    # per-channel latent statistics (REPA-E style VAEs) and a swapped scheduler persist too
    custom = REPAPipeline(
        **{**loaded.components, "scheduler": SiTHeunScheduler.from_config(loaded.scheduler.config)},
        id2label={0: "zero", 1: "one"},
        latent_scale=[0.5, 1.0, 2.0, 4.0],
        shift_factor=[0.1, 0.0, 0.0, -0.1],
    )
    custom.save_pretrained(tmp_path)
    again = REPAPipeline.from_pretrained(tmp_path)
    assert isinstance(again.scheduler, SiTHeunScheduler)
    assert again.config.latent_scale == [0.5, 1.0, 2.0, 4.0] and again.config.shift_factor == [0.1, 0.0, 0.0, -0.1]
    assert again.get_label_ids(["one", 0]) == [1, 0]


def test_readme_lines_with_a_converted_official_checkpoint(repa_tiny_vae, tmp_path):
    checkpoint = tmp_path / "last.pt"
    torch.save(load_file(OFFICIAL_FIXTURES / "tiny_sit_state_dict.safetensors"), checkpoint)
    repa_tiny_vae.save_pretrained(tmp_path / "vae")
    argv = ["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "pipe"), "--vae", str(tmp_path / "vae")]
    assert convert_main([*argv, "--num_attention_heads", "6", "--alignment_depth", "3"]) == 0
    assert (tmp_path / "pipe" / "projector").is_dir()

    # The three README lines, as written (250 SDE steps, guidance 1.8 on t <= 0.7).
    from diffusers_repa import REPAPipeline as PublicREPAPipeline

    pipe = PublicREPAPipeline.from_pretrained(tmp_path / "pipe")
    image = pipe("golden retriever", generator=torch.manual_seed(0)).images[0]
    assert isinstance(pipe.scheduler, SiTEulerMaruyamaScheduler)
    assert isinstance(image, PIL.Image.Image) and image.size == (16, 16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_generator_and_offload(repa_tiny_pipeline_dir):
    pipe = REPAPipeline.from_pretrained(repa_tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    call = {"class_labels": [3, 7], "num_inference_steps": 4, "output_type": "latent"}
    cpu = pipe(**call, generator=torch.manual_seed(0)).images
    pipe.to("cuda")
    first = pipe(**call, generator=torch.manual_seed(0)).images
    second = pipe(**call, generator=torch.manual_seed(0)).images
    assert torch.equal(first, second)
    torch.testing.assert_close(first.cpu(), cpu, atol=1e-4, rtol=1e-4)
    pipe.to("cpu")
    pipe.enable_model_cpu_offload()
    torch.testing.assert_close(pipe(**call, generator=torch.manual_seed(0)).images.cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_numpy_numbers_are_numbers(repa_tiny_sit):
    """`num_inference_steps=np.int64(2)` (accepted by `set_timesteps`) and NumPy floats in `guidance_interval` were
    refused."""
    pipeline = latent_pipeline(repa_tiny_sit, SiTEulerScheduler())
    call = {"class_labels": [3], "guidance_scale": 2.0, "latents": torch.zeros(1, 4, 8, 8), "output_type": "latent"}
    torch.testing.assert_close(
        pipeline(**call, num_inference_steps=np.int64(2), guidance_interval=(np.float32(0), np.float64(1))).images,
        pipeline(**call, num_inference_steps=2, guidance_interval=(0.0, 1.0)).images,
    )
