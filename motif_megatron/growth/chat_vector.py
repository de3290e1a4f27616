"""Chat Vector: add ``scale * (chat - base)`` of an instruct model to an adapted checkpoint.

The vector is computed from two HF models of the base shape (an English base and its chat
version) and added, tensor by tensor, to a Megatron checkpoint that may have been grown since: a
LlamaPro block takes no delta (its source layer's delta goes to the layer it was copied from, which
keeps its original place among the old layers), an MSG-grown tensor takes the delta on its old
slice only (the layout ``expand_checkpoint.py`` recorded), and an expanded vocabulary on its old
rows only. Everything that cannot be mapped is refused before anything is written. The sum is
taken in fp32 and cast back to the target's dtype.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from motif_megatron import parallel
from motif_megatron.checkpoint import dist, layout
from motif_megatron.checkpoint.convert import (
    TOKENIZER_DIR,
    expected_hf_names,
    read_hf_config,
)
from motif_megatron.checkpoint.hf_io import HFWeights
from motif_megatron.errors import UserError
from motif_megatron.growth import msg
from motif_megatron.model.builder import BuildOptions, build_model
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.tokenizer.files import copy_tokenizer

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")
WIDTH = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def layer_sources(target: LlamaArgs, base_layers: int) -> list[int | None]:
    """The base layer each target layer holds (None: a LlamaPro block, which takes no delta)."""
    new = set(target.growth.get("llama_pro_layers", []))
    old = [j for j in range(target.num_hidden_layers) if j not in new]
    if len(old) != base_layers:
        raise UserError(
            f"the target has {target.num_hidden_layers} layers ({len(new)} LlamaPro blocks "
            f"recorded), the base {base_layers}: its layers cannot be matched"
        )
    sources: list[int | None] = [None] * target.num_hidden_layers
    for i, j in enumerate(old):
        sources[j] = i
    return sources


def width_plan(base: LlamaArgs, target: LlamaArgs) -> msg.WidthPlan | None:
    """How the base's width maps into the target's (None: the same width)."""
    if all(getattr(base, k) == getattr(target, k) for k in WIDTH):
        return None
    record = target.growth.get("msg") or target.growth.get("msg_layout")
    if record is None:
        raise UserError(
            f"the target's width ({', '.join(f'{k}={getattr(target, k)}' for k in WIDTH)}) differs "
            "from the base's and it records no MSG growth"
        )
    plan = msg.WidthPlan(
        base,
        target.hidden_size,
        target.intermediate_size,
        target.num_attention_heads,
        target.num_key_value_heads,
        record["tp_layout"],
    )
    plan.check()
    expected = plan.metadata()
    if any(expected[k] != record[k] for k in ("old_hidden", "new_heads", "new_ffn")):
        raise UserError("the target's MSG growth record is not a growth of this base's width")
    return plan


def _check_vocab(base: LlamaArgs, target: LlamaArgs) -> None:
    if target.vocab_size == base.vocab_size:
        return
    grown = target.growth.get("vocab", {})
    if target.vocab_size < base.vocab_size or grown.get("old") != base.vocab_size:
        raise UserError(
            f"the target's vocabulary ({target.vocab_size}) is not the base's "
            f"({base.vocab_size}) or a recorded expansion of it"
        )


def _check_pair(base_dir: Path, chat_dir: Path) -> tuple[LlamaArgs, HFWeights, HFWeights]:
    base_args, chat_args = read_hf_config(base_dir), read_hf_config(chat_dir)
    base, chat = HFWeights(base_dir), HFWeights(chat_dir)
    names = expected_hf_names(base_args)
    missing = sorted(names - set(base.names())) + sorted(names - set(chat.names()))
    if missing:
        raise UserError(f"missing HF tensors: {missing[:3]}")
    different = [n for n in sorted(names) if base.shape(n) != chat.shape(n)]
    if different or chat_args.num_hidden_layers != base_args.num_hidden_layers:
        name = different[0] if different else "num_hidden_layers"
        raise UserError(f"--chat is not the shape of --base: {name} differs")
    return base_args, base, chat


def apply(
    base_dir: str | Path,
    chat_dir: str | Path,
    target: str | Path,
    out: str | Path,
    scale: float = 1.0,
) -> dict:
    """Write ``out`` = ``target`` + ``scale * (chat - base)``, streamed; returns a summary."""
    base_args, base, chat = _check_pair(Path(base_dir), Path(chat_dir))
    root = dist.root_of(target)
    args = LlamaArgs.load(root)
    sources = layer_sources(args, base_args.num_hidden_layers)
    plan = width_plan(base_args, args)
    _check_vocab(base_args, args)
    reader = dist.CheckpointReader(target)
    parallel.initialize(parallel.ParallelConfig(1, 1), backend="gloo")  # host memory only
    model = build_model(args, BuildOptions(initialize=False, host_only=True))
    if args.growth.get("msg"):  # keep the target's mask value (mid-ramp checkpoints too)
        from motif_megatron.growth.transform import mask_key
        from motif_megatron.model.masked import set_mask

        set_mask(model, float(reader.get(mask_key(reader)).flatten()[0]))
    by_local = {p.local_name: p for p in layout.LAYER_PARAMS}
    others = {layout.EMBEDDING[0]: layout.EMBEDDING[1], layout.OUTPUT[0]: layout.OUTPUT[1]}
    others[layout.FINAL_NORM[0]] = layout.FINAL_NORM[1]
    for name, _ in model.named_parameters():
        match = _LAYER.fullmatch(name)
        if not (match and match.group(2) in by_local) and name not in others:
            raise UserError(f"no chat-vector mapping for the target's parameter {name}")

    def diff(names: list[str]) -> list[torch.Tensor]:
        return [chat.get(n).float() - base.get(n).float() for n in names]

    def delta(name: str, like: torch.Tensor) -> torch.Tensor | None:
        match = _LAYER.fullmatch(name)
        if match:
            source = sources[int(match.group(1))]
            if source is None:
                return None
            param = by_local[match.group(2)]
            d = layout.to_megatron(param, diff(layout.hf_layer_names(param, source)), base_args)
            return d if plan is None else msg.grow_layer_tensor(param, d, plan, None)
        hf_name = others[name]
        if hf_name == layout.OUTPUT[1] and hf_name not in base.names():
            hf_name = layout.EMBEDDING[1]  # a tied base: its head is the embedding
        (d,) = diff([hf_name])
        out = torch.zeros(like.shape, dtype=torch.float32)
        out[tuple(slice(0, n) for n in d.shape)] = d  # old rows and old hidden columns
        return out

    def produce(name: str) -> torch.Tensor:
        match = _LAYER.fullmatch(name)
        if match:
            param = by_local[match.group(2)]
            value = reader.get(layout.layer_ckpt_key(param), int(match.group(1)))
        else:
            value = reader.get(name)
        d = delta(name, value)
        return value if d is None else (value.float() + scale * d).to(value.dtype)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dist.stream_save(model, produce, out)
    record = {"base": str(base_dir), "chat": str(chat_dir), "scale": scale}
    args.replace(growth={**args.growth, "chat_vector": record}).save(out)
    if (root / TOKENIZER_DIR).is_dir():
        copy_tokenizer(root / TOKENIZER_DIR, out / TOKENIZER_DIR)
    return {
        "layers": len(sources) - sources.count(None),
        "skipped_llama_pro": sources.count(None),
        "scale": scale,
        "width_grown": plan is not None,
    }
