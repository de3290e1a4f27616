"""Core attention for the local spec on ``torch.nn.functional.scaled_dot_product_attention``.

Megatron-Core's local ``DotProductAttention`` materialises the ``[b, heads, s, s]`` scores and
their softmax: O(s^2) memory, no fused kernel. Without Transformer Engine (a bare CUDA image,
the CPU) that is the path every step would take. :class:`SDPAttention` keeps its interface and
per-partition sizes and hands the work to torch's SDPA, which picks flash or memory-efficient
kernels on a GPU and its fused kernel on the CPU: causal for plain rows, the dense packed mask
for packed rows (each row still attends to itself, so a padding row yields zeros, not NaN), GQA
by repeating the key/value groups as the unfused module does. On CUDA packed rows go through
flex attention instead (:func:`packed_attention`: per-example block sparsity, GQA native).
Selected with Megatron-LM's ``--attention-backend``: ``flash`` (and ``auto``) on the local spec
means this module, ``unfused``/``local`` Megatron-Core's own.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from motif_megatron.errors import UserError


class SDPAttention(DotProductAttention):
    """``DotProductAttention``'s contract (``[s, b, heads, dim]`` in, ``[s, b, hidden]`` out) on
    ``scaled_dot_product_attention``."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type: AttnMaskType | None = None,
        attention_bias: torch.Tensor | None = None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise UserError("the local spec's attention takes packed rows as a mask, no bias")
        repeat = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, dim]
        allowed = None
        if attention_mask is not None:  # True where blocked (Megatron's convention)
            eye = torch.eye(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device)
            allowed = ~attention_mask | eye
        sq, b = query.shape[0], query.shape[1]
        dropout = self.attention_dropout.p if self.training else 0.0
        if allowed is not None and q.is_cuda and dropout == 0.0:
            context = packed_attention(q, k, v, allowed, self.softmax_scale)
            return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)
        if repeat > 1:
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        context = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=allowed,
            dropout_p=dropout,
            is_causal=allowed is None and self.attn_mask_type == AttnMaskType.causal,
            scale=self.softmax_scale,
        )
        return context.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


@functools.cache
def _flex_attention():
    """torch's flex attention, compiled once: its block-sparse kernel exists only compiled."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def packed_attention(q, k, v, allowed: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Packed rows (``[b, heads, s, dim]``; ``k``/``v`` with their query groups) through flex
    attention: the block mask of ``allowed`` (``[b, 1, s, s]``) lets the kernel skip the blocks
    that no example spans, and GQA needs no repeated keys. Used on CUDA (the SDPA kernels that
    take a dense mask still compute every block); exact against the dense mask on the CPU."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(batch, head, q_idx, kv_idx):
        return allowed[batch, 0, q_idx, kv_idx]

    block = create_block_mask(mask_mod, q.shape[0], None, q.shape[2], k.shape[2], device=q.device)
    return _flex_attention()(q, k, v, block_mask=block, scale=scale, enable_gqa=True)


def core_attention(backend: str) -> type:
    """The local spec's core-attention class for ``--attention-backend``."""
    if backend in ("flash", "auto"):
        return SDPAttention
    if backend in ("unfused", "local"):
        return DotProductAttention
    raise UserError(
        f"--attention-backend {backend} is Transformer Engine's fused attention; the local spec "
        "runs flash (torch's scaled_dot_product_attention) or unfused"
    )
