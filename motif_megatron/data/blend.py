"""Megatron ``--data-path`` blends for a target token ratio (e.g. 9:1 Korean:English).

Megatron's ``BlendedDataset`` draws fixed-length samples with the given weights, so a group's share
of training tokens equals its weight. Within a group, shards are weighted by their token counts
(read from the ``.idx`` files) so each shard is seen equally often.
"""

from __future__ import annotations

from dataclasses import dataclass

from motif_megatron.data.indexed import token_count
from motif_megatron.errors import UserError


@dataclass(frozen=True)
class BlendEntry:
    group: str
    prefix: str
    tokens: int
    weight: float

    def epochs(self, train_tokens: int) -> float:
        """How many passes over this shard ``train_tokens`` of training makes."""
        return self.weight * train_tokens / self.tokens if self.tokens else float("inf")


def blend(groups: dict[str, tuple[float, list[str]]]) -> list[BlendEntry]:
    """Weights per shard so that group ``g`` gets ``ratio_g / sum(ratios)`` of the tokens."""
    total_ratio = sum(ratio for ratio, _ in groups.values())
    if total_ratio <= 0 or any(ratio < 0 for ratio, _ in groups.values()):
        raise UserError("group ratios must be non-negative and not all zero")
    entries = []
    for name, (ratio, prefixes) in groups.items():
        counts = {}
        for prefix in prefixes:
            try:
                counts[prefix] = token_count(prefix)
            except FileNotFoundError:
                raise UserError(
                    f"{prefix}.idx not found (give shard prefixes without .bin/.idx)"
                ) from None
        group_tokens = sum(counts.values())
        if group_tokens == 0:
            raise UserError(f"group {name!r} has no tokens: {prefixes}")
        for prefix, tokens in counts.items():
            entries.append(
                BlendEntry(name, prefix, tokens, ratio / total_ratio * tokens / group_tokens)
            )
    return entries


def data_path(entries: list[BlendEntry]) -> list[str]:
    """``["w1", "p1", "w2", "p2", ...]`` for Megatron's ``--data-path``."""
    return [token for e in entries for token in (f"{e.weight:.6g}", e.prefix)]
