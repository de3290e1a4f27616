"""Pack chat examples into fixed-length rows with no attention across examples.

Each row holds whole examples back to back; position ids restart at every example and the
attention mask lets a token see only earlier tokens of its own example (Megatron's local
attention takes the explicit mask; Transformer Engine takes the same boundaries as THD
``cu_seqlens``). Row padding carries no loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motif_megatron.posttrain.chat import Example


@dataclass
class PackedRows:
    tokens: torch.Tensor  # [rows, seq]
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor  # example index within the row, -1 on padding


def pack(examples: list[Example], seq_length: int, pad_id: int) -> PackedRows:
    """First-fit in order: an example (``seq_length + 1`` ids at most) goes into the first row
    with room; inputs are ``ids[:-1]``, labels ``ids[1:]``, trained where the label is."""
    rows: list[list[tuple[list[int], list[int]]]] = []
    room: list[int] = []
    for ex in examples:
        need = len(ex.ids) - 1
        for r, free in enumerate(room):
            if free >= need:
                rows[r].append((ex.ids, ex.loss_mask))
                room[r] -= need
                break
        else:
            rows.append([(ex.ids, ex.loss_mask)])
            room.append(seq_length - need)
    shape = (len(rows), seq_length)
    out = PackedRows(
        tokens=torch.full(shape, pad_id, dtype=torch.long),
        labels=torch.full(shape, pad_id, dtype=torch.long),
        loss_mask=torch.zeros(shape),
        position_ids=torch.zeros(shape, dtype=torch.long),
        segments=torch.full(shape, -1, dtype=torch.long),
    )
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, mask) in enumerate(row):
            n = len(ids) - 1
            out.tokens[r, at : at + n] = torch.tensor(ids[:-1])
            out.labels[r, at : at + n] = torch.tensor(ids[1:])
            out.loss_mask[r, at : at + n] = torch.tensor(mask[1:], dtype=torch.float32)
            out.position_ids[r, at : at + n] = torch.arange(n)
            out.segments[r, at : at + n] = s
            at += n
        out.position_ids[r, at:] = torch.arange(seq_length - at)
    return out
