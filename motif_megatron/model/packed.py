"""Attention inputs of packed rows (several examples per row, none seeing another): the dense
mask of the local spec, or Transformer Engine's THD ``PackedSeqParams``."""

from __future__ import annotations

import torch


def distinct_rows(segments: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` example indices -> ``[1, b * s]`` ids unique across rows (each row's padding
    becomes a sequence of its own), for one THD sequence of all the rows."""
    rows, seq = segments.shape
    offsets = torch.arange(rows, device=segments.device).unsqueeze(1) * (seq + 1)
    return (segments + 1 + offsets).reshape(1, -1)


def packed_seq_params(segments: torch.Tensor):
    """Megatron's THD ``PackedSeqParams`` for ``[1, t]`` segment ids: ``cu_seqlens`` (int32, on
    the segments' device) at every change of id, as Transformer Engine's flash attention takes."""
    from megatron.core.packed_seq_params import PackedSeqParams

    ids = segments.reshape(-1)
    change = torch.nonzero(ids[1:] != ids[:-1]).reshape(-1) + 1
    edges = torch.tensor([0, ids.numel()], device=ids.device)
    cu = torch.cat([edges[:1], change, edges[1:]]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(
        qkv_format="thd",
        cu_seqlens_q=cu,
        cu_seqlens_kv=cu,
        max_seqlen_q=longest,
        max_seqlen_kv=longest,
    )


def attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[b, 1, s, s]`` boolean, True where attention is blocked (Megatron's convention): later
    positions and other examples (padding sees only itself and earlier padding)."""
    seq = segments.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=segments.device).triu(1)
    other = segments[:, :, None] != segments[:, None, :]
    return (causal | other).unsqueeze(1)
