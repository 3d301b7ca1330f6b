"""Sampling speed at the paper's settings: REPAPipeline exact and fast modes against the official samplers.

Settings (guidance 1.8 on t <= 0.7, as the paper's FID run): the SDE sampler with 250 steps (`sde`, the FID 1.42
setting) and Heun with 50 steps (`heun`). Candidates, in the same process on the same model weights and the same
initial noise:

* `official`: the official `euler_maruyama_sampler` / `euler_sampler(heun=True)` and `SiT` imported from
  `--official_dir` (a clone of github.com/sihyun-yu/REPA), float32 model as its `generate.py` runs it (TF32 on);
* `exact`: `REPAPipeline(...)` with the default `fast=False` (float64 state, the model in float32);
* `fast`: `REPAPipeline(..., fast=True)`: float32 state, bf16 autocast on CUDA (float32 on CPU), no host syncs;
* `fast_fused_qkv` (opt-in with `--modes`): `fast` on a copy of the model after `fuse_qkv_projections()`;
* `fast_compiled` (CUDA, `--compile`): `fast` after `transformer.compile_repeated_blocks(fullgraph=True)`;
* `fast_cudagraphs` (CUDA, `--compile`): `fast` after
  `transformer.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)`, the whole model compiled and
  replayed as CUDA graphs (one static graph per batch shape: with and without guidance), which
  removes the per-kernel launch cost of the 250-call loop. A candidate that fails is reported, the others still run.

The official SDE draws its noise from the global generator; ours from a generator seeded the same, so both see the
same noise and the table reports the relative L2 difference of the final latents (`exact` vs `official`, and
`fast` vs `exact`). Weights are random but perturbed away from the adaLN-zero init, so the samples are not trivial.
Only the transformer + sampler loop is timed (`output_type="latent"`, no VAE decode).

Sizes: `--tiny` (CPU: a 5-block SiT of width 96 on 8x8x4 latents, batch 8) or the real one (SiT-XL/2 at 256 px,
batch 64, about 3 minutes on one H100/H200, estimated). On CPU the candidates are timed interleaved (best of
`--repeats`, process CPU time); on CUDA each one after a 3-step warm-up that meets both batch shapes (with and
without guidance), `--repeats` times (default once).

```bash
python benchmarks/bench_sampling.py --tiny --official_dir /tmp/official-repa
python benchmarks/bench_sampling.py --official_dir /tmp/official-repa               # GPU, real size
python benchmarks/bench_sampling.py --official_dir /tmp/official-repa --samplers sde --modes fast --compile
```
Prints a Markdown table and one `JSON {...}` line.
"""

import argparse
import copy
import time
from collections.abc import Callable

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
    relative_l2,
    synchronize,
)
from diffusers.utils import logging

from diffusers_repa import REPAPipeline, SiTEulerMaruyamaScheduler, SiTHeunScheduler, SiTTransformer2DModel
from diffusers_repa.convert import official_to_diffusers_state_dict

SAMPLERS = {"sde": (SiTEulerMaruyamaScheduler, 250), "heun": (SiTHeunScheduler, 50)}
MODES = ("official", "exact", "fast", "fast_fused_qkv")
DEFAULT_MODES = ("official", "exact", "fast")
GUIDANCE_SCALE, GUIDANCE_INTERVAL = 1.8, (0.0, 0.7)


def build_models(off, tiny: bool, device: torch.device) -> tuple[torch.nn.Module, SiTTransformer2DModel]:
    """The official SiT (random, perturbed away from the adaLN-zero init) and ours with the same weights."""
    s = model_sizes(tiny)
    torch.manual_seed(0)
    with device:
        official = official_sit(off, s).eval()
        with torch.no_grad():
            for name, parameter in official.named_parameters():
                if name != "pos_embed":
                    parameter.add_(torch.randn_like(parameter) * 0.02)
        ours = our_sit(s).eval()
    ours.load_state_dict(official_to_diffusers_state_dict(official.state_dict(), s["depth"]), strict=True)
    return official, ours


def count_calls(module: torch.nn.Module | None, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, int | None]:
    """`fn()` and the number of calls of `module` it made (None for no module: a hook would be traced into a
    whole-model compile and recompile it)."""
    if module is None:
        return fn(), None
    calls = []
    handle = module.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        return fn(), len(calls)
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official_dir", required=True, help="a clone of github.com/sihyun-yu/REPA")
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 8 tiny, 64 real")
    parser.add_argument("--samplers", default="sde,heun", help="subset of sde,heun")
    parser.add_argument(
        "--modes", default=",".join(DEFAULT_MODES), help=f"subset of {','.join(MODES)} (default: %(default)s)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="CUDA: add fast_compiled (per block) and fast_cudagraphs (whole model)"
    )
    parser.add_argument("--steps", type=int, default=None, help="override the steps of every sampler (quick checks)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per candidate (default: 5 CPU, 1 CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sequential", action="store_true", help="time one candidate after another (the CUDA way) on the CPU too"
    )
    args = parser.parse_args()
    samplers = [name for name in args.samplers.split(",") if name]
    modes = [name for name in args.modes.split(",") if name]
    if set(samplers) - set(SAMPLERS) or set(modes) - set(MODES):
        parser.error(f"--samplers must be a subset of {','.join(SAMPLERS)} and --modes of {','.join(MODES)}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    if args.compile and device.type != "cuda" and not args.sequential:
        parser.error(
            "--compile is for the CUDA run (inductor on CPU is slower to build than the runs it speeds up); add "
            "--sequential to try its code path on the CPU"
        )
    if args.compile:
        modes += ["fast_compiled", "fast_cudagraphs"]
    batch = args.batch_size or (8 if args.tiny else 64)
    repeats = args.repeats or (5 if device.type == "cpu" else 1)
    logging.set_verbosity_error()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # generate.py's default --tf32
    off = load_official(args.official_dir)
    official_model, transformer = build_models(off, args.tiny, device)
    size = transformer.config.sample_size
    generator = torch.Generator().manual_seed(args.seed)
    latents = torch.randn(batch, 4, size, size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch,), generator=generator).to(device)

    fused = None
    if "fast_fused_qkv" in modes:
        fused = copy.deepcopy(transformer)
        fused.fuse_qkv_projections()
    compiled = graphed = None
    if args.compile:  # copies, so that the other candidates keep the eager model
        compiled, graphed = copy.deepcopy(transformer), copy.deepcopy(transformer)
        compiled.compile_repeated_blocks(fullgraph=True)
        graphed.compile(mode="reduce-overhead", fullgraph=True, dynamic=False)  # one static graph per batch shape

    results, rows = {}, []
    for sampler in samplers:
        scheduler_cls, default_steps = SAMPLERS[sampler]
        steps = args.steps or default_steps
        pipeline = REPAPipeline(transformer, scheduler_cls(), latent_scale=1.0)
        pipeline.set_progress_bar_config(disable=True)
        compiled_pipeline = REPAPipeline(compiled, scheduler_cls(), latent_scale=1.0) if compiled else None
        graphed_pipeline = REPAPipeline(graphed, scheduler_cls(), latent_scale=1.0) if graphed else None
        fused_pipeline = REPAPipeline(fused, scheduler_cls(), latent_scale=1.0) if fused else None
        for other in (compiled_pipeline, graphed_pipeline, fused_pipeline):
            if other is not None:
                other.set_progress_bar_config(disable=True)

        def official(steps=steps, sampler=sampler) -> torch.Tensor:
            torch.manual_seed(args.seed)  # the official SDE draws from the global generator of the device
            kwargs = dict(
                num_steps=steps,
                cfg_scale=GUIDANCE_SCALE,
                guidance_low=GUIDANCE_INTERVAL[0],
                guidance_high=GUIDANCE_INTERVAL[1],
                path_type="linear",
            )
            with torch.no_grad():
                if sampler == "sde":
                    return off.euler_maruyama_sampler(official_model, latents, labels, **kwargs)
                return off.euler_sampler(official_model, latents, labels, heun=True, **kwargs)

        def ours(fast: bool, steps=steps, pipeline=pipeline) -> torch.Tensor:
            return pipeline(
                labels,
                num_inference_steps=steps,
                guidance_scale=GUIDANCE_SCALE,
                guidance_interval=GUIDANCE_INTERVAL,
                latents=latents,
                output_type="latent",
                fast=fast,
                generator=torch.Generator(device).manual_seed(args.seed),
            ).images

        candidates = {
            "official": official,
            "exact": lambda steps=steps: ours(False, steps),
            "fast": lambda steps=steps: ours(True, steps),
            "fast_fused_qkv": lambda steps=steps, p=fused_pipeline: ours(True, steps, pipeline=p),
            "fast_compiled": lambda steps=steps, p=compiled_pipeline: ours(True, steps, pipeline=p),
            "fast_cudagraphs": lambda steps=steps, p=graphed_pipeline: ours(True, steps, pipeline=p),
        }
        models = {
            "official": official_model,
            "exact": transformer,
            "fast": transformer,
            "fast_fused_qkv": fused,
            "fast_compiled": compiled,
            "fast_cudagraphs": None,  # the same calls as `fast`
        }
        candidates = {name: candidates[name] for name in modes}
        outputs, calls, seconds = {}, {}, {}
        if device.type == "cpu" and not args.sequential:
            for name, fn in candidates.items():  # one untimed run each: outputs, call counts, warm-up
                outputs[name], calls[name] = count_calls(models[name], fn)
            seconds = best_times(candidates, device, repeats, warmup=0)
        else:  # CUDA: a 3-step warm-up (unguided and guided batch shapes; compiles), then timed full runs
            for name, fn in candidates.items():
                try:
                    start = time.perf_counter()
                    fn(steps=min(steps, 3))
                    synchronize(device)
                    results[f"{sampler}/{name}/warmup_s"] = time.perf_counter() - start
                    for _ in range(repeats):
                        start = time.perf_counter()
                        outputs[name], calls[name] = count_calls(models[name], fn)
                        synchronize(device)
                        seconds[name] = min(seconds.get(name, float("inf")), time.perf_counter() - start)
                except Exception as error:  # report it and go on: one GPU call measures everything else
                    results[f"{sampler}/{name}/error"] = f"{type(error).__name__}: {str(error)[:300]}"
                    outputs.pop(name, None), seconds.pop(name, None)
        reference = {
            "official": None,
            "exact": "official",
            "fast": "exact",
            "fast_fused_qkv": "exact",
            "fast_compiled": "exact",
            "fast_cudagraphs": "exact",
        }
        for name in candidates:
            if name not in seconds:
                rows.append([sampler, steps, name, "-", "-", "-", "-", results[f"{sampler}/{name}/error"]])
                continue
            rate = batch / seconds[name]
            against = reference[name]
            if against == "exact" and "exact" not in outputs:  # exact mode not run: the official output equals it
                against = "official"
            against = against if against in outputs else None
            record = {
                "steps": steps,
                "model_calls": calls[name] if calls[name] is not None else calls.get("fast"),
                "s_per_batch": seconds[name],
                "images_per_s": rate,
                "vs_official": rate * seconds["official"] / batch if "official" in seconds else None,
                "rel_l2_vs": against,
                "rel_l2": relative_l2(outputs[name], outputs[against]) if against else None,
            }
            results[f"{sampler}/{name}"] = record
            rows.append(
                [
                    sampler,
                    steps,
                    name,
                    record["model_calls"],
                    seconds[name],
                    rate,
                    record["vs_official"],
                    f"{record['rel_l2']:.2e} vs {against}" if against else "-",
                ]
            )
        # This sampler's figures at once: a run stopped by a time limit keeps what it measured.
        print_json({"bench": "sampling_partial", "sampler": sampler, "batch": batch, "results": dict(results)})

    env = environment(device)
    print(
        f"{env['device']}, torch {env['torch']}, {env['torch_threads']} threads, batch {batch}, "
        f"{'tiny SiT' if args.tiny else 'SiT-XL/2'}, guidance {GUIDANCE_SCALE} on t <= {GUIDANCE_INTERVAL[1]}, "
        f"best of {repeats} ({'wall' if device.type == 'cuda' else 'process CPU'} time), "
        f"load {env.get('load_average')}"
    )
    print_table(
        ["sampler", "steps", "mode", "model calls", "s / batch", "images / s", "vs official", "final latents rel. L2"],
        rows,
    )
    print_json(
        {
            "bench": "sampling",
            "tiny": args.tiny,
            "batch": batch,
            "repeats": repeats,
            "env": env,
            "official_commit": official_commit(args.official_dir),
            "results": results,
        }
    )


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"wall {time.perf_counter() - start:.0f} s")
