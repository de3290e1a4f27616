"""What to grow: the one declaration of the growth flags (``tools/expand_checkpoint.py`` takes
all of them, ``tools/plan.py`` the shape ones), light enough to import on a login node."""

from __future__ import annotations

from dataclasses import dataclass

from motif_megatron.cli import option

# vocabulary-row initialisations (growth/vocab.py implements them)
INITS = ("random", "mean", "mean-resizing", "subword-mean", "first-subword", "decompose")
SHAPE = (
    "depth_add",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
)


@dataclass(frozen=True)
class GrowthRequest:
    depth_add: int | None = option(
        None, "LlamaPro: add N identity blocks, one after every layers/N (N divides the layers)"
    )
    depth_positions: tuple[int, ...] | None = option(
        None, "LlamaPro: insert a copy after each of these original layers instead"
    )
    tokenizer: str | None = option(
        None, "expanded tokenizer directory (with new_tokens.json) to resize the vocabulary to"
    )
    init: str = option("subword-mean", "initialisation of new vocabulary rows", choices=INITS)
    hidden_size: int | None = option(None, "Masked Structure Growth: the wider hidden size")
    ffn_hidden_size: int | None = option(None, "Masked Structure Growth: the wider FFN size")
    num_attention_heads: int | None = option(
        None, "Masked Structure Growth: attention heads (new heads, or wider ones in each group)"
    )
    num_query_groups: int | None = option(
        None, "Masked Structure Growth: KV groups (new groups; never fewer)"
    )
    tp: int = option(1, "tensor-parallel size the result is meant for")
    pp: int = option(1, "pipeline-parallel size the result is meant for")
    make_vocab_size_divisible_by: int = option(
        128, "pad the vocabulary to a multiple of this * --tp (Megatron-LM's rule)"
    )
    seed: int = option(0, "seed for random initialisations")
    finalize: bool = option(
        False, "drop the MSG masks of a width-grown checkpoint whose mask value has reached 1"
    )

    def grows(self) -> bool:
        """Whether anything is asked for."""
        width = (getattr(self, name) for name in SHAPE[1:])
        return bool(
            self.depth_add
            or self.depth_positions
            or self.tokenizer
            or self.finalize
            or any(w is not None for w in width)
        )
