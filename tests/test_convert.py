"""The official-checkpoint converter: formats, inference of the config, strictness, safety, the reverse direction."""

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffusers_repa import REPAProjector, SiTTransformer2DModel
from diffusers_repa.convert import (
    CheckpointError,
    convert_official_state_dict,
    diffusers_to_official_state_dict,
    load_official_checkpoint,
    main,
)

from .reference_sit import reference_forward

FIXTURES = Path(__file__).parent / "fixtures" / "official-repa"


@pytest.fixture(scope="module")
def official():
    return load_file(FIXTURES / "tiny_sit_state_dict.safetensors"), load_file(FIXTURES / "tiny_sit_forward.safetensors")


def training_checkpoint(state_dict, **args):
    ema = {key: value + 0.0 for key, value in state_dict.items()}
    raw = {key: value * 1.5 if key.startswith("blocks.0.mlp") else value for key, value in state_dict.items()}
    namespace = argparse.Namespace(model="SiT-custom", encoder_depth=3, resolution=64, proj_coeff=0.5, **args)
    return {"model": raw, "ema": ema, "opt": {"state": {}, "param_groups": []}, "args": namespace, "steps": 400000}


def test_flat_state_dict_converts_and_matches(official):
    sd, fw = official
    transformer, projector = convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)
    assert transformer.config.num_classes == 1000 and transformer.config.sample_size == 8
    assert projector.config.z_dims == [24] and projector.config.projector_dim == 40
    with torch.no_grad():
        out = transformer(fw["x"], fw["t"], fw["y"], output_alignment_states=True)
    torch.testing.assert_close(out.sample, fw["out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(projector(out.alignment_states)[0], fw["zs_0"], atol=1e-5, rtol=1e-5)


def test_cli_converts_a_training_checkpoint_with_pickled_args(official, tmp_path, capsys):
    sd, fw = official
    path = tmp_path / "0400000.pt"
    torch.save(training_checkpoint(sd), path)
    out_dir = tmp_path / "converted"
    assert main(["--checkpoint", str(path), "--output_dir", str(out_dir), "--num_attention_heads", "6"]) == 0
    assert "transformer" in capsys.readouterr().out
    assert (out_dir / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    assert (out_dir / "projector" / "diffusion_pytorch_model.safetensors").exists()
    transformer = SiTTransformer2DModel.from_pretrained(out_dir / "transformer").eval()
    assert transformer.config.alignment_depth == 3  # from the checkpoint's args.encoder_depth
    # The EMA weights are taken by default; they equal the fixture here.
    with torch.no_grad():
        torch.testing.assert_close(transformer(fw["x"], fw["t"], fw["y"]).sample, fw["out"], atol=1e-5, rtol=1e-5)
    REPAProjector.from_pretrained(out_dir / "projector")
    # The inference model carries no projector weights.
    assert not any(
        "projector" in key for key in load_file(out_dir / "transformer" / "diffusion_pytorch_model.safetensors")
    )


def test_use_raw_takes_the_online_weights(official):
    sd, _ = official
    checkpoint = training_checkpoint(sd)
    ema_model, _ = convert_official_state_dict(checkpoint, num_attention_heads=6)
    raw_model, _ = convert_official_state_dict(checkpoint, use_raw=True, num_attention_heads=6)
    key = "transformer_blocks.0.ff.net.0.proj.weight"
    torch.testing.assert_close(raw_model.state_dict()[key], ema_model.state_dict()[key] * 1.5)


def test_heads_come_from_args_model_name(official):
    sd, _ = official
    # A hidden width of 96 matches no preset; an args.model naming a preset supplies the heads.
    checkpoint = training_checkpoint(sd)
    checkpoint["args"].model = "SiT-S/2"  # 6 heads
    transformer, _ = convert_official_state_dict(checkpoint)
    assert transformer.config.num_attention_heads == 6 and transformer.config.attention_head_dim == 16


def test_overrides_that_contradict_the_training_args_are_refused(official):
    """Heads are not in the weights' shapes: 12 heads over SiT-S/2's weights converted without complaint into another
    model; an alignment depth other than the run's --encoder-depth moved the projector's layer."""
    sd, _ = official
    checkpoint = training_checkpoint(sd)
    checkpoint["args"].model = "SiT-S/2"  # 6 heads; encoder_depth 3
    with pytest.raises(CheckpointError, match=r"`num_attention_heads=12` contradicts .*num_attention_heads 6"):
        convert_official_state_dict(checkpoint, num_attention_heads=12)
    with pytest.raises(CheckpointError, match=r"`alignment_depth=2` contradicts .*--encoder-depth"):
        convert_official_state_dict(checkpoint, alignment_depth=2)
    transformer, _ = convert_official_state_dict(checkpoint, num_attention_heads=6, alignment_depth=3)  # agreeing
    assert (transformer.config.num_attention_heads, transformer.config.alignment_depth) == (6, 3)


def test_sit_xl_2_manifest_converts_completely_on_meta():
    manifest = json.loads((FIXTURES / "sit_xl_2_manifest.json").read_text())
    sd = {entry["key"]: torch.empty(entry["shape"], device="meta") for entry in manifest["keys"]}
    assert len(sd) == 298
    # Like the released last.pt: a flat dict with no args; 16 heads and depth 8 are inferred.
    transformer, projector = convert_official_state_dict(sd)
    assert transformer.config.num_attention_heads == 16 and transformer.config.attention_head_dim == 72
    assert transformer.config.alignment_depth == 8 and transformer.config.num_layers == 28
    assert transformer.config.sample_size == 32 and transformer.config.num_classes == 1000
    assert transformer.num_parameters() == manifest["trainable_params_without_projectors"]
    assert (
        transformer.num_parameters() + projector.num_parameters() + manifest["pos_embed_params"]
        == manifest["total_params"]
    )
    back = diffusers_to_official_state_dict(transformer, projector)
    assert {k: tuple(v.shape) for k, v in back.items()} == {e["key"]: tuple(e["shape"]) for e in manifest["keys"]}


def test_reverse_conversion_reproduces_the_official_state_dict(official):
    sd, fw = official
    transformer, projector = convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)
    back = diffusers_to_official_state_dict(transformer, projector)
    assert set(back) == set(sd)
    for key, value in sd.items():
        if key == "pos_embed":  # recomputed in float32 (the official computes in float64)
            torch.testing.assert_close(back[key], value, atol=1e-6, rtol=0)
        else:
            assert torch.equal(back[key], value), key
    # The official maths on the reversed weights gives the official outputs.
    out, zs = reference_forward(back, fw["x"], fw["t"], fw["y"], heads=6, encoder_depth=3)
    torch.testing.assert_close(out, fw["out"], atol=1e-5, rtol=1e-5)


def test_cli_to_official(official, tmp_path):
    sd, _ = official
    transformer, projector = convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)
    transformer.save_pretrained(tmp_path / "model" / "transformer")
    projector.save_pretrained(tmp_path / "model" / "projector")
    model = str(tmp_path / "model")
    assert main(["--to_official", "--pretrained_model_name_or_path", model, "--output", str(tmp_path / "last.pt")]) == 0
    back = torch.load(tmp_path / "last.pt", weights_only=True)
    assert set(back) == set(sd)
    # the old flag name still works; without projector/ only the SiT keys are written
    (tmp_path / "bare").mkdir()
    transformer.save_pretrained(tmp_path / "bare" / "transformer")
    assert main(["--to_official", "--model_dir", str(tmp_path / "bare"), "--output", str(tmp_path / "bare.pt")]) == 0
    bare = torch.load(tmp_path / "bare.pt", weights_only=True)
    assert set(bare) == {key for key in sd if not key.startswith("projectors.")}
    for key in bare:
        torch.testing.assert_close(bare[key], back[key], atol=0, rtol=0)


def test_cli_to_official_without_a_transformer_is_one_sentence(tmp_path, capsys):
    argv = ["--to_official", "--pretrained_model_name_or_path", str(tmp_path), "--output", str(tmp_path / "x.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pretrained_model_name_or_path") and "no SiT transformer" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.pt").exists()


class TestMalformedCheckpoints:
    def test_a_file_that_is_not_a_checkpoint(self, tmp_path):
        path = tmp_path / "notes.pt"
        path.write_text("these are not weights")
        with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
            load_official_checkpoint(path)
        assert main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        assert not (tmp_path / "out").exists()

    def test_a_missing_file(self, tmp_path):
        with pytest.raises(CheckpointError, match="No checkpoint file"):
            load_official_checkpoint(tmp_path / "absent.pt")

    def test_missing_keys_are_listed(self, official):
        sd = dict(official[0])
        del sd["blocks.1.mlp.fc2.bias"]
        with pytest.raises(CheckpointError, match=r"missing \['transformer_blocks.1.ff.net.2.bias'\]"):
            convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)

    def test_unknown_keys_are_listed(self, official):
        sd = dict(official[0])
        sd["blocks.0.attn.extra.weight"] = torch.zeros(1)
        sd["decoder_blocks.0.weight"] = torch.zeros(1)
        with pytest.raises(CheckpointError, match="blocks.0.attn.extra.weight.*decoder_blocks.0.weight"):
            convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)

    def test_wrong_shapes_are_listed(self, official):
        sd = dict(official[0])
        sd["blocks.2.mlp.fc1.weight"] = torch.zeros(100, 96)
        with pytest.raises(CheckpointError, match=r"wrong shapes.*transformer_blocks.2.ff.net.0.proj.weight"):
            convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)

    def test_incomplete_projector(self, official):
        sd = dict(official[0])
        del sd["projectors.0.4.bias"]
        with pytest.raises(CheckpointError, match="Incomplete projector 0"):
            convert_official_state_dict(sd, num_attention_heads=6, alignment_depth=3)

    def test_alignment_depth_that_does_not_fit(self, official):
        with pytest.raises(CheckpointError, match="--alignment_depth"):
            convert_official_state_dict(official[0], num_attention_heads=6)  # default 8 > 5 blocks

    def test_a_pickle_payload_is_refused_and_never_runs(self, tmp_path):
        marker = tmp_path / "payload-ran"

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        path = tmp_path / "evil.pt"
        with open(path, "wb") as handle:
            pickle.dump({"model": {}, "args": Payload()}, handle)
        torch.save({"ema": {}, "args": Payload()}, tmp_path / "evil_torch.pt")
        for candidate in (path, tmp_path / "evil_torch.pt"):
            with pytest.raises(CheckpointError, match="no code from it was run"):
                load_official_checkpoint(candidate)
        # The CLI in a fresh process refuses it too, and the payload never executed.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "diffusers_repa.convert",
                "--checkpoint",
                str(path),
                "--output_dir",
                str(tmp_path / "out"),
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2 and "not loaded" in result.stderr and "Traceback" not in result.stderr
        assert not marker.exists()

    def test_an_empty_file_is_named_not_an_index_error(self, tmp_path, capsys):
        path = tmp_path / "last.pt"
        path.write_bytes(b"")
        with pytest.raises(CheckpointError, match=r"empty \(0 bytes\)"):
            load_official_checkpoint(path)
        assert main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        assert "0 bytes" in capsys.readouterr().err
        assert not (tmp_path / "out").exists()

    def test_an_error_without_a_message_is_reported(self, tmp_path, monkeypatch):
        path = tmp_path / "last.pt"
        path.write_bytes(b"\x80")

        def fails(*args, **kwargs):
            raise EOFError()

        monkeypatch.setattr(torch, "load", fails)
        with pytest.raises(CheckpointError, match=r"not a readable PyTorch checkpoint \(EOFError\)"):
            load_official_checkpoint(path)


class TestOutputFolder:
    """A non-empty --output_dir is refused without --overwrite, and replaced whole with it."""

    def test_refused_then_replaced_whole(self, official, tmp_path, capsys):
        sd, _ = official
        with_projector, without_projector = tmp_path / "with.pt", tmp_path / "without.pt"
        torch.save(sd, with_projector)
        torch.save({k: v for k, v in sd.items() if not k.startswith("projectors.")}, without_projector)
        out = tmp_path / "converted"
        base = ["--output_dir", str(out), "--num_attention_heads", "6", "--alignment_depth", "3"]
        assert main(["--checkpoint", str(with_projector), *base]) == 0
        assert (out / "projector").is_dir()
        before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
        capsys.readouterr()

        # Refused before any work: the earlier conversion is untouched.
        assert main(["--checkpoint", str(without_projector), *base]) == 2
        assert "is not empty" in capsys.readouterr().err
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

        # With --overwrite the folder is replaced whole: no stale projector/, no stray files, no staging folders.
        (out / "notes.txt").write_text("from the earlier run")
        assert main(["--checkpoint", str(without_projector), *base, "--overwrite"]) == 0
        assert sorted(p.name for p in out.iterdir()) == ["transformer"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "with.pt", "without.pt"]
        assert SiTTransformer2DModel.from_pretrained(out / "transformer").config.num_layers == 5

    def test_an_empty_folder_is_fine_and_the_checkpoint_is_never_deleted(self, official, tmp_path, capsys):
        out = tmp_path / "out"
        out.mkdir()
        checkpoint = out / "last.pt"
        torch.save(official[0], checkpoint)
        argv = [
            "--checkpoint",
            str(checkpoint),
            "--output_dir",
            str(out),
            "--num_attention_heads",
            "6",
            "--alignment_depth",
            "3",
            "--overwrite",
        ]
        assert main(argv) == 2
        assert "lies inside" in capsys.readouterr().err and checkpoint.exists()
        empty = tmp_path / "empty"
        empty.mkdir()
        assert main([*argv[:2], "--output_dir", str(empty), *argv[4:-1]]) == 0
        assert (empty / "transformer").is_dir()

    def test_to_official_does_not_overwrite_a_file_unasked(self, official, tmp_path, capsys):
        transformer, _ = convert_official_state_dict(official[0], num_attention_heads=6, alignment_depth=3)
        transformer.save_pretrained(tmp_path / "model" / "transformer")
        target = tmp_path / "last.pt"
        target.write_text("keep me")
        argv = ["--to_official", "--model_dir", str(tmp_path / "model"), "--output", str(target)]
        assert main(argv) == 2
        assert "already exists" in capsys.readouterr().err and target.read_text() == "keep me"
        assert main([*argv, "--overwrite"]) == 0
        assert "blocks.0.attn.qkv.weight" in torch.load(target, weights_only=True)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model"]


class TestBadFlagsAreOneSentenceBeforeAnyWork:
    """Each bad or ignored flag is refused with exit code 2 and one line, and nothing is written."""

    @pytest.fixture
    def flat_checkpoint(self, official, tmp_path):
        path = tmp_path / "last.pt"
        torch.save(official[0], path)
        return path

    @pytest.mark.parametrize(
        "extra, message",
        [
            # A flat state dict has one set of weights: --use_raw was silently ignored.
            (["--use_raw"], "flat state dict"),
            # Was a ZeroDivisionError traceback.
            (["--num_attention_heads", "0"], "`num_attention_heads` must be an integer >= 1"),
            # Was silently replaced by the official default 8 (`0 or 8`).
            (["--alignment_depth", "0"], "`alignment_depth` must be an integer >= 1"),
            # Was a traceback from the model's constructor.
            (["--sample_size", "5"], "not a valid SiT"),
            # Was an OSError traceback after the conversion.
            (["--vae", "no/such/vae/folder"], "--vae no/such/vae/folder: no AutoencoderKL"),
            # --hub_code without --vae wrote no code, silently.
            (["--hub_code"], "--hub_code: not used"),
            (["--output", "x.pt"], "--output: not used"),
        ],
    )
    def test_to_diffusers(self, extra, message, flat_checkpoint, tmp_path, capsys):
        out = tmp_path / "out"
        argv = ["--checkpoint", str(flat_checkpoint), "--output_dir", str(out), "--num_attention_heads", "6"]
        argv += ["--alignment_depth", "3"]
        for flag in ("--num_attention_heads", "--alignment_depth"):
            if flag in extra:  # the extra value replaces the default one
                index = argv.index(flag)
                del argv[index : index + 2]
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()

    @pytest.mark.parametrize("extra", [["--use_raw"], ["--checkpoint", "last.pt"], ["--vae", "v"], ["--hub_code"]])
    def test_to_official(self, extra, official, tmp_path, capsys):
        transformer, _ = convert_official_state_dict(official[0], num_attention_heads=6, alignment_depth=3)
        transformer.save_pretrained(tmp_path / "model" / "transformer")
        target = tmp_path / "last.pt"
        argv = ["--to_official", "--pretrained_model_name_or_path", str(tmp_path / "model"), "--output", str(target)]
        assert main([*argv, *extra]) == 2
        assert f"{extra[0]}: not used by --to_official" in capsys.readouterr().err
        assert not target.exists()
