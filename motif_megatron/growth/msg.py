"""Masked Structure Growth width transforms: old weights in place, new entries scale-matched.

Old weights keep their values at mapped positions: hidden dims as a prefix, attention heads at
``group * heads_per_group_new + j`` (new heads within groups, then whole new groups), FFN channels
spread evenly over the target TP shards (each shard: its old channels, then its new ones). New
entries are drawn from N(0, rms(old tensor)) -- MSG's N(0, 0.02) is far off the scale of a 70B
model's weights -- and only enter the function through the masks of :mod:`model.masked`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motif_megatron.checkpoint import layout
from motif_megatron.errors import UserError
from motif_megatron.model.llama import LlamaArgs


@dataclass(frozen=True)
class WidthPlan:
    old: LlamaArgs
    hidden: int
    ffn: int
    heads: int
    groups: int
    tp: int = 1

    @classmethod
    def requested(
        cls,
        old: LlamaArgs,
        sizes: tuple[int | None, int | None, int | None, int | None],
        tp: int = 1,
    ) -> WidthPlan | None:
        """The plan for ``(hidden, ffn, heads, groups)`` flags (None keeps a size), checked;
        None when no size is given."""
        if all(size is None for size in sizes):
            return None
        hidden, ffn, heads, groups = sizes
        plan = cls(
            old,
            hidden or old.hidden_size,
            ffn or old.intermediate_size,
            heads or old.num_attention_heads,
            groups or old.num_key_value_heads,
            tp,
        )
        plan.check()
        return plan

    def check(self) -> None:
        o, problems = self.old, []
        for name, new, old in (
            ("hidden_size", self.hidden, o.hidden_size),
            ("ffn_hidden_size", self.ffn, o.intermediate_size),
            ("num_attention_heads", self.heads, o.num_attention_heads),
            ("num_query_groups", self.groups, o.num_key_value_heads),
        ):
            if new < old:
                problems.append(
                    f"--{name.replace('_', '-')} {new} is smaller than the current {old}"
                )
        if self.heads % self.groups:
            problems.append(f"heads {self.heads} are not a multiple of query groups {self.groups}")
        elif self.heads // self.groups < o.num_attention_heads // o.num_key_value_heads:
            problems.append("heads per query group cannot shrink")
        if self.groups % self.tp:
            problems.append(f"query groups {self.groups} are not divisible by tp={self.tp}")
        if self.ffn % self.tp or o.intermediate_size % self.tp:
            problems.append(
                f"FFN sizes {o.intermediate_size}->{self.ffn} are not divisible by tp={self.tp}"
            )
        if problems:
            raise UserError("; ".join(problems))

    @property
    def new_args(self) -> LlamaArgs:
        return self.old.replace(
            hidden_size=self.hidden,
            intermediate_size=self.ffn,
            num_attention_heads=self.heads,
            num_key_value_heads=self.groups,
        )

    def head_map(self) -> torch.Tensor:
        """New index of each old query head."""
        hpg_o = self.old.num_attention_heads // self.old.num_key_value_heads
        hpg_n = self.heads // self.groups
        return torch.tensor(
            [g * hpg_n + j for g in range(self.old.num_key_value_heads) for j in range(hpg_o)]
        )

    def ffn_map(self) -> torch.Tensor:
        """New index of each old FFN channel (old channels first within each TP shard)."""
        per_old, per_new = self.old.intermediate_size // self.tp, self.ffn // self.tp
        c = torch.arange(self.old.intermediate_size)
        return (c // per_old) * per_new + c % per_old

    def metadata(self) -> dict:
        heads = set(range(self.heads)) - set(self.head_map().tolist())
        ffn = set(range(self.ffn)) - set(self.ffn_map().tolist())
        return {
            "old_hidden": self.old.hidden_size,
            "new_heads": sorted(heads),
            "new_ffn": sorted(ffn),
            "tp_layout": self.tp,
            "m": 0.0,
        }


def _rms(like: torch.Tensor, chunk: int = 1024) -> float:
    total = sum(float(like[i : i + chunk].float().pow(2).sum()) for i in range(0, len(like), chunk))
    return (total / max(like.numel(), 1)) ** 0.5


def fill_fresh(
    out: torch.Tensor, like: torch.Tensor, generator: torch.Generator, chunk: int = 1024
) -> None:
    """Fill ``out`` in place with N(0, rms(like)), a chunk of rows at a time."""
    rms = _rms(like)
    for i in range(0, len(out), chunk):
        block = out[i : i + chunk]
        block.copy_(torch.randn(block.shape, generator=generator) * rms)


def _fresh(shape, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    out = torch.empty(shape, dtype=like.dtype)
    fill_fresh(out, like, generator)
    return out


def _place(
    old: torch.Tensor,
    shape,
    rows: torch.Tensor | None,
    cols: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``old`` at its mapped positions of a new tensor of ``shape``; new entries are fresh, or
    zeros without a ``generator`` (a chat-vector delta reaches the old slice only)."""
    out = (
        torch.zeros(shape, dtype=old.dtype) if generator is None else _fresh(shape, old, generator)
    )
    rows = torch.arange(old.shape[0]) if rows is None else rows
    if old.dim() == 1:
        out[rows] = old
        return out
    cols = torch.arange(old.shape[1]) if cols is None else cols
    out[rows[:, None], cols[None, :]] = old
    return out


def grow_layer_tensor(
    param: layout.LayerParam,
    old: torch.Tensor,
    plan: WidthPlan,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The grown value of one layer parameter (new entries zero without a ``generator``)."""
    o, n, d = plan.old, plan.new_args, plan.old.head_dim
    heads = plan.head_map()
    head_rows = (heads[:, None] * d + torch.arange(d)[None, :]).reshape(-1)
    ffn = plan.ffn_map()
    if param.ckpt_key.endswith("layer_norm_weight"):
        fill = 0.0 if generator is None else float(old.float().mean())
        out = torch.full((n.hidden_size,), fill, dtype=old.dtype)
        out[: o.hidden_size] = old
        return out
    if param.ckpt_key == "self_attention.linear_qkv.weight":
        q, k, v = layout.unpack_qkv(old, o)
        kv = torch.arange(o.num_key_value_heads * d)
        q = _place(q, (n.num_attention_heads * d, n.hidden_size), head_rows, None, generator)
        k = _place(k, (n.num_key_value_heads * d, n.hidden_size), kv, None, generator)
        v = _place(v, (n.num_key_value_heads * d, n.hidden_size), kv, None, generator)
        return layout.pack_qkv(q, k, v, n)
    if param.ckpt_key == "self_attention.linear_proj.weight":
        return _place(old, (n.hidden_size, n.num_attention_heads * d), None, head_rows, generator)
    if param.ckpt_key == "mlp.linear_fc1.weight":
        gate, up = old.chunk(2)
        shape = (n.intermediate_size, n.hidden_size)
        return torch.cat(
            [_place(gate, shape, ffn, None, generator), _place(up, shape, ffn, None, generator)]
        )
    if param.ckpt_key == "mlp.linear_fc2.weight":
        return _place(old, (n.hidden_size, n.intermediate_size), None, ffn, generator)
    raise KeyError(param.ckpt_key)


def grow_columns(old: torch.Tensor, hidden: int, generator: torch.Generator) -> torch.Tensor:
    """Embedding / output layer ``[vocab, hidden]`` with new hidden columns."""
    return _place(old, (old.shape[0], hidden), None, None, generator)


def grow_norm(old: torch.Tensor, hidden: int) -> torch.Tensor:
    out = torch.full((hidden,), float(old.float().mean()), dtype=old.dtype)
    out[: old.shape[0]] = old
    return out
