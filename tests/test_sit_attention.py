"""SiT attention on diffusers' attention dispatcher: same numbers as before, `set_attention_backend` honoured."""

import pytest
import torch
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from diffusers_repa import SiTTransformer2DModel
from diffusers_repa.models.sit_transformer_2d import SiTAttention, SiTAttnProcessor

from .test_sit_transformer_2d import small_model

ATTENTION_KEYS = {
    "to_q.weight",
    "to_q.bias",
    "to_k.weight",
    "to_k.bias",
    "to_v.weight",
    "to_v.bias",
    "to_out.0.weight",
    "to_out.0.bias",
}


def perturbed_model(**overrides) -> SiTTransformer2DModel:
    """The small perturbed SiT of `test_sit_transformer_2d`, with 3 heads, in eval mode."""
    return small_model(**{"num_attention_heads": 3, **overrides}).eval()


def inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    return (
        torch.randn(batch, 4, 8, 8, generator=generator),
        torch.rand(batch, generator=generator),
        torch.randint(0, 11, (batch,), generator=generator),
    )


@pytest.fixture
def restore_active_backend(monkeypatch):
    # `set_attention_backend` also sets diffusers' process-wide active backend; give it back after the test.
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_same_keys_and_bitwise_same_output_as_diffusers_attention(qk_norm):
    torch.manual_seed(0)
    ours = SiTAttention(24, heads=3, dim_head=8, qk_norm=qk_norm).eval()
    legacy = Attention(
        24, heads=3, dim_head=8, bias=True, qk_norm="layer_norm" if qk_norm else None, processor=AttnProcessor2_0()
    ).eval()
    expected_keys = ATTENTION_KEYS | (
        {"norm_q.weight", "norm_q.bias", "norm_k.weight", "norm_k.bias"} if qk_norm else set()
    )
    assert set(ours.state_dict()) == expected_keys
    with torch.no_grad():
        for parameter in ours.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    legacy.load_state_dict(ours.state_dict(), strict=True)
    hidden = torch.randn(2, 16, 24)
    with torch.no_grad():
        assert torch.equal(ours(hidden), legacy(hidden))


def test_blocks_use_the_dispatcher_processor():
    model = perturbed_model()
    processors = model.attn_processors
    assert list(processors) == [f"transformer_blocks.{i}.attn.processor" for i in range(3)]
    assert all(type(processor) is SiTAttnProcessor for processor in processors.values())


def test_set_attention_backend_native_is_recorded_and_changes_nothing(restore_active_backend):
    model = perturbed_model()
    x, t, y = inputs()
    with torch.no_grad():
        expected = model(x, t, y).sample
        model.set_attention_backend("native")
        assert all(p._attention_backend == AttentionBackendName.NATIVE for p in model.attn_processors.values())
        assert torch.equal(model(x, t, y).sample, expected)
        model.reset_attention_backend()
        assert all(p._attention_backend is None for p in model.attn_processors.values())


def test_the_chosen_backend_is_the_one_called(monkeypatch, restore_active_backend):
    model = perturbed_model()
    x, t, y = inputs()
    with torch.no_grad():
        expected = model(x, t, y).sample
    calls = []
    math_backend = _AttentionBackendRegistry._backends[AttentionBackendName._NATIVE_MATH]

    def recording_backend(query, key, value, **kwargs):
        calls.append(tuple(query.shape))
        return math_backend(query, key, value, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, AttentionBackendName._NATIVE_MATH, recording_backend)
    model.set_attention_backend("_native_math")
    with torch.no_grad():
        out = model(x, t, y).sample
    assert calls == [(2, 16, 3, 8)] * 3  # one call per block, (batch, tokens, heads, head_dim)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    model.reset_attention_backend()
    calls.clear()
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", AttentionBackendName.NATIVE)
    with torch.no_grad():
        model(x, t, y)
    assert calls == []


def test_an_unknown_backend_is_one_clear_error():
    with pytest.raises(ValueError, match="must be one of"):
        perturbed_model().set_attention_backend("no-such-kernel")


def test_fused_qkv_projections_compute_the_same_function():
    model = perturbed_model()
    x, t, y = inputs()
    keys = set(model.state_dict())
    with torch.no_grad():
        expected = model(x, t, y).sample
        model.fuse_qkv_projections()
        assert all(block.attn.fused_projections for block in model.transformer_blocks)
        torch.testing.assert_close(model(x, t, y).sample, expected, atol=1e-6, rtol=1e-5)
        model.unfuse_qkv_projections()
    assert set(model.state_dict()) == keys


def test_compiles_without_graph_breaks_with_a_backend_set(restore_active_backend):
    torch._dynamo.reset()
    model = perturbed_model()
    model.set_attention_backend("native")
    x, t, y = inputs()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, t, y).sample, model(x, t, y).sample, atol=0, rtol=0)
