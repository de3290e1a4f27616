"""The local spec's core attention on torch's scaled_dot_product_attention (``--attention-backend
flash``, the default there) against Megatron-Core's unfused module: the same logits and gradients
(fp32, 1e-5) for causal rows with GQA and for packed rows, a padding row without NaN; against HF
through every conversion and equivalence test, which build the default."""

from __future__ import annotations

import pytest
import torch


def _pair(tiny_ckpt):
    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    models = [
        build_from_checkpoint(
            str(tiny_ckpt), BuildOptions(params_dtype=torch.float32, attention_backend=backend)
        )[0]
        for backend in ("flash", "unfused")
    ]
    return models


def test_sdpa_matches_the_unfused_module(tiny_ckpt):
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from motif_megatron.model import packed
    from motif_megatron.model.attention import SDPAttention

    flash, unfused = _pair(tiny_ckpt)
    assert isinstance(flash.decoder.layers[0].self_attention.core_attention, SDPAttention)
    assert type(unfused.decoder.layers[0].self_attention.core_attention) is DotProductAttention
    config = flash.config
    assert config.num_attention_heads > config.num_query_groups  # GQA
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 1000, (2, 48), generator=generator)
    positions = torch.arange(48).expand(2, -1)
    # row 0: two examples and 8 padding tokens; row 1: one example
    segments = torch.tensor([[0] * 16 + [1] * 24 + [-1] * 8, [0] * 48])
    real = segments >= 0
    for mask in (None, packed.attention_mask(segments)):
        outputs = []
        for model in (flash, unfused):
            model.zero_grad()
            logits = model(tokens, positions, mask)  # [b, s, vocab]
            logits[real].float().square().mean().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            outputs.append((logits.detach(), grads))
        (a, grads_a), (b, grads_b) = outputs
        assert torch.isfinite(a).all()
        assert (a[real] - b[real]).abs().max() < 1e-5
        scale = max(g.abs().max() for g in grads_b.values())
        assert max((grads_a[n] - grads_b[n]).abs().max() for n in grads_b) < 1e-5 * scale


def test_fused_attention_on_the_local_spec_is_refused(tiny_ckpt):
    from motif_megatron.errors import UserError
    from motif_megatron.model.attention import core_attention

    with pytest.raises(UserError, match="Transformer Engine's fused attention"):
        core_attention("fused")


def test_packed_rows_through_flex_attention_equal_the_dense_mask():
    """The CUDA path for packed rows: compiled flex attention with the block mask of the packed
    rows (two examples and padding in one row, GQA without repeated keys) equals SDPA on the
    dense mask (fp32, 1e-5); compiled here on the CPU, as on a GPU."""
    import torch.nn.functional as F

    from motif_megatron.model import packed
    from motif_megatron.model.attention import packed_attention

    generator = torch.Generator().manual_seed(0)
    b, heads, groups, s, d = 2, 4, 2, 48, 16
    q = torch.randn(b, heads, s, d, generator=generator)
    k, v = (torch.randn(b, groups, s, d, generator=generator) for _ in range(2))
    segments = torch.tensor([[0] * 16 + [1] * 24 + [-1] * 8, [0] * 48])
    allowed = ~packed.attention_mask(segments) | torch.eye(s, dtype=torch.bool)
    flex = packed_attention(q, k, v, allowed, None)
    dense = F.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed
    )
    assert (flex - dense).abs().max() < 1e-5
