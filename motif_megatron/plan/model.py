"""The shapes a plan is made for: the base, the grown model, their exact parameter counts.

Counts come from the tensor shapes (our Megatron layout: fused QKV, fused gate/up, RMSNorm without
bias) with the vocabulary padded as Megatron-LM pads it (``--make-vocab-size-divisible-by``), so
they equal what a checkpoint holds; Llama-3-8B gives 8,030,261,248, as published.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from motif_megatron.errors import UserError
from motif_megatron.model.llama import MODEL_ARGS_FILE, LlamaArgs, padded_vocab_size


@dataclass(frozen=True)
class Growth:
    """The growth flags of ``tools/expand_checkpoint.py`` (None: unchanged)."""

    depth_add: int = 0
    hidden_size: int | None = None
    ffn_hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_query_groups: int | None = None
    vocab_size: int | None = None


def load_args(path: str | Path) -> LlamaArgs:
    """An HF ``config.json`` or a checkpoint's ``motif_model.json`` (or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / (MODEL_ARGS_FILE if (path / MODEL_ARGS_FILE).is_file() else "config.json")
    if not path.is_file():
        raise UserError(f"{path} not found: give an HF config.json or a motif_model.json")
    if path.name == MODEL_ARGS_FILE:
        return LlamaArgs.load(path.parent)
    try:
        return LlamaArgs.from_hf_config(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError) as exc:
        raise UserError(f"{path}: not a Llama config.json ({exc})") from None


def grown(args: LlamaArgs, growth: Growth) -> LlamaArgs:
    """The shape ``expand_checkpoint.py`` would write (its width checks included)."""
    from motif_megatron.growth.msg import WidthPlan

    width = (
        growth.hidden_size,
        growth.ffn_hidden_size,
        growth.num_attention_heads,
        growth.num_query_groups,
    )
    plan = WidthPlan.requested(args, width)
    args = plan.new_args if plan is not None else args
    if growth.vocab_size is not None and growth.vocab_size < args.vocab_size:
        raise UserError(f"--vocab-size {growth.vocab_size} is smaller than {args.vocab_size}")
    return args.replace(
        num_hidden_layers=args.num_hidden_layers + growth.depth_add,
        vocab_size=growth.vocab_size or args.vocab_size,
        padded_vocab_size=None,
    )


def padded_vocab(args: LlamaArgs, tp: int = 1, divisible_by: int = 128) -> int:
    return padded_vocab_size(args.vocab_size, divisible_by, tp)


def layer_params(args: LlamaArgs) -> int:
    """One decoder layer: Q, K, V, O, gate/up, down and the two RMSNorm weights."""
    h, q = args.hidden_size, args.num_attention_heads * args.head_dim
    kv = args.num_key_value_heads * args.head_dim
    return h * (2 * q + 2 * kv) + 3 * h * args.intermediate_size + 2 * h


def param_counts(args: LlamaArgs, tp: int = 1, divisible_by: int = 128) -> dict[str, int]:
    """Embedding, output layer (0 when tied), decoder layers and final norm, and their total."""
    embedding = padded_vocab(args, tp, divisible_by) * args.hidden_size
    counts = {
        "embedding": embedding,
        "output_layer": 0 if args.tie_word_embeddings else embedding,
        "layers": args.num_hidden_layers * layer_params(args),
        "final_norm": args.hidden_size,
    }
    return {**counts, "total": sum(counts.values())}
