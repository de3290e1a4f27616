"""Grow a Megatron checkpoint offline, tensor by tensor: LlamaPro depth and vocabulary resize.

Reads one layer slice at a time from the source checkpoint and hands it to the streaming writer
for a placeholder model of the grown shape, so peak memory stays near the largest tensor. The
output is a normal checkpoint root (any TP/PP loads it) whose ``motif_model.json`` records the
new layers and vocabulary rows.
"""

from __future__ import annotations

import json
import re
import resource
from pathlib import Path

import torch

from motif_megatron import parallel
from motif_megatron.checkpoint import dist, layout
from motif_megatron.checkpoint.convert import TOKENIZER_DIR
from motif_megatron.errors import UserError
from motif_megatron.growth import llama_pro, msg, vocab
from motif_megatron.growth.request import INITS, GrowthRequest
from motif_megatron.model.builder import BuildOptions, build_model, check_parallel_shapes
from motif_megatron.model.llama import LlamaArgs, padded_vocab_size
from motif_megatron.tokenizer.files import copy_tokenizer

_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def new_vocab(tokenizer: Path, old_vocab: int) -> tuple[int, dict[int, list[int]]]:
    info_path = tokenizer / "new_tokens.json"
    if not info_path.is_file():
        raise UserError(
            f"{info_path} not found: expand the tokenizer with tools/expand_tokenizer.py"
        )
    info = json.loads(info_path.read_text())
    size = int(info["summary"]["vocab_size"])
    if size <= old_vocab:
        raise UserError(f"tokenizer has {size} ids, not more than the model's {old_vocab}")
    return size, {t["id"]: t["pieces"] for t in info["tokens"] if t.get("text") is not None}


def mask_key(reader: dist.CheckpointReader) -> str:
    key = next((k for k in sorted(reader.shapes) if k.endswith("msg_m")), None)
    if key is None:
        raise UserError(f"{reader.dir} holds no MSG mask values")
    return key


def grow(
    load: str | Path, save: str | Path, request: GrowthRequest, allow_partial: bool = False
) -> dict:
    """Write the grown checkpoint root ``save``; returns a summary (also in motif_model.json).
    A training checkpoint cut before its ``--train-iters`` needs ``allow_partial``."""
    root = dist.root_of(load)
    args = LlamaArgs.load(root)
    dist.check_complete(load, allow_partial)
    reader = dist.CheckpointReader(load)
    layers = [(i, False) for i in range(args.num_hidden_layers)]
    growth = dict(args.growth)
    if request.depth_add or request.depth_positions:
        positions = list(
            request.depth_positions
            or llama_pro.positions_for(args.num_hidden_layers, request.depth_add)
        )
        layers = llama_pro.layer_map(args.num_hidden_layers, positions)
        growth["llama_pro_layers"] = [j for j, (_, new) in enumerate(layers) if new]
    if request.finalize:
        if "msg" not in growth:
            raise UserError("--finalize: this checkpoint has no MSG masks")
        values = reader.get(mask_key(reader)).flatten().unique().tolist()
        if values != [1.0]:
            raise UserError(f"--finalize needs the MSG masks at 1, this checkpoint has m={values}")
        # the masks go; the layout stays (a chat vector maps onto the old slices through it)
        growth["msg_layout"] = {k: v for k, v in growth.pop("msg").items() if k != "m"}
    width = (
        request.hidden_size,
        request.ffn_hidden_size,
        request.num_attention_heads,
        request.num_query_groups,
    )
    if any(w is not None for w in width) and "msg" in growth:
        raise UserError("this checkpoint is already width-grown: finalize it first")
    plan = msg.WidthPlan.requested(args, width, request.tp)
    if plan is not None:
        growth["msg"] = plan.metadata()
        args_shape = plan.new_args
    else:
        args_shape = args
    new_args = args_shape.replace(num_hidden_layers=len(layers), growth=growth)
    pieces: dict[int, list[int]] = {}
    if request.tokenizer:
        size, pieces = new_vocab(Path(request.tokenizer), args.vocab_size)
        new_args = new_args.replace(vocab_size=size)
        growth["vocab"] = {"old": args.vocab_size, "new": size, "init": request.init}
    new_args = new_args.replace(
        padded_vocab_size=padded_vocab_size(
            new_args.vocab_size, request.make_vocab_size_divisible_by, request.tp
        )
    )
    check_parallel_shapes(new_args, request.tp, request.pp)
    if request.tokenizer and request.init not in INITS:
        raise UserError(f"--init {request.init!r}: choose one of {', '.join(INITS)}")

    parallel.initialize(parallel.ParallelConfig(1, 1), backend="gloo")  # host memory only
    model = build_model(new_args, BuildOptions(initialize=False, host_only=True))
    by_local = {p.local_name: p for p in layout.LAYER_PARAMS}
    old_v, new_v = args.vocab_size, new_args.vocab_size

    generator = torch.Generator().manual_seed(request.seed)

    def resize(key: str, is_output: bool, block: int = 2048) -> torch.Tensor:
        """Embedding / output rows: old block in place, new hidden columns and new rows added.

        The old rows are read a block at a time into the new tensor, so the old tensor is never
        resident beside it."""
        old_h = args.hidden_size
        out = torch.zeros(
            new_args.padded_vocab_size, new_args.hidden_size, dtype=reader.dtypes[key]
        )
        for start in range(0, old_v, block):
            stop = min(start + block, old_v)
            out[start:stop, :old_h] = reader.get(key, rows=(start, stop))
        if plan is not None:
            msg.fill_fresh(out[:old_v, old_h:], out[:old_v, :old_h], generator)
        rows = out[:old_v]
        if new_v > old_v:
            ids = range(old_v, new_v)
            known = [i for i in ids if pieces.get(i)]
            unknown = [i for i in ids if not pieces.get(i)]  # e.g. specials past the model vocab
            if known:
                vocab.fill_rows(
                    out,
                    known,
                    rows,
                    [pieces[i] for i in known],
                    request.init,
                    is_output,
                    args.initializer_range,
                    request.seed,
                )
            if unknown:
                vocab.fill_rows(out, unknown, rows, [[0]] * len(unknown), "mean", is_output, 0.0)
        return out

    def produce(name: str) -> torch.Tensor:
        match = _LAYER.fullmatch(name)
        if match:
            source, is_new = layers[int(match.group(1))]
            param = by_local[match.group(2)]
            tensor = reader.get(layout.layer_ckpt_key(param), source)
            if plan is not None:
                tensor = msg.grow_layer_tensor(param, tensor, plan, generator)
            return (
                torch.zeros_like(tensor)
                if is_new and param.ckpt_key in llama_pro.ZEROED
                else tensor
            )
        if name == layout.EMBEDDING[0]:
            return resize(layout.EMBEDDING[0], False)
        if name == layout.OUTPUT[0]:
            return resize(layout.OUTPUT[0], True)
        if name == layout.FINAL_NORM[0]:
            norm = reader.get(layout.FINAL_NORM[0])
            return norm if plan is None else msg.grow_norm(norm, new_args.hidden_size)
        raise KeyError(name)

    save = Path(save)
    save.mkdir(parents=True, exist_ok=True)
    dist.stream_save(model, produce, save)
    new_args.save(save)
    tokenizer_src = Path(request.tokenizer) if request.tokenizer else root / TOKENIZER_DIR
    if tokenizer_src.is_dir():
        copy_tokenizer(tokenizer_src, save / TOKENIZER_DIR)
    return {
        "layers": len(layers),
        "hidden_size": new_args.hidden_size,
        "vocab_size": new_v,
        "growth": growth,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def describe(growth: dict) -> str:
    """One short line for a growth record (counts and ranges; the full lists stay in the JSON)."""
    parts = []
    if blocks := growth.get("llama_pro_layers"):
        parts.append(f"{len(blocks)} LlamaPro blocks at {_ranges(blocks)}")
    if width := growth.get("msg") or growth.get("msg_layout"):
        parts.append(
            f"MSG width from hidden {width['old_hidden']}: {len(width['new_heads'])} new heads, "
            f"{len(width['new_ffn'])} new FFN channels"
            + ("" if "msg" in growth else " (finalized)")
        )
    if vocab_record := growth.get("vocab"):
        parts.append(
            f"vocabulary {vocab_record['old']} -> {vocab_record['new']} ({vocab_record['init']})"
        )
    return "; ".join(parts) or "none"


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, start = [], None
    for k, v in enumerate(values):
        start = v if start is None else start
        if k + 1 == len(values) or values[k + 1] != v + 1:
            out.append(str(v) if v == start else f"{start}-{v}")
            start = None
    return ", ".join(out)


def merge_adapters(load: str | Path, save: str | Path) -> dict:
    """Write a LoRA checkpoint's adapted model as a plain checkpoint (the same streamed copy as
    :func:`grow`, whose reader merges every adapted weight); returns :func:`grow`'s summary."""
    if not any(k.endswith(".lora_a") for k in dist.checkpoint_keys(dist.resolve(load))):
        raise UserError(f"{load} holds no LoRA adapters: nothing to merge")
    return grow(load, save, GrowthRequest())
