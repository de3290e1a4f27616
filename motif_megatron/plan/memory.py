"""GPU memory of one layout by Megatron-LM's theoretical formulas, extended where they stop.

The formulas are those of ``megatron/training/theoretical_memory_usage.py`` at Megatron-LM
``core_v0.16.1`` (the release of the megatron-core we run), for a dense Llama (GQA, SwiGLU,
RMSNorm, no MoE/MTP):

- weights + gradients + optimizer (``compute_weight_and_optimizer_memory``): the parameters of the
  most loaded shard, ``(layers/pp + embedding) / tp`` plus the output layer when untied and
  ``pp == 1``, times 18 bytes (bf16 weights, fp32 main gradients, fp32 main weights and Adam
  moments) or ``6 + 12/(dp x cp)`` with the distributed optimizer (which shards over the
  data-parallel group with its context-parallel ranks);
- activations of the first pipeline stage, with the interleaved schedule's penalty
  ``1 + (pp - 1)/(pp x vpp)`` for a virtual pipeline: ``compute_activation_memory`` (Korthikanti
  et al. 2022, Table 2, sequence parallelism) with ``sp``, ``compute_activation_memory_without_sp``
  without. Megatron-LM picks the first only with selective recomputation; with flash attention
  (TE's or PyTorch's) no ``s^2`` score tensor is stored, so selective recomputation saves nothing
  more and both formulas hold with or without it.

Beyond Megatron-LM's formulas: context parallelism divides the sequence each GPU holds
(``seq / cp``); full recomputation stores each layer's input (``2 s b h`` bytes, ``/ tp`` with
sequence parallelism) plus one layer's activations while it is recomputed.

``tests/test_plan.py`` holds Megatron-LM's own outputs for a set of shapes and layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

from motif_megatron.model.llama import LlamaArgs
from motif_megatron.plan.model import padded_vocab


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int
    distributed_optimizer: bool
    sp: bool
    """Sequence parallelism (with TP > 1)."""
    recompute: str = "none"
    """``none``, ``selective`` (core attention) or ``full`` (every layer)."""
    vpp: int = 1
    """Virtual pipeline stages per pipeline rank (interleaved schedule; 1: none)."""
    cp: int = 1
    """Context-parallel ranks (the sequence split across them)."""


def weight_optimizer_bytes(args: LlamaArgs, layout: Layout, divisible_by: int = 128) -> float:
    h, heads = args.hidden_size, args.num_attention_heads
    q = args.head_dim * heads
    attention = 2 * h * h * (1 + args.num_key_value_heads / heads) * (q / h)
    layer = attention + 3 * h * args.intermediate_size + 2 * h
    block = layer * args.num_hidden_layers + h
    embedding = h * padded_vocab(args, layout.tp, divisible_by)
    shard = (block / layout.pp + embedding) / layout.tp
    if not args.tie_word_embeddings and layout.pp == 1:
        shard += embedding / layout.tp
    sharded = layout.dp * layout.cp
    per_param = 6 + 12 / sharded if layout.distributed_optimizer else 18
    return shard * per_param


def num_microbatches(global_batch: int, micro_batch: int, dp: int) -> int:
    return global_batch // (micro_batch * dp)


def _layer_bytes(args: LlamaArgs, layout: Layout, s: float, b: int) -> float:
    """Activation bytes one layer keeps for its backward pass (all ``/ tp`` with ``sp``)."""
    h, t = args.hidden_size, layout.tp
    if layout.sp:
        return s * b * h * (18 + 4 * args.intermediate_size / h) / t
    return s * b * h * (10 + 24 / t)


def activation_bytes(
    args: LlamaArgs,
    layout: Layout,
    seq: int,
    micro_batch: int,
    microbatches: int,
    divisible_by: int = 128,
) -> float:
    s, b, h, t, p = seq / layout.cp, micro_batch, args.hidden_size, layout.tp, layout.pp
    vocab = padded_vocab(args, t, divisible_by)
    per_layer = _layer_bytes(args, layout, s, b)
    if layout.recompute == "full":
        stored = 2 * s * b * h / (t if layout.sp else 1)
        memory = stored * args.num_hidden_layers + per_layer
    else:
        memory = per_layer * args.num_hidden_layers
    scale = t if layout.sp else 1  # Megatron-LM divides the SP formula's sum by tp at the end
    memory += (8 * s * b * p + s * b * h * p) / scale
    if layout.vpp > 1:
        memory *= 1 + (p - 1) / (p * layout.vpp)
    elif p > 1:
        memory *= min(1, microbatches / p)
    if layout.sp:
        if p == 1:
            memory += s * b * h * 4 * (1 + vocab / h) / t
        return memory
    if p == 1:
        memory += (s * b * vocab / t + s * b * h) * 2
    return memory * 1.05
