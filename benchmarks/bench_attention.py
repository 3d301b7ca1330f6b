"""SiT-XL's head dim 72: what attention kernels make of it, and what the choice is worth in a SiT block (issue 10).

SiT-XL/2 has 16 heads of width 72 and 256 tokens. Flash-attention kernels are built for a few head dims (32, 64,
96, 128, ...), so a head of 72 may run in the 96 kernel: a third of its attention FLOPs wasted. Whether that
matters depends on attention's share of a block (about 4% of the FLOPs at 256 tokens). This script measures both,
on the kernels a user can pick:

1. **Kernels**: `scaled_dot_product_attention` under each `torch.nn.attention.SDPBackend` (flash, memory-efficient,
   cuDNN, math) at head dims 64, 72 and 96 (batch x 16 heads x 256 tokens), forward and forward + backward. If
   72 runs in a 96 kernel, its time is near the 96 time instead of 72/64 = 1.125x the 64 time: the table's
   `t / t(64)` column says which.
2. **Blocks**: a 2-block SiT-XL/2 (`SiTTransformer2DModel`, our attention on diffusers' dispatcher) with
   `set_attention_backend(name)` for `native` (SDPA's own choice, the default), `_native_flash`,
   `_native_efficient`, `_native_cudnn`: a training step's forward + backward at the training batch under bf16
   autocast, and a sampling forward at the CFG batch in bf16. The spread across backends bounds what any attention
   kernel can still gain.

A kernel that a machine does not have is reported as an error in its row; the others still run.

```bash
python benchmarks/bench_attention.py            # GPU: real sizes (about a minute on one H100/H200, estimated)
python benchmarks/bench_attention.py --tiny     # CPU: tiny shapes, float32, a check that every path runs
```
Prints Markdown tables and one `JSON {...}` line.
"""

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_common import best_times, environment, print_json, print_table, synchronize
from diffusers.utils import logging
from torch.nn.attention import SDPBackend, sdpa_kernel

from diffusers_repa import SiTTransformer2DModel

KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}
DISPATCHER_BACKENDS = ("native", "_native_flash", "_native_efficient", "_native_cudnn")


def time_candidates(candidates: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict:
    """Best seconds per candidate, or the error of one that fails (reported, the others still timed)."""
    working, errors = {}, {}
    for name, fn in candidates.items():
        try:
            fn()  # warm-up; also finds a kernel that this machine lacks
            synchronize(device)
            working[name] = fn
        except Exception as error:  # a missing kernel is a result here, not a failure of the benchmark
            errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    seconds = best_times(working, device, repeats, warmup=1) if working else {}
    return {name: seconds.get(name, errors.get(name)) for name in candidates}


def kernel_table(args, device: torch.device, dtype: torch.dtype) -> tuple[list[list], dict]:
    """Kernel times at head dims 64 / 72 / 96 (scaled to the tiny sizes in `--tiny`)."""
    batch, heads, tokens = (2, 2, 16) if args.tiny else (args.batch, 16, 256)
    head_dims = (8, 9, 12) if args.tiny else (64, 72, 96)
    rows, results = [], {}
    for backward in (False, True):
        candidates = {}
        for kernel, backend in KERNELS.items():
            if args.tiny and kernel in ("cudnn", "efficient"):
                continue  # CUDA kernels
            for dim in head_dims:
                generator = torch.Generator().manual_seed(dim)
                q, k, v = (
                    torch.randn(batch, heads, tokens, dim, generator=generator).to(device, dtype).requires_grad_()
                    for _ in range(3)
                )

                def run(q=q, k=k, v=v, backend=backend, backward=backward) -> None:
                    with sdpa_kernel(backend), torch.set_grad_enabled(backward):
                        out = F.scaled_dot_product_attention(q, k, v)
                        if backward:
                            out.backward(torch.ones_like(out))

                candidates[(kernel, dim)] = run
        times = time_candidates(candidates, device, args.repeats)
        for (kernel, dim), value in times.items():
            key = f"{'fwd_bwd' if backward else 'fwd'}/{kernel}/{dim}"
            if isinstance(value, str):
                results[key] = {"error": value}
                rows.append([key, "-", "-", "-", value])
                continue
            # Q K^T and P V: 2 matmuls of 2 * tokens^2 * dim FLOPs per head; the backward counts 2.5x the forward
            # (FlashAttention's benchmark convention), so forward + backward is 3.5x.
            flops = 4 * batch * heads * tokens * tokens * dim * (3.5 if backward else 1.0)
            base = times.get((kernel, head_dims[0]))
            ratio = value / base if isinstance(base, float) else None
            results[key] = {"s": value, "tflops": flops / value / 1e12, "vs_smallest_dim": ratio}
            rows.append([key, value * 1e3, flops / value / 1e12, ratio, ""])
    return rows, results


def block_table(args, device: torch.device) -> tuple[list[list], dict]:
    """A 2-block SiT-XL/2 (tiny: a 2-block width-36 SiT) per dispatcher backend: training step and sampling call."""
    if args.tiny:
        model = SiTTransformer2DModel(
            sample_size=8, patch_size=2, num_layers=2, num_attention_heads=4, attention_head_dim=9, alignment_depth=1
        )
    else:
        model = SiTTransformer2DModel.from_preset("SiT-XL/2", num_layers=2, alignment_depth=1)
    train_batch, sample_batch = args.train_batch, args.batch
    model.to(device)
    sample_model = SiTTransformer2DModel.from_config(model.config).to(device).eval()
    sample_model.load_state_dict(model.state_dict())
    if device.type == "cuda":
        sample_model.to(torch.bfloat16)
    size = model.config.sample_size
    generator = torch.Generator().manual_seed(0)
    train_x = torch.randn(train_batch, 4, size, size, generator=generator).to(device)
    sample_x = torch.randn(sample_batch, 4, size, size, generator=generator).to(device, sample_model.dtype)
    t_train, t_sample = torch.rand(train_batch).to(device), torch.rand(sample_batch).to(device, sample_model.dtype)
    num_classes = model.config.num_classes
    y_train, y_sample = (torch.randint(0, num_classes, (b,)).to(device) for b in (train_batch, sample_batch))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def train_step() -> None:
        with autocast:
            out = model(train_x, t_train, class_labels=y_train).sample
        out.float().square().mean().backward()

    def sample_call() -> None:
        with torch.inference_mode():
            sample_model(sample_x, t_sample, class_labels=y_sample)

    rows, results = [], {}
    for backend in DISPATCHER_BACKENDS:
        if args.tiny and backend in ("_native_efficient", "_native_cudnn"):
            continue  # CUDA kernels
        for name, fn, target in (("train", train_step, model), ("sample", sample_call, sample_model)):
            key = f"{name}/{backend}"
            try:
                target.set_attention_backend(backend)
                value = time_candidates({key: fn}, device, args.repeats)[key]
            finally:
                target.reset_attention_backend()
            if isinstance(value, str):
                results[key] = {"error": value}
                rows.append([name, backend, "-", "-", value])
                continue
            results[key] = {"s": value}
            rows.append([name, backend, value * 1e3, None, ""])
    for row in rows:  # time against the default backend of the same kind
        default = results.get(f"{row[0]}/native", {}).get("s")
        if isinstance(row[2], float) and default:
            row[3] = row[2] / 1e3 / default
            results[f"{row[0]}/{row[1]}"]["vs_native"] = row[3]
    return rows, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--batch", type=int, default=128, help="sampling batch (64 images with CFG: 128)")
    parser.add_argument("--train_batch", type=int, default=256, help="training batch of the block benchmark")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per candidate (default: 5 CPU, 20 CUDA)")
    args = parser.parse_args()
    if args.batch < 1 or args.train_batch < 1:
        parser.error("--batch and --train_batch must be >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if device.type == "cpu" and not args.tiny:
        parser.error("no CUDA device: the real sizes are for a GPU; pass --tiny for the CPU check")
    args.repeats = args.repeats or (5 if device.type == "cpu" else 20)
    if args.tiny:  # the tiny blocks' batches (the tiny kernels use batch 2)
        args.batch, args.train_batch = 4, 4
    logging.set_verbosity_error()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    kernel_rows, kernel_results = kernel_table(args, device, dtype)
    env = environment(device)
    print(f"{env['device']}, torch {env['torch']}, {dtype}, best of {args.repeats}")
    print_table(["pass/kernel/head dim", "ms", "TFLOP/s", "t / t(smallest dim)", "error"], kernel_rows)
    block_rows, block_results = block_table(args, device)
    print_table(["call", "attention backend", "ms (2 blocks + embeddings)", "vs native", "error"], block_rows)
    print_json(
        {
            "bench": "attention",
            "tiny": args.tiny,
            "batch": args.batch,
            "train_batch": args.train_batch,
            "env": env,
            "kernels": kernel_results,
            "blocks": block_results,
        }
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - start:.0f} s")
