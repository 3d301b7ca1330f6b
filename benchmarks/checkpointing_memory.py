"""Activation memory of a SiT training step against the checkpointed blocks (`--gradient_checkpointing_blocks N`).

The question it answers before a GPU run: how much of SiT-XL/2's memory at batch 256 does checkpointing the first N
blocks remove, and is it in proportion to N, as the README's prediction for "batch 256 in 80 GB" assumes? It counts,
without a GPU, the bytes the forward pass keeps for the backward pass (every tensor autograd saves, each storage once,
plus the inputs a checkpointed block keeps to recompute itself; the weights are left out), under the same bf16
autocast as GPU training, at two small batches, and extrapolates the line through them to `--scale_to`: the part
that grows with the batch (activations) apart from the part that does not (autocast's bf16 copies of the weights,
also kept for backward). That is the saved-for-backward part of the peak only: weights, gradients, optimizer
state, the EMA, the encoder, temporaries and the allocator's slack come on top.

```bash
python benchmarks/checkpointing_memory.py    # SiT-XL/2, batches 1 and 2 -> 256 (1 min; RAM: 7 GB + 2 per count)
python benchmarks/checkpointing_memory.py --preset SiT-B/2 --blocks 0,4,12
```
Prints a Markdown table and one `JSON {...}` line.
"""

import argparse
import time

import torch
from bench_common import environment, print_json, print_table

from diffusers_repa import SiTTransformer2DModel


def saved_activation_bytes(model: SiTTransformer2DModel, batch: int, blocks: int, dtype: torch.dtype | None) -> int:
    """Bytes kept for backward by one forward of `model` with its first `blocks` blocks checkpointed (0: none)."""
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    kept: dict[int, int] = {}

    def keep(tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        keep(tensor)
        return tensor

    def checkpoint(block, *args):  # the inputs a checkpointed block holds to recompute itself
        for value in args:
            if torch.is_tensor(value):
                keep(value)
        return torch.utils.checkpoint.checkpoint(block.__call__, *args, use_reentrant=False)

    model.disable_gradient_checkpointing()
    if blocks:
        model.enable_gradient_checkpointing(checkpoint, num_blocks=blocks)
    generator = torch.Generator().manual_seed(0)
    size = model.config.sample_size
    latents = torch.randn(batch, model.config.in_channels, size, size, generator=generator)
    timesteps = torch.rand(batch, generator=generator)
    labels = torch.randint(0, model.config.num_classes, (batch,), generator=generator)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            output = model(latents, timesteps, labels, output_alignment_states=True)
            loss = output.sample.square().mean() + output.alignment_states.float().square().mean()
    del loss, output
    return sum(kept.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="SiT-XL/2")
    parser.add_argument("--batch_size", type=int, default=1, help="the smaller of the two batches run (and twice it)")
    parser.add_argument("--scale_to", type=int, default=256, help="the batch the figures are scaled to")
    parser.add_argument("--blocks", default="0,4,8,12,16,20,28", help="comma-separated checkpointed block counts")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="autocast as in GPU training")
    args = parser.parse_args()
    counts = [int(value) for value in args.blocks.split(",") if value]
    torch.manual_seed(0)
    model = SiTTransformer2DModel.from_preset(args.preset, sample_size=32, num_classes=1000).train()
    wrong = [count for count in counts if not 0 <= count <= model.config.num_layers]
    if wrong:
        parser.error(f"--blocks {wrong}: {args.preset} has {model.config.num_layers} blocks (0 = none checkpointed)")
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    batch = args.batch_size
    results, rows = [], []
    for blocks in counts:
        start = time.perf_counter()
        small, large = (saved_activation_bytes(model, batch, blocks, dtype) for batch in (batch, 2 * batch))
        per_sample = (large - small) / batch  # the line through the two batches: fixed part + per-sample part
        gib = (small - per_sample * batch + per_sample * args.scale_to) / 2**30
        fixed = (small - per_sample * batch) / 2**30
        results.append(
            {"blocks": blocks, "activations_gib": gib, "fixed_gib": fixed, "forward_s": time.perf_counter() - start}
        )
    base = results[0]["activations_gib"] if counts[0] == 0 else None
    for record in results:
        saved = None if base is None else base - record["activations_gib"]
        record["saved_gib"] = saved
        record["saved_per_block_gib"] = saved / record["blocks"] if saved is not None and record["blocks"] else None
        rows.append(
            [record["blocks"], record["activations_gib"], record["fixed_gib"], saved, record["saved_per_block_gib"]]
        )
    env = environment(torch.device("cpu"))
    print(
        f"{args.preset}, kept for backward at batches {batch} and {2 * batch}, extrapolated to {args.scale_to}, "
        f"{args.precision} autocast, torch {env['torch']}"
    )
    print_table(
        ["checkpointed blocks", "kept for backward GiB", "of which fixed (weight casts) GiB", "saved GiB",
         "saved GiB / block"],
        rows,
    )  # fmt: skip
    print_json({"bench": "checkpointing_memory", "preset": args.preset, "batch": args.batch_size,
                "scale_to": args.scale_to, "precision": args.precision, "env": env, "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
