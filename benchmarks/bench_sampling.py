"""Sampling speed of REPAPipeline per scheduler: official-equivalent mode against faster modes.

Modes:
* `official`: float64 integration state, float32 model (what the official samplers do, and the default);
* `fp32-state`: float32 state, float32 model;
* `bf16-model`: float32 state, bfloat16 model (time and labels stay exact; see pitfall 13 of the REPA notes).

Models are randomly initialised (speed does not depend on the weights): a tiny SiT (8x8 latents) and SiT-B/2 at
256 px (32x32x4 latents). Timings are of the transformer + scheduler loop (`output_type="latent"`, no VAE decode),
guidance 1.8 on t in [0, 0.7] as the paper; one warm-up run, then the best of `--repeats` runs.

```bash
python benchmarks/bench_sampling.py            # tiny + SiT-B/2 (a few minutes on 2 CPU cores)
python benchmarks/bench_sampling.py --tiny     # tiny only (seconds)
```
"""

import argparse
import time

import torch
from diffusers.utils import logging

from diffusers_repa import (
    REPAPipeline,
    SiTEulerMaruyamaScheduler,
    SiTEulerScheduler,
    SiTHeunScheduler,
    SiTTransformer2DModel,
)

SCHEDULERS = {"sde": SiTEulerMaruyamaScheduler, "euler": SiTEulerScheduler, "heun": SiTHeunScheduler}
MODES = {  # name -> (state dtype, model dtype)
    "official": ("float64", torch.float32),
    "fp32-state": ("float32", torch.float32),
    "bf16-model": ("float32", torch.bfloat16),
}


def build(size: str) -> SiTTransformer2DModel:
    torch.manual_seed(0)
    if size == "tiny":
        return SiTTransformer2DModel(
            sample_size=8, num_layers=5, num_attention_heads=6, attention_head_dim=16, alignment_depth=3
        ).eval()
    return SiTTransformer2DModel.from_preset("SiT-B/2", sample_size=32, alignment_depth=4).eval()


def time_run(pipeline: REPAPipeline, batch_size: int, steps: int, repeats: int) -> tuple[float, int]:
    calls = []
    handle = pipeline.transformer.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    call = {"class_labels": list(range(batch_size)), "num_inference_steps": steps, "output_type": "latent"}
    try:
        pipeline(**call, generator=torch.manual_seed(0))  # warm-up
        best = float("inf")
        for _ in range(repeats):
            calls.clear()
            start = time.perf_counter()
            pipeline(**call, generator=torch.manual_seed(0))
            best = min(best, time.perf_counter() - start)
    finally:
        handle.remove()
    return best, len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="only the tiny model")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--tiny_steps", type=int, default=20)
    parser.add_argument("--base_steps", type=int, default=4, help="steps for SiT-B/2 (few, to keep it short)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (best is kept)")
    args = parser.parse_args()
    logging.set_verbosity_error()  # casting the bare model to bf16 warns about fp32 modules it does not have

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print("| model | scheduler | steps | model calls | mode | s / run | images / s | vs official |")
    print("|---|---|---|---|---|---|---|---|")
    for size in ["tiny"] if args.tiny else ["tiny", "SiT-B/2"]:
        base = build(size)
        steps = args.tiny_steps if size == "tiny" else args.base_steps
        for name, scheduler_cls in SCHEDULERS.items():
            official_rate = None
            for mode, (state_dtype, model_dtype) in MODES.items():
                transformer = base.to(model_dtype)
                pipeline = REPAPipeline(transformer, scheduler_cls(state_dtype=state_dtype), latent_scale=1.0)
                pipeline.set_progress_bar_config(disable=True)
                seconds, calls = time_run(pipeline, args.batch_size, steps, args.repeats)
                rate = args.batch_size / seconds
                official_rate = official_rate or rate
                print(
                    f"| {size} | {name} | {steps} | {calls} | {mode} | {seconds:.3f} | {rate:.2f} "
                    f"| {rate / official_rate:.2f}x |",
                    flush=True,
                )
            base = base.to(torch.float32)


if __name__ == "__main__":
    main()
