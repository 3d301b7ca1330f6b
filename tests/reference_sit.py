"""An independent, functional SiT written from the maths of the official REPA model (repa-reference.md §1).

It reads weights in the official key layout (fused qkv, `x_embedder`, `blocks.i.*`, `projectors.j.*`), so a test
can check our converter and model on configs the recorded fixtures do not cover (other patch sizes, widths, head
counts, qk-norm). It shares no code with `diffusers_repa`.
"""

import math

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def official_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE 2-D sin-cos table (1, grid*grid, dim): first half from the column index, second from the row."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    table = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    return table.float().unsqueeze(0)


def random_official_state_dict(
    hidden: int,
    depth: int,
    patch: int,
    channels: int,
    grid: int,
    num_classes: int,
    z_dims: list[int],
    projector_dim: int,
    qk_norm: bool = False,
    heads: int = 1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random (non-zero everywhere) weights in the official layout."""
    gen = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * scale

    sd = {
        "pos_embed": official_pos_embed(hidden, grid),
        "x_embedder.proj.weight": r(hidden, channels, patch, patch, scale=0.2),
        "x_embedder.proj.bias": r(hidden),
        "t_embedder.mlp.0.weight": r(hidden, 256, scale=0.2),
        "t_embedder.mlp.0.bias": r(hidden),
        "t_embedder.mlp.2.weight": r(hidden, hidden, scale=0.2),
        "t_embedder.mlp.2.bias": r(hidden),
        "y_embedder.embedding_table.weight": r(num_classes + 1, hidden, scale=0.5),
    }
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "attn.qkv.weight": r(3 * hidden, hidden, scale=0.1),
                b + "attn.qkv.bias": r(3 * hidden),
                b + "attn.proj.weight": r(hidden, hidden, scale=0.1),
                b + "attn.proj.bias": r(hidden),
                b + "mlp.fc1.weight": r(4 * hidden, hidden, scale=0.1),
                b + "mlp.fc1.bias": r(4 * hidden),
                b + "mlp.fc2.weight": r(hidden, 4 * hidden, scale=0.1),
                b + "mlp.fc2.bias": r(hidden),
                b + "adaLN_modulation.1.weight": r(6 * hidden, hidden),
                b + "adaLN_modulation.1.bias": r(6 * hidden),
            }
        )
        if qk_norm:
            head_dim = hidden // heads
            sd.update(
                {
                    b + "attn.q_norm.weight": 1 + r(head_dim),
                    b + "attn.q_norm.bias": r(head_dim),
                    b + "attn.k_norm.weight": 1 + r(head_dim),
                    b + "attn.k_norm.bias": r(head_dim),
                }
            )
    sd.update(
        {
            "final_layer.adaLN_modulation.1.weight": r(2 * hidden, hidden),
            "final_layer.adaLN_modulation.1.bias": r(2 * hidden),
            "final_layer.linear.weight": r(patch * patch * channels, hidden, scale=0.1),
            "final_layer.linear.bias": r(patch * patch * channels),
        }
    )
    for j, z_dim in enumerate(z_dims):
        p = f"projectors.{j}."
        sd.update(
            {
                p + "0.weight": r(projector_dim, hidden, scale=0.1),
                p + "0.bias": r(projector_dim),
                p + "2.weight": r(projector_dim, projector_dim, scale=0.1),
                p + "2.bias": r(projector_dim),
                p + "4.weight": r(z_dim, projector_dim, scale=0.1),
                p + "4.bias": r(z_dim),
            }
        )
    return sd


def reference_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, heads: int, encoder_depth: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The official SiT forward (eval mode) on an official-layout state dict: (velocity, projector outputs)."""
    w = sd["x_embedder.proj.weight"]
    hidden, patch = w.shape[0], w.shape[2]
    batch = x.shape[0]
    h = F.conv2d(x, w, sd["x_embedder.proj.bias"], stride=patch).flatten(2).transpose(1, 2) + sd["pos_embed"]

    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    t_emb = F.linear(
        F.silu(F.linear(t_freq, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
        sd["t_embedder.mlp.2.weight"],
        sd["t_embedder.mlp.2.bias"],
    )
    c = t_emb + sd["y_embedder.embedding_table.weight"][y]

    def modulate(v, shift, scale):
        return v * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)

    zs = []
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        b = f"blocks.{i}."
        mods = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"], sd[b + "adaLN_modulation.1.bias"])
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)
        a = modulate(F.layer_norm(h, (hidden,), eps=1e-6), shift_msa, scale_msa)
        qkv = F.linear(a, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        qkv = qkv.reshape(batch, -1, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if b + "attn.q_norm.weight" in sd:
            q = F.layer_norm(q, (hidden // heads,), sd[b + "attn.q_norm.weight"], sd[b + "attn.q_norm.bias"])
            k = F.layer_norm(k, (hidden // heads,), sd[b + "attn.k_norm.weight"], sd[b + "attn.k_norm.bias"])
        attn = torch.softmax(q @ k.transpose(-2, -1) * (hidden // heads) ** -0.5, dim=-1) @ v
        attn = F.linear(
            attn.transpose(1, 2).reshape(batch, -1, hidden), sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"]
        )
        h = h + gate_msa.unsqueeze(1) * attn
        m = modulate(F.layer_norm(h, (hidden,), eps=1e-6), shift_mlp, scale_mlp)
        m = F.gelu(F.linear(m, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh")
        h = h + gate_mlp.unsqueeze(1) * F.linear(m, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        if i + 1 == encoder_depth:
            j = 0
            while f"projectors.{j}.0.weight" in sd:
                p = f"projectors.{j}."
                z = F.silu(F.linear(h, sd[p + "0.weight"], sd[p + "0.bias"]))
                z = F.silu(F.linear(z, sd[p + "2.weight"], sd[p + "2.bias"]))
                zs.append(F.linear(z, sd[p + "4.weight"], sd[p + "4.bias"]))
                j += 1

    shift, scale = F.linear(
        F.silu(c), sd["final_layer.adaLN_modulation.1.weight"], sd["final_layer.adaLN_modulation.1.bias"]
    ).chunk(2, dim=1)
    out = F.linear(
        modulate(F.layer_norm(h, (hidden,), eps=1e-6), shift, scale),
        sd["final_layer.linear.weight"],
        sd["final_layer.linear.bias"],
    )
    out_channels = out.shape[-1] // (patch * patch)
    grid = int(math.isqrt(out.shape[1]))
    out = out.reshape(batch, grid, grid, patch, patch, out_channels)
    out = torch.einsum("nhwpqc->nchpwq", out).reshape(batch, out_channels, grid * patch, grid * patch)
    return out, zs
