"""All GPU checks in one run: CUDA parity, bf16, determinism, torch.compile, and SiT-XL/2 speed at batch 256.

What the CPU cannot show, measured in one call so that it fits a short GPU lease:

1. fp32 CUDA parity of the converted official tiny SiT (model and ODE/SDE samplers) with the official numbers;
2. bf16 autocast against fp32 (tiny official model and a perturbed SiT-XL/2);
3. pipeline determinism with a CUDA and a CPU generator;
4. `torch.compile` (inductor) of the transformer: same output as eager, and its speed;
5. SiT-XL/2 REPA training step at batch 256 (bf16 autocast, AdamW, REPA loss with a DINOv2-B-sized encoder):
   images/s and peak memory, eager vs compiled vs gradient checkpointing;
6. SiT-XL/2 sampling at batch 256: seconds per model call with and without CFG, extrapolated to the paper's
   SDE 250-step setting and to Heun 50 steps, and the VAE decode.

Each section is independent: a failure is recorded and the next one runs. Results go to `--out/results.json` and
stdout. `--tiny` runs every section with tiny configs on the CPU, to test this script before spending GPU time.

    python benchmarks/bench_gpu.py --tiny --out /tmp/bench
    python benchmarks/bench_gpu.py --out $OUT           # on the GPU machine
"""

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffusers_repa import REPAPipeline, REPAProjector, SiTTransformer2DModel
from diffusers_repa.alignment import REPALoss
from diffusers_repa.convert import convert_official_state_dict
from diffusers_repa.schedulers import SiTEulerMaruyamaScheduler, SiTEulerScheduler, SiTHeunScheduler

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official-repa"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall seconds of `fn` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def official_tiny(device: torch.device) -> tuple[SiTTransformer2DModel, REPAProjector]:
    transformer, projector = convert_official_state_dict(
        load_file(FIXTURES / "tiny_sit_state_dict.safetensors"), num_attention_heads=6, alignment_depth=3
    )
    return transformer.to(device).eval(), projector.to(device).eval()


def big_model(args: argparse.Namespace, device: torch.device) -> SiTTransformer2DModel:
    """SiT-XL/2 (or a tiny stand-in), perturbed so that its output is not the adaLN-zero constant."""
    if args.tiny:
        model = SiTTransformer2DModel(
            sample_size=8, num_layers=4, num_attention_heads=2, attention_head_dim=16, alignment_depth=2
        )
    else:
        model = SiTTransformer2DModel.from_preset("SiT-XL/2", alignment_depth=8)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return model.to(device)


def section_parity(args, device, results):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    transformer, projector = official_tiny(device)
    fw = load_file(FIXTURES / "tiny_sit_forward.safetensors")
    with torch.no_grad():
        out = transformer(fw["x"].to(device), fw["t"].to(device), fw["y"].to(device), output_alignment_states=True)
        zs = projector(out.alignment_states)[0]
    results["forward_max_abs_diff"] = (out.sample.cpu() - fw["out"]).abs().max().item()
    results["projector_max_abs_diff"] = (zs.cpu() - fw["zs_0"]).abs().max().item()

    samplers = load_file(FIXTURES / "samplers.safetensors")
    latents, labels = samplers["latents"].to(device), samplers["labels"].tolist()
    runs = {
        "ode_heun_cfg": (SiTHeunScheduler(), 1.8, (0.0, 0.7), "linear"),
        "ode_euler_cfg_full": (SiTEulerScheduler(), 4.0, (0.0, 1.0), "linear"),
        "sde_cfg": (SiTEulerMaruyamaScheduler(), 1.8, (0.0, 0.7), "linear"),
        "sde_cfg_cosine": (SiTEulerMaruyamaScheduler(path_type="cosine"), 1.8, (0.0, 0.7), "cosine"),
    }
    for name, (scheduler, scale, interval, _) in runs.items():
        noises = samplers.get(f"{name}.noises")
        pipe = REPAPipeline(transformer=transformer, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        sample = pipe(
            labels,
            num_inference_steps=8,
            guidance_scale=scale,
            guidance_interval=interval,
            latents=latents,
            noise_sampler=(lambda i, x, n=noises: n[i].to(x)) if noises is not None else None,
            output_type="latent",
        ).images
        results[f"{name}_max_abs_diff"] = (sample.double().cpu() - samplers[f"{name}.sample"]).abs().max().item()
    torch.backends.cuda.matmul.allow_tf32 = True


def section_bf16(args, device, results):
    transformer, _ = official_tiny(device)
    fw = load_file(FIXTURES / "tiny_sit_forward.safetensors")
    x, t, y = fw["x"].to(device), fw["t"].to(device), fw["y"].to(device)
    with torch.no_grad():
        reference = transformer(x, t, y).sample
        with torch.autocast(device.type, dtype=torch.bfloat16):
            autocast_out = transformer(x, t, y).sample.float()
        bf16_out = transformer.to(torch.bfloat16)(x.bfloat16(), t, y).sample.float()
    results["tiny_autocast_max_abs_diff"] = (autocast_out - reference).abs().max().item()
    results["tiny_bf16_weights_max_abs_diff"] = (bf16_out - reference).abs().max().item()
    model = big_model(args, device).eval()
    size, channels = model.config.sample_size, model.config.in_channels
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, channels, size, size, generator=generator).to(device)
    t, y = torch.rand(8, generator=generator).to(device), torch.randint(0, 1000, (8,), generator=generator).to(device)
    with torch.no_grad():
        reference = model(x, t, y).sample
        with torch.autocast(device.type, dtype=torch.bfloat16):
            low = model(x, t, y).sample.float()
    results["xl_autocast_rel_err"] = ((low - reference).norm() / reference.norm()).item()


def section_determinism(args, device, results):
    transformer, _ = official_tiny(device)
    pipe = REPAPipeline(transformer=transformer, scheduler=SiTEulerMaruyamaScheduler())
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(class_labels=[1, 2, 3], num_inference_steps=6, output_type="latent")
    gens = {"cuda_generator": device, "cpu_generator": torch.device("cpu")}
    for name, gen_device in gens.items():
        first = pipe(generator=torch.Generator(gen_device).manual_seed(0), **kwargs).images
        second = pipe(generator=torch.Generator(gen_device).manual_seed(0), **kwargs).images
        results[f"{name}_identical"] = bool(torch.equal(first, second))
    cpu_pipe = REPAPipeline(transformer=official_tiny(torch.device("cpu"))[0], scheduler=SiTEulerMaruyamaScheduler())
    cpu_pipe.set_progress_bar_config(disable=True)
    on_cpu = cpu_pipe(generator=torch.Generator("cpu").manual_seed(0), **kwargs).images
    on_device = pipe(generator=torch.Generator("cpu").manual_seed(0), **kwargs).images
    results["cpu_generator_cpu_vs_device_max_abs_diff"] = (on_cpu - on_device.cpu()).abs().max().item()


def make_encoder(args, device):
    """A DINOv2-B-sized random encoder (the timing of the real one; weights do not change its cost)."""
    from transformers import Dinov2Config, Dinov2Model

    if args.tiny:
        config = Dinov2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=28,
            patch_size=7,
        )
        resolution = 28
    else:
        config = Dinov2Config(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            image_size=224,
            patch_size=14,
        )
        resolution = 224
    return Dinov2Model(config).to(device).eval().requires_grad_(False), resolution


def section_training(args, device, results):
    batch = 4 if args.tiny else args.batch_size
    encoder, resolution = make_encoder(args, device)
    loss_fn = REPALoss()
    for mode in ("eager", "compiled", "gradient_checkpointing"):
        try:
            reset_peak(device)
            model = big_model(args, device).train()
            projector = REPAProjector(
                hidden_size=model.hidden_size,
                projector_dim=2048 if not args.tiny else 16,
                z_dims=[encoder.config.hidden_size],
            ).to(device)
            if mode == "compiled":
                model.compile_repeated_blocks(fullgraph=True)
            if mode == "gradient_checkpointing":
                model.enable_gradient_checkpointing()
            optimizer = torch.optim.AdamW(
                list(model.parameters()) + list(projector.parameters()),
                lr=1e-4,
                weight_decay=0,
                fused=device.type == "cuda",
            )
            size = model.config.sample_size
            latents = torch.randn(batch, 4, size, size, device=device)
            images = torch.rand(batch, 3, resolution, resolution, device=device)
            labels = torch.randint(0, 1000, (batch,), device=device)

            # This iteration's objects are bound as defaults (not looked up when called); `finally` drops `step`.
            def step(
                model=model, projector=projector, optimizer=optimizer, images=images, latents=latents, labels=labels
            ):
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                    features = encoder(pixel_values=images).last_hidden_state[:, 1:]
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    out = loss_fn(model, projector, latents, labels, [features.float()])
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            start = time.perf_counter()
            step()
            synchronize(device)
            first_step = time.perf_counter() - start
            seconds = timed(step, device, warmup=2, repeats=args.repeats)
            results[mode] = {
                "batch": batch,
                "first_step_s": round(first_step, 2),
                "step_s": round(seconds, 4),
                "images_per_s": round(batch / seconds, 1),
                "peak_gib": peak_memory_gib(device),
            }
        except Exception as error:  # noqa: BLE001 - one mode failing (e.g. OOM) must not hide the others
            results[mode] = f"failed: {type(error).__name__}: {str(error)[:300]}"
        finally:
            model = projector = optimizer = step = None
            torch._dynamo.reset()


def inference_setup(args, device):
    """The perturbed big model in eval mode, a batch of inputs (x, t, y) and a bf16-autocast no-grad caller."""
    model = big_model(args, device).eval()
    batch = 4 if args.tiny else args.batch_size
    size = model.config.sample_size
    x = torch.randn(batch, 4, size, size, device=device)
    t, y = torch.rand(batch, device=device), torch.randint(0, 1000, (batch,), device=device)

    def bf16_call(fn, *inputs):
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            return fn(*inputs).sample

    return model, (x, t, y), bf16_call


def section_compile_inference(args, device, results):
    model, inputs, bf16_call = inference_setup(args, device)
    eager_out = bf16_call(model, *inputs).float()
    results["eager_forward_s"] = round(timed(lambda: bf16_call(model, *inputs), device, 1, args.repeats), 4)
    compiled = torch.compile(model, fullgraph=True)
    start = time.perf_counter()
    compiled_out = bf16_call(compiled, *inputs).float()
    synchronize(device)
    results["compile_s"] = round(time.perf_counter() - start, 1)
    results["compiled_forward_s"] = round(timed(lambda: bf16_call(compiled, *inputs), device, 1, args.repeats), 4)
    results["compiled_vs_eager_rel_err"] = ((compiled_out - eager_out).norm() / eager_out.norm()).item()
    torch._dynamo.reset()


def section_sampling(args, device, results):
    model, (x, t, y), bf16_call = inference_setup(args, device)
    batch = x.shape[0]
    guided_inputs = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, 1000)]))
    cond_s = timed(lambda: bf16_call(model, x, t, y), device, warmup=1, repeats=args.repeats)
    cfg_s = timed(lambda: bf16_call(model, *guided_inputs), device, warmup=1, repeats=args.repeats)
    # SDE 250 steps with guidance on t <= 0.7: 172 guided (doubled) calls and 78 conditional ones.
    sde_s = 172 * cfg_s + 78 * cond_s
    # Heun 50 steps, guidance 1.8 on [0, 0.7]: corrector calls follow the step's decision; count them exactly.
    heun = SiTHeunScheduler()
    heun.set_timesteps(50)
    grid = heun.sigmas.tolist()
    guided_calls = sum(1 + (i < 49) for i in range(50) if grid[i] <= 0.7)
    heun_s = guided_calls * cfg_s + (99 - guided_calls) * cond_s
    results.update(
        {
            "batch": batch,
            "bf16_autocast": True,
            "model_call_cond_s": round(cond_s, 4),
            "model_call_cfg_s": round(cfg_s, 4),
            "sde250_cfg1.8_s_per_batch": round(sde_s, 1),
            "sde250_images_per_s": round(batch / sde_s, 2),
            "heun50_cfg1.8_s_per_batch": round(heun_s, 1),
            "heun50_images_per_s": round(batch / heun_s, 2),
        }
    )
    # The VAE decode (sd-vae-ft-ema architecture, random weights) of one batch.
    from diffusers import AutoencoderKL

    tiny_vae = dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4)
    vae_config = {} if not args.tiny else dict(tiny_vae, sample_size=64)
    vae = (
        AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=vae_config.get("block_out_channels", (128, 256, 512, 512)),
            layers_per_block=vae_config.get("layers_per_block", 2),
            norm_num_groups=vae_config.get("norm_num_groups", 32),
            latent_channels=4,
        )
        .to(device)
        .eval()
    )
    chunk = min(batch, 32)

    def decode():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            for start in range(0, batch, chunk):
                vae.decode(x[start : start + chunk] / 0.18215)

    results["vae_decode_batch_s"] = round(timed(decode, device, warmup=1, repeats=max(1, args.repeats // 2)), 3)


SECTIONS = {
    "parity_fp32": section_parity,
    "bf16": section_bf16,
    "determinism": section_determinism,
    "compile_inference": section_compile_inference,
    "training_step": section_training,
    "sampling": section_sampling,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, for a CPU dry run")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS)
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "tiny": args.tiny,
    }
    torch.backends.cuda.matmul.allow_tf32 = True
    for name in args.sections.split(","):
        section_results: dict[str, object] = {}
        start = time.perf_counter()
        try:
            SECTIONS[name](args, device, section_results)
        except Exception:  # noqa: BLE001 - record and go on to the next section
            section_results["error"] = traceback.format_exc(limit=4)[-1500:]
        section_results["section_s"] = round(time.perf_counter() - start, 1)
        results[name] = section_results
        print(name, json.dumps(section_results, indent=1), flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
