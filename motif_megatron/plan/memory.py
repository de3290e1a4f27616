"""GPU memory of one layout by Megatron-LM's theoretical formulas.

The formulas are those of ``megatron/training/theoretical_memory_usage.py`` at Megatron-LM
``core_v0.16.1`` (the release of the megatron-core we run), for a dense Llama (GQA, SwiGLU,
RMSNorm, no MoE/MTP, no virtual pipeline):

- weights + gradients + optimizer (``compute_weight_and_optimizer_memory``): the parameters of the
  most loaded shard, ``(layers/pp + embedding) / tp`` plus the output layer when untied and
  ``pp == 1``, times 18 bytes (bf16 weights, fp32 main gradients, fp32 main weights and Adam
  moments) or ``6 + 12/dp`` with the distributed optimizer;
- activations of the first pipeline stage: ``compute_activation_memory_without_sp`` (Korthikanti
  et al. 2022 without sequence parallelism, 5% overhead) when nothing is recomputed, and
  ``compute_activation_memory`` (Table 2 with sequence parallelism and selective recomputation)
  with ``recompute``, the combination Megatron-LM's report uses that formula for.

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
    recompute: bool
    """Selective activation recomputation with sequence parallelism."""


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
    per_param = 6 + 12 / layout.dp if layout.distributed_optimizer else 18
    return shard * per_param


def num_microbatches(global_batch: int, micro_batch: int, dp: int) -> int:
    return global_batch // (micro_batch * dp)


def activation_bytes(
    args: LlamaArgs,
    layout: Layout,
    seq: int,
    micro_batch: int,
    microbatches: int,
    divisible_by: int = 128,
) -> float:
    s, b, h, t, p = seq, micro_batch, args.hidden_size, layout.tp, layout.pp
    vocab = padded_vocab(args, t, divisible_by)
    if layout.recompute:
        per_layer = s * b * h * (18 + 4 * args.intermediate_size / h)
    else:
        per_layer = s * b * h * (10 + 24 / t)
    memory = per_layer * args.num_hidden_layers + 8 * s * b * p + s * b * h * p
    if p > 1:
        memory *= min(1, microbatches / p)
    if layout.recompute:
        if p == 1:
            memory += s * b * h * 4 * (1 + vocab / h)
        return memory / t
    if p == 1:
        memory += (s * b * vocab / t + s * b * h) * 2
    return memory * 1.05
