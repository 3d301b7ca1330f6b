"""Training-step speed: our REPA step (eager, EMA, fused AdamW, compiled, checkpointed) against the official code.

One REPA step as each trainer runs it, on the same inputs, in the same process:

* **official** (`--official_dir`, a clone of github.com/sihyun-yu/REPA): its `SiT`, `SILoss`, and from its
  `train.py` `sample_posterior`, `preprocess_raw_image` and `update_ema`; AdamW with PyTorch's defaults as in
  `train.py`; on CUDA the model under fp16 autocast with a gradient scaler (its README command,
  `--mixed-precision=fp16`), on CPU fp32;
* **ours**: `SiTTransformer2DModel` + `REPAProjector` + `REPALoss`, `sample_posterior`, `AlignmentEncoder` input
  preprocessing, `EMAModel`; on CUDA bf16 autocast, on CPU fp32. The variants add one change each:
  `eager` (AdamW defaults, `EMAModel(foreach=False)`), `foreach_ema` (`EMAModel(foreach=True)`), `lerp_ema`
  (the trainer's `training_utils.update_ema`: the same EMA as one `torch._foreach_lerp_` pass, no temporary copy of
  the weights), `fused_adamw` (+ `AdamW(fused=True)`: the step `train_repa.py` runs), `compiled` (+
  `compile_repeated_blocks(fullgraph=True)`: `--torch_compile`), and for memory `checkpointed` (`fused_adamw` with
  gradient checkpointing of the first `--checkpoint_blocks` blocks: `--gradient_checkpointing_blocks`) and
  `compiled_checkpointed` (`compiled` with the first `--compiled_checkpoint_blocks`).

Both steps run the same DINOv2-shaped encoder (random weights; transformers `Dinov2Model`) on the raw uint8 images,
the posterior sample, the loss, backward, gradient clipping at 1.0, the optimizer and the EMA update. Not included:
data loading (`bench_data.py`) and the trainer's logging. Weights are random (speed does not depend on them).

Sizes: `--tiny` (CPU: a 5-block SiT of width 96 on 8x8x4 latents, a 2-layer encoder) or the real one (SiT-XL/2 at
256 px, DINOv2-B at 224 px, `--batch_size 256`). On CPU the candidates are timed interleaved (each round runs every
candidate once; best of `--repeats`), on CUDA one after another (they do not all fit in memory at batch 256).

```bash
python benchmarks/bench_train.py --tiny --official_dir /tmp/official-repa              # CPU, about a minute
python benchmarks/bench_train.py --official_dir /tmp/official-repa --batch_size 256    # one GPU, about 3 minutes
```
Prints a Markdown table and one `JSON {...}` line.
"""

import argparse
import copy
import gc
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_common import (
    best_times,
    environment,
    load_official,
    model_sizes,
    official_commit,
    official_sit,
    our_sit,
    print_json,
    print_table,
    time_once,
)
from diffusers.training_utils import EMAModel

from diffusers_repa import REPAProjector
from diffusers_repa.alignment import AlignmentEncoder, REPALoss
from diffusers_repa.data import sample_posterior
from diffusers_repa.training_utils import update_ema

OURS = ("eager", "foreach_ema", "lerp_ema", "fused_adamw", "compiled", "checkpointed", "compiled_checkpointed")
DEFAULT_VARIANTS = ("eager", "lerp_ema", "fused_adamw", "compiled")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_encoder(s: dict[str, int], device: torch.device) -> torch.nn.Module:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=s["enc_hidden"],
        num_hidden_layers=s["enc_layers"],
        num_attention_heads=s["enc_heads"],
        intermediate_size=4 * s["enc_hidden"],
        image_size=s["enc_input"],
        patch_size=s["enc_patch"],
    )
    torch.manual_seed(1)
    return Dinov2Model(config).to(device).eval().requires_grad_(False)


def make_inputs(s: dict[str, int], batch: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    latent = s["latent"]
    mean = torch.randn(batch, 4, latent, latent, generator=generator)
    std = torch.rand(batch, 4, latent, latent, generator=generator) * 0.1
    return {
        "moments": torch.cat([mean, std], dim=1).to(device),
        "images": torch.randint(
            0, 256, (batch, 3, s["resolution"], s["resolution"]), generator=generator, dtype=torch.uint8
        ).to(device),
        "labels": torch.randint(0, 1000, (batch,), generator=generator).to(device),
    }


def official_step(off, s, inputs, encoder, device) -> tuple[Callable[[], None], dict[str, Any]]:
    torch.manual_seed(0)
    with device:
        model = official_sit(off, s)
    model.train()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0, eps=1e-8)
    loss_fn = off.SILoss(prediction="v", path_type="linear", weighting="uniform")
    amp = device.type == "cuda"  # accelerate's fp16: autocast + gradient scaler
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    latents_scale = torch.tensor([0.18215] * 4, device=device).view(1, 4, 1, 1)
    latents_bias = torch.zeros_like(latents_scale)

    def step() -> None:
        with torch.no_grad():
            x = off.sample_posterior(inputs["moments"], latents_scale=latents_scale, latents_bias=latents_bias)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                raw = off.preprocess_raw_image(inputs["images"], "dinov2-vit-b")
                z = encoder(pixel_values=raw).last_hidden_state[:, 1:]  # x_norm_patchtokens
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss, proj_loss = loss_fn(model, x, dict(y=inputs["labels"]), zs=[z])
            loss = loss.mean() + 0.5 * proj_loss.mean()
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        off.update_ema(ema, model)

    return step, {"precision": "fp16 autocast + grad scaler" if amp else "fp32", "model": model}


def ours_step(
    variant: str, s, inputs, encoder, device, checkpoint_blocks: int | None = None
) -> tuple[Callable[[], None], dict[str, Any]]:
    torch.manual_seed(0)
    with device:
        transformer = our_sit(s)
        projector = REPAProjector(hidden_size=s["hidden"], projector_dim=s["projector"], z_dims=[s["enc_hidden"]])
    transformer.train()
    alignment_encoder = AlignmentEncoder(
        encoder,
        name="dinov2-shaped",
        resolution=s["resolution"],
        input_size=s["enc_input"],
        grid_size=s["enc_input"] // s["enc_patch"],
        embed_dim=s["enc_hidden"],
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        num_prefix_tokens=1,
        normalize_before_resize=True,
    ).to(device)
    if checkpoint_blocks is not None:
        transformer.enable_gradient_checkpointing(num_blocks=checkpoint_blocks)
    if variant in ("compiled", "compiled_checkpointed"):
        transformer.compile_repeated_blocks(fullgraph=True)
    trainable = list(transformer.parameters()) + list(projector.parameters())
    fused = variant not in ("eager", "foreach_ema", "lerp_ema")
    optimizer = torch.optim.AdamW(
        trainable, lr=1e-4, betas=(0.9, 0.999), weight_decay=0, eps=1e-8, **({"fused": True} if fused else {})
    )
    ema = EMAModel(transformer.parameters(), decay=0.9999, min_decay=0.9999, foreach=variant == "foreach_ema")
    ema.to(device)
    ema_step = ema.step if variant in ("eager", "foreach_ema") else lambda parameters: update_ema(ema, parameters)
    loss_fn = REPALoss(proj_coeff=0.5)
    amp = device.type == "cuda"

    def step() -> None:
        clean = sample_posterior(inputs["moments"], 0.18215)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            targets = [alignment_encoder(inputs["images"])]
            out = loss_fn(transformer, projector, clean, inputs["labels"], targets)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_step(transformer.parameters())

    precision = "bf16 autocast" if amp else "fp32"
    if checkpoint_blocks is not None:
        precision += f", first {checkpoint_blocks} blocks checkpointed"
    return step, {"precision": precision, "model": transformer}


def step_flops(s: dict[str, int], batch: int) -> float:
    """Matmul FLOPs of one training step as the official code computes it (SiT fwd+bwd = 3x fwd, encoder fwd)."""
    tokens, d = (s["latent"] // s["patch"]) ** 2, s["hidden"]
    block = 24 * tokens * d * d + 4 * tokens * tokens * d + 2 * 6 * d * d
    projector = 2 * tokens * (d * s["projector"] + s["projector"] ** 2 + s["projector"] * s["enc_hidden"])
    sit = s["depth"] * block + projector + 2 * tokens * d * s["patch"] ** 2 * 4 * 2
    enc_tokens, e = (s["enc_input"] // s["enc_patch"]) ** 2 + 1, s["enc_hidden"]
    encoder = s["enc_layers"] * (24 * enc_tokens * e * e + 4 * enc_tokens * enc_tokens * e)
    return batch * (3 * sit + encoder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official_dir", required=True, help="a clone of github.com/sihyun-yu/REPA")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 8 tiny, 256 real")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per candidate (best kept)")
    parser.add_argument(
        "--variants", default=",".join(DEFAULT_VARIANTS), help=f"ours to run, a subset of {','.join(OURS)}"
    )
    parser.add_argument(
        "--checkpoint_blocks", type=int, default=None, help="blocks checkpointed in `checkpointed` (12 real, 2 tiny)"
    )
    parser.add_argument(
        "--compiled_checkpoint_blocks",
        type=int,
        default=None,
        help="blocks checkpointed in `compiled_checkpointed` (3 real, 1 tiny)",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device for MFU (default: 989 on H100/H200)",
    )
    parser.add_argument(
        "--sequential", action="store_true", help="time one candidate after another (the CUDA way) on the CPU too"
    )
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(OURS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {','.join(OURS)}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    batch = args.batch_size or (8 if args.tiny else 256)
    repeats = args.repeats or (10 if device.type == "cpu" else 5)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # both: --allow-tf32
    off = load_official(args.official_dir)
    s = model_sizes(args.tiny)
    inputs = make_inputs(s, batch, device)
    encoder = make_encoder(s, device)
    builders = {"official": lambda: official_step(off, s, inputs, encoder, device)}
    blocks = {
        "checkpointed": (2 if args.tiny else 12) if args.checkpoint_blocks is None else args.checkpoint_blocks,
        "compiled_checkpointed": (1 if args.tiny else 3)
        if args.compiled_checkpoint_blocks is None
        else args.compiled_checkpoint_blocks,
    }
    wrong = {name: count for name, count in blocks.items() if not 1 <= count <= s["depth"]}
    if wrong:
        parser.error(f"checkpointed blocks {wrong}: the SiT here has {s['depth']} blocks (1 to {s['depth']})")
    builders.update(
        {f"ours_{v}": (lambda v=v: ours_step(v, s, inputs, encoder, device, blocks.get(v))) for v in variants}
    )

    results: dict[str, dict[str, Any]] = {}
    if device.type == "cpu" and not args.sequential:  # all fit: interleave
        steps, first = {}, {}
        for name, build in builders.items():
            steps[name], results[name] = build()
            results[name].pop("model")
            first[name] = time_once(steps[name], device)
        for name, seconds in best_times(steps, device, repeats, warmup=1).items():
            results[name].update(first_step_s=first[name], step_s=seconds)
    else:  # one after another, memory freed in between
        for name, build in builders.items():
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            try:
                step, info = build()
                info.pop("model")
                first_step = time_once(step, device)
                seconds = best_times({name: step}, device, repeats, warmup=2)[name]
                info.update(first_step_s=first_step, step_s=seconds)
                if device.type == "cuda":
                    info["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            except torch.OutOfMemoryError as error:
                info = {"error": f"out of memory: {str(error)[:200]}"}
            results[name] = info
            step = None
            gc.collect()
            torch._dynamo.reset()

    env = environment(device)
    peak = args.peak_tflops or (989.0 if any(k in env["device"] for k in ("H100", "H200")) else None)
    flops = step_flops(s, batch)
    official_rate = batch / results["official"]["step_s"] if "step_s" in results["official"] else None
    rows = []
    for name, info in results.items():
        if "step_s" not in info:
            rows.append([name, "-", "-", "-", "-", "-", "-", info.get("error", "")])
            continue
        rate = batch / info["step_s"]
        info["images_per_s"] = rate
        info["vs_official"] = rate / official_rate if official_rate else None
        info["tflops"] = flops / info["step_s"] / 1e12
        info["mfu"] = info["tflops"] / peak if peak else None
        rows.append(
            [
                name,
                info["precision"],
                info["step_s"],
                rate,
                info["vs_official"],
                info["first_step_s"],
                info.get("peak_gib", "-"),
                f"{info['mfu']:.1%}" if peak else "-",
            ]
        )
    print(
        f"{env['device']}, torch {env['torch']}, {env['torch_threads']} threads, batch {batch}, "
        f"{'tiny' if args.tiny else 'SiT-XL/2 + DINOv2-B'}, best of {repeats} "
        f"({'wall' if device.type == 'cuda' else 'process CPU'} time), load {env.get('load_average')}"
    )
    print_table(["step", "precision", "s / step", "images / s", "vs official", "first step s", "peak GiB", "MFU"], rows)
    print_json(
        {
            "bench": "train",
            "tiny": args.tiny,
            "batch": batch,
            "repeats": repeats,
            "env": env,
            "official_commit": official_commit(args.official_dir),
            "step_gflops": flops / 1e9,
            "results": results,
        }
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - start:.0f} s")
