"""Reproduce REPA's effect with our code: the same pixel-space SiT trained with and without REPA on Fashion-MNIST.

Both arms run `training/train_repa.py` with identical settings (model, data, batch, learning rate, EMA, seeds);
they differ only in `--proj_coeff` (0.5 with the demo's EfficientNet-Lite0 features as the target, 0 for a plain
SiT). The encoder features are stored once by `prepare_latents.py`, so neither arm runs the encoder while training:
REPA's extra cost per step is the projector and its loss only. Each run writes a checkpoint every
`--checkpointing_steps`; each checkpoint's weights (raw by default, `--weights ema` for the EMA) are evaluated:

* FID of `--num_fid_samples` class-balanced samples (Euler ODE, `--num_inference_steps`, no guidance, as the paper's
  FID-vs-iterations figure) against the held-out test split, with the real FID Inception
  (`diffusers_repa.evaluation`), plus precision and recall;
* at the last checkpoint of every run, per layer: CKNNA (k=10) between the SiT's mean-pooled hidden states (null
  label, t = `--alignment_timestep`) and the encoder's mean-pooled features of the test images, and linear-probe
  accuracy (train split -> test split).

Phases (`--phase all` runs them in order; each skips finished work, so an interrupted run continues):

```bash
python benchmarks/repro_fashion_mnist.py                                     # the CPU setting in RESULTS.md
python benchmarks/repro_fashion_mnist.py --setting tiny --output_dir /tmp/r  # a check of the mechanics
python benchmarks/repro_fashion_mnist.py --setting gpu --output_dir outputs/repro-gpu  # for a lent GPU
```

Results: `OUTPUT_DIR/results.json` (one row per run and checkpoint), `OUTPUT_DIR/repro.png` (FID against steps and
against wall-clock, one line per run, mean per arm) and a markdown table on stdout.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARMS = {"repa": 0.5, "plain": 0.0}
SAVED_PATTERN = re.compile(r"Saved \S*checkpoint-(\d+)")

# Image side, train_repa.py model flags, batch, steps, checkpoint interval, FID samples per checkpoint and reference
# images (the test split has 1000). FID on few samples is biased upwards: the report's "real" row is the FID of as
# many real training images against the same reference, the floor a perfect model would reach at that count.
SETTINGS = {
    "cpu": {  # what 2 CPU cores shared with other jobs allowed in one session: ~45 min training, ~40 min FID
        "resolution": 32,
        "model_kwargs": {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32},
        "model": "SiT-S/4",
        "alignment_depth": 2,
        "batch_size": 32,
        "max_train_steps": 1500,
        "checkpointing_steps": 300,
        "num_fid_samples": 100,
        "num_reference": 1000,
    },
    "cpu_trial": {  # the size of the first throwaway trial (about 2 hours on 2 quiet cores)
        "resolution": 32,
        "model_kwargs": {"num_layers": 6, "num_attention_heads": 4, "attention_head_dim": 32},
        "model": "SiT-S/4",
        "alignment_depth": 2,
        "batch_size": 64,
        "max_train_steps": 3000,
        "checkpointing_steps": 600,
        "num_fid_samples": 500,
        "num_reference": 1000,
    },
    "tiny": {
        "resolution": 32,
        "model_kwargs": {"num_layers": 3, "num_attention_heads": 2, "attention_head_dim": 16},
        "model": "SiT-S/4",
        "alignment_depth": 1,
        "batch_size": 16,
        "max_train_steps": 10,
        "checkpointing_steps": 5,
        "num_fid_samples": 20,
        "num_reference": 40,
    },
    "gpu": {  # 64 tokens -> 256 tokens (patch 2), width 384, 12 blocks; 10k steps; 10k FID samples
        "resolution": 32,
        "model_kwargs": {"num_layers": 12, "num_attention_heads": 6, "attention_head_dim": 64},
        "model": "SiT-S/2",
        "alignment_depth": 4,
        "batch_size": 256,
        "max_train_steps": 10_000,
        "checkpointing_steps": 1000,
        "num_fid_samples": 10_000,
        "num_reference": 1000,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase", choices=["prepare", "train", "evaluate", "report", "all"], default="all")
    parser.add_argument(
        "--setting",
        choices=list(SETTINGS),
        default="cpu",
        help="cpu: what RESULTS.md records; cpu_trial: the first trial's size; tiny: a check of the mechanics; gpu: "
        "more tokens, 10k steps, 10k FID samples.",
    )
    parser.add_argument("--output_dir", default="outputs/repro")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--parallel", type=int, default=2, help="Training runs at once (one thread each on CPU).")
    parser.add_argument(
        "--weights",
        choices=["raw", "ema"],
        default="raw",
        help="Which weights of each checkpoint to evaluate. Raw by default: with --ema_decay 0.999 the EMA of a "
        "1500-step run still holds 0.999^1500 = 22%% of the first step's weights, so it measures the EMA's lag more "
        "than the training (an EMA evaluation of step 300 gave FID 473, pure noise).",
    )
    parser.add_argument("--num_inference_steps", type=int, default=50, help="Euler ODE steps for the FID samples.")
    parser.add_argument("--alignment_timestep", type=float, default=0.5, help="Flow time t for CKNNA and probe.")
    parser.add_argument("--batch_size_eval", type=int, default=250)
    parser.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = parser.parse_args(argv)
    args.setting_name = args.setting
    args.setting = SETTINGS[args.setting]
    if min(args.seeds) < 0 or len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must be distinct non-negative integers.")
    if args.parallel < 1:
        parser.error("--parallel must be >= 1.")
    return args


def run_logged(command: list[str], log_path: Path, env: dict[str, str]) -> dict[str, float]:
    """Runs `command`, copying its output to `log_path` with a wall-clock stamp per line; returns the seconds from
    start at which each `checkpoint-N` was reported saved (`{"N": seconds}`)."""
    saved: dict[str, float] = {}
    start = time.time()
    with open(log_path, "a") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in process.stdout:
            elapsed = time.time() - start
            log.write(f"[{elapsed:9.1f}s] {line}")
            log.flush()
            match = SAVED_PATTERN.search(line)
            if match:
                saved[match.group(1)] = elapsed
        if process.wait() != 0:
            raise RuntimeError(f"{' '.join(command[:3])} ... failed (exit {process.returncode}); see {log_path}")
    return saved


def prepare(args: argparse.Namespace, out: Path) -> None:
    """The demo's alignment encoder and the prepared training data (crops + stored encoder features)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if not (out / "encoder" / "config.json").exists():
        subprocess.run(
            [sys.executable, str(REPO / "training/prepare_demo_encoder.py"), "--output_dir", str(out / "encoder")],
            check=True,
            env=env,
        )
    subprocess.run(
        [
            sys.executable,
            str(REPO / "training/prepare_latents.py"),
            "--dataset_name",
            str(REPO / "training/data/fashion-mnist"),
            "--resolution",
            str(args.setting["resolution"]),
            "--vae",
            "none",
            "--encoder",
            str(out / "encoder"),
            "--encoder_num_tokens",
            "64",
            "--batch_size",
            "100",
            "--shard_size",
            "500",
            "--dataloader_num_workers",
            "0",
            "--output_dir",
            str(out / "data"),
        ],
        check=True,
        env=env,
    )


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-seed{seed}"


def train_command(args: argparse.Namespace, out: Path, arm: str, seed: int) -> list[str]:
    s = args.setting
    return [
        sys.executable,
        str(REPO / "training/train_repa.py"),
        "--model",
        s["model"],
        "--model_kwargs",
        json.dumps(s["model_kwargs"]),
        "--alignment_depth",
        str(s["alignment_depth"]),
        "--projector_dim",
        "256",
        "--resolution",
        str(s["resolution"]),
        "--dataset_name",
        str(out / "data"),
        "--encoder",
        str(out / "encoder"),
        "--proj_coeff",
        str(ARMS[arm]),
        "--batch_size",
        str(s["batch_size"]),
        "--learning_rate",
        str(args.learning_rate),
        "--ema_decay",
        str(args.ema_decay),
        "--max_train_steps",
        str(s["max_train_steps"]),
        "--checkpointing_steps",
        str(s["checkpointing_steps"]),
        "--validation_steps",
        str(10 * s["max_train_steps"]),
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        "--seed",
        str(seed),
        "--resume_from_checkpoint",
        "latest",
        "--output_dir",
        str(out / "runs" / run_name(arm, seed)),
    ]


def train(args: argparse.Namespace, out: Path) -> None:
    """All runs, `--parallel` at a time, interleaving the arms so that both share the machine's load alike."""
    jobs = [(arm, seed) for seed in args.seeds for arm in ARMS]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if args.parallel > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    timings_path = out / "train_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    lock = threading.Lock()

    def work(arm: str, seed: int) -> None:
        name = run_name(arm, seed)
        if name in timings and timings[name].get("done"):
            return
        saved = run_logged(train_command(args, out, arm, seed), out / "runs" / f"{name}.log", env)
        with lock:
            timings[name] = {"checkpoint_seconds": saved, "done": True}
            timings_path.write_text(json.dumps(timings, indent=2))

    pending = list(jobs)
    while pending:
        batch, pending = pending[: args.parallel], pending[args.parallel :]
        threads = [threading.Thread(target=work, args=job) for job in batch]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for arm, seed in batch:
            if not timings.get(run_name(arm, seed), {}).get("done"):
                raise RuntimeError(f"run {run_name(arm, seed)} did not finish; see its log in {out / 'runs'}")


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = [(int(path.name.split("-")[1]), path) for path in run_dir.glob("checkpoint-*") if path.name[11:].isdigit()]
    return sorted(found)


def evaluate(args: argparse.Namespace, out: Path) -> None:
    """
    FID/sFID/precision/recall of every checkpoint's weights (`--weights`); CKNNA and probe per layer at the last
    one of each finished run. Can run while training does: it evaluates the checkpoints written so far and skips done
    ones.
    """
    import numpy as np
    import torch

    from diffusers_repa import REPAPipeline, SiTEulerScheduler, SiTTransformer2DModel
    from diffusers_repa.evaluate_alignment import parse_args as alignment_args
    from diffusers_repa.evaluate_alignment import run as evaluate_alignment
    from diffusers_repa.evaluation import (
        build_reference_batch,
        evaluate_samples,
        load_inception,
        load_reference_images,
    )
    from diffusers_repa.sample import image_generators, make_grid, sample_labels, to_uint8

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    network = load_inception(device)
    reference = out / "reference_test.npz"
    if not reference.exists():
        build_reference_batch(
            str(REPO / "training/data/fashion-mnist"),
            reference,
            resolution=args.setting["resolution"],
            split="test",
            num_images=args.setting["num_reference"],
            network=network,
            device=device,
        )
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {"fid": [], "alignment": {}}
    num_samples = args.setting["num_fid_samples"]
    if "real" not in results:  # the noise floor: real training images, as many as the samples
        real = load_reference_images(
            str(REPO / "training/data/fashion-mnist"),
            args.setting["resolution"],
            split="train",
            num_images=num_samples,
            seed=0,
            progress=False,
        )[0]
        results["real"] = evaluate_samples(real, reference, network=network, device=device, progress=False)
        results_path.write_text(json.dumps(results, indent=2))
    done = {(row["run"], row["step"]) for row in results["fid"]}
    timings_path = out / "train_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    for arm in ARMS:
        for seed in args.seeds:
            name = run_name(arm, seed)
            found = checkpoints(out / "runs" / name)
            for step, checkpoint in found:
                if (name, step) in done:
                    continue
                weights = checkpoint / ("transformer_ema" if args.weights == "ema" else "transformer")
                transformer = SiTTransformer2DModel.from_pretrained(weights).to(device).eval()
                pipeline = REPAPipeline(transformer=transformer, scheduler=SiTEulerScheduler(), latent_scale=1.0)
                pipeline.set_progress_bar_config(disable=True)
                labels = sample_labels(num_samples, transformer.config.num_classes, "balanced", seed=0)
                images = []
                for start in range(0, num_samples, args.batch_size_eval):
                    indices = range(start, min(start + args.batch_size_eval, num_samples))
                    output = pipeline(
                        labels[indices.start : indices.stop].tolist(),
                        num_inference_steps=args.num_inference_steps,
                        guidance_scale=1.0,
                        generator=image_generators(0, indices),
                        output_type="np",
                    )
                    images.append(to_uint8(output.images))
                images = np.concatenate(images)
                make_grid(images[:40], [str(label) for label in labels[:40]], columns=10).save(
                    out / "runs" / f"{name}-step{step}.png"
                )
                metrics = evaluate_samples(images, reference, network=network, device=device, progress=False)
                row = {"run": name, "arm": arm, "seed": seed, "step": step, "weights": args.weights, **metrics}
                results["fid"].append(row)
                results_path.write_text(json.dumps(results, indent=2))
                print(f"{name} step {step}: FID {metrics['fid']:.2f}, sFID {metrics['sfid']:.2f}", flush=True)
            if found and timings.get(name, {}).get("done") and name not in results["alignment"]:
                step, checkpoint = found[-1]
                report = evaluate_alignment(
                    alignment_args(
                        [
                            "--pretrained_model_name_or_path",
                            str(checkpoint / ("transformer_ema" if args.weights == "ema" else "transformer")),
                            "--encoder",
                            str(out / "encoder"),
                            "--dataset_name",
                            str(REPO / "training/data/fashion-mnist"),
                            "--dataset_split",
                            "test",
                            "--num_images",
                            str(args.setting["num_reference"]),
                            "--timestep",
                            str(args.alignment_timestep),
                            "--output_dir",
                            str(out / "alignment" / name),
                            "--seed",
                            "0",
                        ]
                    )
                )
                results["alignment"][name] = {"step": step, **report}
                results_path.write_text(json.dumps(results, indent=2))


def report(args: argparse.Namespace, out: Path) -> str:
    """The markdown table (per arm: mean and each seed's FID per step; alignment at the last step) and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((out / "results.json").read_text())
    timings = json.loads((out / "train_timings.json").read_text())
    rows = results["fid"]
    steps = sorted({row["step"] for row in rows})
    by = {(row["arm"], row["seed"], row["step"]): row for row in rows}
    lines = [
        "| step | " + " | ".join(f"FID {arm} (mean; per seed)" for arm in ARMS) + " |",
        "|---|" + "---|" * len(ARMS),
    ]
    for step in steps:
        cells = []
        for arm in ARMS:
            values = [by[(arm, seed, step)]["fid"] for seed in args.seeds if (arm, seed, step) in by]
            each = ", ".join(f"{value:.1f}" for value in values)
            cells.append(f"{sum(values) / len(values):.1f} ({each})" if values else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    if "real" in results:
        lines.append(
            f"| real training images (floor at {results['real']['num_samples']} samples) | "
            + " | ".join(f"{results['real']['fid']:.1f}" for _ in ARMS)
            + " |"
        )
    lines += ["", "| run | last step | sFID | precision | recall | seconds/step | CKNNA (aligned layer) | probe acc |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for arm in ARMS:
        for seed in args.seeds:
            name = run_name(arm, seed)
            last = max((row for row in rows if row["run"] == name), key=lambda row: row["step"], default=None)
            if last is None:
                continue
            seconds = timings.get(name, {}).get("checkpoint_seconds", {})
            marks = sorted((int(step), value) for step, value in seconds.items())
            per_step = (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0]) if len(marks) > 1 else float("nan")
            alignment = results["alignment"].get(name)
            layer_row = None
            if alignment is not None:
                layer_row = next(r for r in alignment["layers"] if r["layer"] == alignment["alignment_depth"])
            cknna = "-" if layer_row is None or layer_row["cknna"] is None else f"{layer_row['cknna']:.3f}"
            probe = "-" if layer_row is None else f"{layer_row['probe_accuracy']:.3f}"
            lines.append(
                f"| {name} | {last['step']} | {last['sfid']:.1f} | {last['precision']:.3f} | {last['recall']:.3f} | "
                f"{per_step:.3f} | {cknna} | {probe} |"
            )
    table = "\n".join(lines)

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {"repa": "tab:blue", "plain": "tab:orange"}
    for arm in ARMS:
        for seed in args.seeds:
            name = run_name(arm, seed)
            points = sorted((row["step"], row["fid"]) for row in rows if row["run"] == name)
            if not points:
                continue
            seconds = timings.get(name, {}).get("checkpoint_seconds", {})
            xs, ys = zip(*points)
            axes[0].plot(xs, ys, marker="o", color=colors[arm], alpha=0.8, label=f"{arm} seed {seed}")
            clock = [(seconds[str(step)] / 60, fid) for step, fid in points if str(step) in seconds]
            if clock:
                axes[1].plot(*zip(*clock), marker="o", color=colors[arm], alpha=0.8, label=f"{arm} seed {seed}")
    if "real" in results:
        for axis in axes:
            axis.axhline(results["real"]["fid"], color="gray", linestyle=":", label="real images (floor)")
    axes[0].set_xlabel("training step")
    axes[1].set_xlabel("wall-clock minutes (training only)")
    for axis in axes:
        axis.set_ylabel(f"FID ({args.setting['num_fid_samples']} samples vs test split)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"SiT on Fashion-MNIST with and without REPA ({args.setting_name} setting)")
    figure.tight_layout()
    figure.savefig(out / "repro.png", dpi=110)
    plt.close(figure)
    (out / "repro.md").write_text(table + "\n")
    print(table)
    return table


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("prepare", "all"):
        prepare(args, out)
    if args.phase in ("train", "all"):
        train(args, out)
    if args.phase in ("evaluate", "all"):
        evaluate(args, out)
    if args.phase in ("report", "all"):
        report(args, out)


if __name__ == "__main__":
    main()
