"""Helpers shared by `bench_train.py`, `bench_sampling.py` and `bench_data.py`.

* [`load_official`]: imports the official REPA code (models, samplers, loss, the helpers of `train.py`) from a clone
  of github.com/sihyun-yu/REPA given by the user; nothing of it is copied into this repository.
* [`best_times`]: best-of-N wall times of several candidates, interleaved (each repeat runs every candidate once),
  so that a shared, noisy machine slows all candidates alike.
* [`print_table`], [`print_json`], [`environment`]: one table and one `JSON {...}` line per script.
"""

import datetime
import importlib
import importlib.util
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

# The official modules and the names the benchmarks use from each.
OFFICIAL_NAMES = {
    "models.sit": ["SiT", "SiT_models"],
    "samplers": ["euler_sampler", "euler_maruyama_sampler"],
    "loss": ["SILoss"],
    "train": ["update_ema", "sample_posterior", "preprocess_raw_image"],
    "dataset": ["CustomDataset"],
}
# Top-level module names of the official repository; they are generic, so other modules of those names are moved
# out of `sys.modules` while it is imported and put back afterwards.
_OFFICIAL_TOP_LEVEL = ("models", "samplers", "loss", "train", "utils", "dataset")


def load_official(official_dir: str | os.PathLike) -> SimpleNamespace:
    """
    Import the official REPA code from `official_dir` (a clone of github.com/sihyun-yu/REPA, e.g. at 67f7145).

    Returns a namespace with `SiT`, `SiT_models`, `euler_sampler`, `euler_maruyama_sampler`, `SILoss`, `update_ema`,
    `sample_posterior`, `preprocess_raw_image` and `CustomDataset`. `train.py` needs its own requirements
    (accelerate, timm, torchvision, diffusers) to import; wandb is stubbed where it is missing.

    Raises:
        `ValueError`: when `official_dir` is not such a clone.
    """
    root = Path(official_dir).expanduser().resolve()
    missing = [name for name in ("models/sit.py", "samplers.py", "loss.py", "train.py") if not (root / name).is_file()]
    if missing:
        raise ValueError(
            f"--official_dir {official_dir} is not a clone of the official REPA code (missing {', '.join(missing)}): "
            "git clone https://github.com/sihyun-yu/REPA and pass its folder."
        )
    saved = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] in _OFFICIAL_TOP_LEVEL}
    sys.path.insert(0, str(root))
    # `train.py` imports wandb at the top but uses it only in `main()`: where it is not installed (e.g. a GPU
    # machine's image), an empty module stands in, so that its helpers can be imported.
    stub_wandb = importlib.util.find_spec("wandb") is None and "wandb" not in sys.modules
    if stub_wandb:
        sys.modules["wandb"] = ModuleType("wandb")
    try:
        namespace = SimpleNamespace(root=root)
        for module_name, names in OFFICIAL_NAMES.items():
            module = importlib.import_module(module_name)
            for name in names:
                setattr(namespace, name, getattr(module, name))
    finally:
        sys.path.remove(str(root))
        if stub_wandb:
            del sys.modules["wandb"]
        for name in [name for name in sys.modules if name.split(".")[0] in _OFFICIAL_TOP_LEVEL]:
            del sys.modules[name]
        sys.modules.update(saved)
    return namespace


# Model sizes of the benchmarks. Tiny: a 5-block SiT of width 96 on 8x8x4 latents (16 tokens) and a 2-layer
# DINOv2-shaped encoder giving 16 tokens at 224 px; real: SiT-XL/2 at 256 px (alignment after block 8, projector
# width 2048) and DINOv2-B at 224 px, as the released checkpoint and the paper's training.
TINY_SIZES = dict(latent=8, patch=2, hidden=96, depth=5, heads=6, align=3, projector=64, enc_hidden=32, enc_layers=2,
                  enc_heads=2, enc_patch=56, resolution=256, enc_input=224)  # fmt: skip
REAL_SIZES = dict(latent=32, patch=2, hidden=1152, depth=28, heads=16, align=8, projector=2048, enc_hidden=768,
                  enc_layers=12, enc_heads=12, enc_patch=14, resolution=256, enc_input=224)  # fmt: skip


def model_sizes(tiny: bool) -> dict[str, int]:
    return dict(TINY_SIZES if tiny else REAL_SIZES)


def official_sit(off: SimpleNamespace, s: dict[str, int]) -> torch.nn.Module:
    """The official `SiT` of these sizes (random init, on the current default device), as `train.py` builds it."""
    return off.SiT(
        input_size=s["latent"], patch_size=s["patch"], hidden_size=s["hidden"], decoder_hidden_size=s["hidden"],
        depth=s["depth"], num_heads=s["heads"], encoder_depth=s["align"], z_dims=[s["enc_hidden"]],
        projector_dim=s["projector"], num_classes=1000, use_cfg=True, qk_norm=False, fused_attn=True,
    )  # fmt: skip


def our_sit(s: dict[str, int]):
    """Our `SiTTransformer2DModel` of these sizes (random init, on the current default device)."""
    from diffusers_repa import SiTTransformer2DModel

    return SiTTransformer2DModel(
        sample_size=s["latent"], patch_size=s["patch"], num_layers=s["depth"], num_attention_heads=s["heads"],
        attention_head_dim=s["hidden"] // s["heads"], alignment_depth=s["align"],
    )  # fmt: skip


def official_commit(official_dir: str | os.PathLike) -> str:
    """The commit of a git clone, or of an exported tree from its `COMMIT` file (`unknown` without either)."""
    recorded = Path(official_dir, "COMMIT")
    if recorded.is_file():
        return recorded.read_text().strip()[:7]
    head = Path(official_dir, ".git", "HEAD")
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return Path(official_dir, ".git", ref[5:]).read_text().strip()[:7]
        return ref[:7]
    except OSError:
        return "unknown"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_clock(device: torch.device) -> Callable[[], float]:
    """
    The clock to time with: on CUDA wall time; on the CPU the CPU time of this process (`time.process_time`), which
    on a shared machine does not count the time other processes hold the cores (single-threaded runs, as here).
    """
    return time.perf_counter if device.type == "cuda" else time.process_time


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of `fn`, on [`cpu_clock`]."""
    clock = cpu_clock(device)
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def best_times(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """
    Best wall seconds of each candidate over `repeats` rounds; each round runs every candidate once, in an order
    shuffled per round (seeded, so reproducible).

    Interleaving makes load from other processes hit all candidates alike, shuffling keeps a candidate from always
    following the same one, and the best (not the mean) is the least disturbed run.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(candidates, float("inf"))
    order = list(candidates)
    shuffler = random.Random(0)
    for _ in range(repeats):
        shuffler.shuffle(order)
        for name in order:
            best[name] = min(best[name], time_once(candidates[name], device))
    return best


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine, for the results."""
    import diffusers
    import transformers

    info = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    try:
        info["load_average"] = [round(value, 2) for value in os.getloadavg()]
    except OSError:
        pass
    return info


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """A Markdown table on stdout."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cell(value) for value in row) + " |")
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_json(record: dict[str, Any]) -> None:
    """The one machine-readable line: `JSON {...}`."""
    print("JSON " + json.dumps(record, sort_keys=True, default=str), flush=True)


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())
