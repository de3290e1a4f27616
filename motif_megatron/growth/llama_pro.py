"""LlamaPro depth growth: insert identity copies of existing blocks.

A copy of block ``i`` whose attention output projection (``linear_proj``) and MLP down projection
(``linear_fc2``) are zero adds nothing to the residual stream, so with pre-norm residual blocks the
grown model computes exactly the base function. (Zeroing the norm instead would also give an
identity but block every gradient into the copy.) The new indices are recorded so the trainer's
``llama-pro`` stage trains exactly those blocks.
"""

from __future__ import annotations

from motif_megatron.errors import UserError

ZEROED = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")


def positions_for(num_layers: int, add: int) -> list[int]:
    """Original layers after which a copy is inserted: every ``num_layers / add``-th (LlamaPro)."""
    if add <= 0:
        raise UserError(f"--depth-add {add} must be positive")
    if num_layers % add:
        raise UserError(
            f"--depth-add {add} must divide num_hidden_layers={num_layers} "
            "(LlamaPro inserts one copy per equal group); or give --depth-positions"
        )
    split = num_layers // add
    return [split * (k + 1) - 1 for k in range(add)]


def layer_map(num_layers: int, positions: list[int]) -> list[tuple[int, bool]]:
    """For each layer of the grown model: (source layer, is a new identity copy)."""
    bad = [p for p in positions if not 0 <= p < num_layers]
    if bad or len(set(positions)) != len(positions):
        raise UserError(f"--depth-positions {positions}: need distinct layers in [0, {num_layers})")
    out = []
    for i in range(num_layers):
        out.append((i, False))
        if i in positions:
            out.append((i, True))
    return out
