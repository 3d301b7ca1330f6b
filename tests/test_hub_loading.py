"""Loading from the Hub, offline: a repo id in a local Hub cache, and plain diffusers without this package.

Nothing here touches the network: the Hub cache is laid out on disk as `huggingface_hub` lays it
(`models--org--name/{blobs,snapshots/<sha>,refs/main}`) and the subprocesses run with `HF_HUB_OFFLINE=1`.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_repa import (
    REPAPipeline,
    SiTEulerMaruyamaScheduler,
    SiTEulerScheduler,
    SiTHeunScheduler,
    SiTTransformer2DModel,
)
from diffusers_repa.pipeline_repa import write_hub_code

PIPELINES_DIR = Path(__file__).parents[1] / "pipelines"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# Runs in the subprocesses: load with the given class and write one deterministic sample.
LOAD_AND_SAMPLE = """
import sys, numpy as np, torch
kind, source, output = sys.argv[1:4]
if kind == "plain":
    import importlib.util
    assert importlib.util.find_spec("diffusers_repa") is None, "diffusers_repa must not be importable here"
    from diffusers import DiffusionPipeline as Pipeline
    kwargs = {"trust_remote_code": True}
else:
    from diffusers_repa import REPAPipeline as Pipeline
    kwargs = {}
pipe = Pipeline.from_pretrained(source, **kwargs)
pipe.set_progress_bar_config(disable=True)
images = pipe(["tench", 3], num_inference_steps=4, generator=torch.manual_seed(0), output_type="np").images
np.save(output, images)
print(type(pipe).__module__, type(pipe.transformer).__module__, type(pipe.scheduler).__module__)
"""


def lay_out_hub_cache(folder: Path, cache: Path, repo_id: str) -> None:
    """Put `folder` into `cache` as `huggingface_hub` stores a downloaded snapshot (blobs + relative symlinks)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / file.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)


def run_offline(python: str, kind: str, source: str, tmp_path: Path, cache: Path) -> tuple[np.ndarray, str]:
    output = tmp_path / f"{kind}-{source.replace('/', '_')[-40:]}.npy"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf_home"),  # the remote-code module cache goes here
        "PYTHONPATH": "",
    }
    result = subprocess.run(
        [python, "-c", LOAD_AND_SAMPLE, kind, source, str(output)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return np.load(output), result.stdout


@pytest.fixture(scope="module")
def reference_images(repa_tiny_pipeline):
    return repa_tiny_pipeline(
        ["tench", 3], num_inference_steps=4, generator=torch.manual_seed(0), output_type="np"
    ).images


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory) -> str:
    """A venv that sees this venv's packages (torch, diffusers, ...) but not the editable `diffusers_repa`."""
    root = tmp_path_factory.mktemp("plain_venv")
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # A path line adds the directory without running its .pth files, so the editable install's path hook is skipped.
    Path(site_packages, "main_site_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)


def test_pipelines_folder_is_generated_from_the_package(tmp_path):
    components = {
        "transformer": SiTTransformer2DModel,
        "scheduler": [SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler],
    }
    entries = write_hub_code(tmp_path, REPAPipeline, components)
    assert entries == {
        "_class_name": ["pipeline_repa", "REPAPipeline"],
        "transformer": ["sit_transformer_2d", "SiTTransformer2DModel"],
        "scheduler": ["scheduling_sit_euler_maruyama", "SiTEulerMaruyamaScheduler"],
    }
    written = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.py")}
    shipped = {p.relative_to(PIPELINES_DIR): p.read_text() for p in PIPELINES_DIR.rglob("*.py")}
    assert sorted(shipped) == sorted(written)
    stale = [str(path) for path in written if shipped[path] != written[path]]
    assert not stale, f"pipelines/ is stale, regenerate it (see pipelines/README.md): {stale}"
    for text in written.values():  # diffusers' `check_imports` reads import statements with these patterns
        assert not re.search(r"^\s*(from|import)\s+diffusers_repa", text, flags=re.MULTILINE)


def test_save_pretrained_with_hub_code(repa_tiny_pipeline, tmp_path):
    repa_tiny_pipeline.save_pretrained(tmp_path, hub_code=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_repa", "REPAPipeline"]
    assert index["scheduler"] == ["scheduling_sit_euler_maruyama", "SiTEulerMaruyamaScheduler"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert {p.name for p in (tmp_path / "scheduler").glob("*.py")} == {
        "scheduling_sit_euler_maruyama.py",
        "scheduling_sit_common.py",
        "flow_paths.py",
    }
    with pytest.raises(ValueError, match="upload_folder"):
        repa_tiny_pipeline.save_pretrained(tmp_path, hub_code=True, push_to_hub=True)


def test_repo_id_from_offline_hub_cache(repa_tiny_pipeline_dir, reference_images, tmp_path):
    cache = tmp_path / "hub"
    lay_out_hub_cache(repa_tiny_pipeline_dir, cache, "org/tiny-repa")
    images, modules = run_offline(sys.executable, "package", "org/tiny-repa", tmp_path, cache)
    np.testing.assert_array_equal(images, reference_images)
    assert modules.split() == [
        "diffusers_repa.pipeline_repa",
        "diffusers_repa.models.sit_transformer_2d",
        "diffusers_repa.schedulers.scheduling_sit_euler_maruyama",
    ]


def test_plain_diffusers_without_the_package(repa_tiny_pipeline, reference_images, plain_python, tmp_path):
    folder = tmp_path / "tiny-repa-hub"
    repa_tiny_pipeline.save_pretrained(folder, hub_code=True)
    cache = tmp_path / "hub"
    lay_out_hub_cache(folder, cache, "org/tiny-repa-hub")
    for source in (str(folder), "org/tiny-repa-hub"):
        images, modules = run_offline(plain_python, "plain", source, tmp_path, cache)
        np.testing.assert_allclose(images, reference_images, atol=1e-6)
        assert all(module.startswith("diffusers_modules.") for module in modules.split())
