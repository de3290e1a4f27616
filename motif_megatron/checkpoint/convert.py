"""HF ``LlamaForCausalLM`` <-> Megatron-Core ``torch_dist`` checkpoints, streamed tensor by tensor.

Import writes a layout-free checkpoint (any TP/PP loads it) plus ``motif_model.json`` and the
tokenizer; ``tp``/``pp`` only validate that the target layout is possible and pad the vocabulary
the way Megatron-LM does for that TP. Export reads one layer slice at a time and writes HF
safetensors with precomputed headers, so neither direction holds more than a tensor or two.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tqdm import tqdm

from motif_megatron import parallel
from motif_megatron.checkpoint import dist, layout
from motif_megatron.checkpoint.hf_io import HFWeights, SafetensorsWriter
from motif_megatron.errors import UserError
from motif_megatron.model.builder import BuildOptions, build_model, check_parallel_shapes
from motif_megatron.model.llama import LlamaArgs, dtype_name, padded_vocab_size
from motif_megatron.tokenizer.files import copy_tokenizer

TOKENIZER_DIR = "tokenizer"
_LAYER_NAME = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


def read_hf_config(hf_dir: str | Path) -> LlamaArgs:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{path} not found: --hf-dir must be an HF model directory")
    return LlamaArgs.from_hf_config(json.loads(path.read_text()))


def _hf_producer(args: LlamaArgs, weights: HFWeights, padded_vocab: int):
    """``produce(megatron_param_name) -> tensor`` reading the HF tensors it needs.

    Concatenated (fc1) and padded (vocab) tensors are read straight into their rows of the output,
    so a parameter costs its own size; qkv, regrouped per KV head, costs twice that.
    """
    by_local = {p.local_name: p for p in layout.LAYER_PARAMS}

    def read_rows(names: list[str], rows: int | None = None) -> torch.Tensor:
        shapes = [weights.shape(n) for n in names]
        total = sum(s[0] for s in shapes)
        out = torch.empty(
            total if rows is None else rows, *shapes[0][1:], dtype=weights.dtype(names[0])
        )
        out[total:].zero_()  # Megatron-LM's vocabulary padding rows
        offset = 0
        for name, shape in zip(names, shapes, strict=True):
            weights.get(name, out=out[offset : offset + shape[0]])
            offset += shape[0]
        return out

    def produce(name: str) -> torch.Tensor:
        match = _LAYER_NAME.fullmatch(name)
        if match:
            param = by_local[match.group(2)]
            names = layout.hf_layer_names(param, int(match.group(1)))
            if len(names) == 3:
                return layout.to_megatron(param, [weights.get(n) for n in names], args)
            return read_rows(names)
        if name == layout.EMBEDDING[0]:
            return read_rows([layout.EMBEDDING[1]], padded_vocab)
        if name == layout.OUTPUT[0]:
            return read_rows([layout.OUTPUT[1]], padded_vocab)
        if name == layout.FINAL_NORM[0]:
            return weights.get(layout.FINAL_NORM[1])
        raise KeyError(f"no HF source for Megatron parameter {name}")

    return produce


def expected_hf_names(args: LlamaArgs) -> set[str]:
    names = {layout.EMBEDDING[1], layout.FINAL_NORM[1]}
    if not args.tie_word_embeddings:
        names.add(layout.OUTPUT[1])
    for i in range(args.num_hidden_layers):
        for param in layout.LAYER_PARAMS:
            names.update(layout.hf_layer_names(param, i))
    return names


def import_hf(
    hf_dir: str | Path,
    out: str | Path,
    tp: int = 1,
    pp: int = 1,
    make_vocab_size_divisible_by: int = 128,
) -> Path:
    """Convert an HF Llama directory into a Megatron checkpoint root at ``out``."""
    hf_dir, out = Path(hf_dir), Path(out)
    args = read_hf_config(hf_dir)
    check_parallel_shapes(args, tp, pp)
    weights = HFWeights(hf_dir)
    unused = set(weights.names()) - expected_hf_names(args) - {"lm_head.weight"}
    missing = expected_hf_names(args) - set(weights.names())
    if missing or unused:
        raise UserError(
            f"HF weights do not match config: missing {sorted(missing)[:5]}, "
            f"unmapped {sorted(unused)[:5]}"
        )

    # pad the vocabulary as Megatron-LM would at ``tp``; one process writes a TP=1 placeholder model
    padded = padded_vocab_size(args.vocab_size, make_vocab_size_divisible_by, tp)
    args = args.replace(padded_vocab_size=padded)
    parallel.initialize(parallel.ParallelConfig(1, 1), backend="gloo")  # host memory only
    model = build_model(args, BuildOptions(initialize=False, host_only=True))
    out.mkdir(parents=True, exist_ok=True)
    params = dict(model.named_parameters())
    bar = tqdm(total=len(params), desc="import", unit="tensor", disable=parallel.rank() != 0)
    produce = _hf_producer(args, weights, padded)

    def produce_with_progress(name: str) -> torch.Tensor:
        bar.update(1)
        return produce(name)

    dist.stream_save(model, produce_with_progress, out)
    bar.close()
    args.save(out)
    copy_tokenizer(hf_dir, out / TOKENIZER_DIR)
    return out


def export_hf(
    load: str | Path,
    out: str | Path,
    max_shard_bytes: int = 5 * 1024**3,
    allow_partial: bool = False,
) -> Path:
    """Convert a Megatron checkpoint into an HF ``LlamaForCausalLM`` directory at ``out``
    (a training checkpoint cut before its ``--train-iters`` needs ``allow_partial``)."""
    parallel.init_distributed("gloo")  # host memory only, even on a GPU node
    root, out = dist.root_of(load), Path(out)
    args = LlamaArgs.load(root)
    dist.check_complete(load, allow_partial)
    reader = dist.CheckpointReader(load)
    dtype = reader.dtypes[layout.EMBEDDING[0]]
    h, v = args.hidden_size, args.vocab_size

    plan: list[tuple[str, tuple[int, ...], torch.dtype]] = [(layout.EMBEDDING[1], (v, h), dtype)]
    work: list[tuple[str, int | None, list[str]]] = [
        (layout.EMBEDDING[0], None, [layout.EMBEDDING[1]])
    ]
    for i in range(args.num_hidden_layers):
        for param in layout.LAYER_PARAMS:
            key = layout.layer_ckpt_key(param)
            names = layout.hf_layer_names(param, i)
            shapes = [
                tuple(t.shape)
                for t in layout.to_hf(
                    param, torch.empty(reader.shapes[key][1:], device="meta"), args
                )
            ]
            plan += [(n, s, dtype) for n, s in zip(names, shapes, strict=True)]
            work.append((key, i, names))
    plan.append((layout.FINAL_NORM[1], (h,), dtype))
    work.append((layout.FINAL_NORM[0], None, [layout.FINAL_NORM[1]]))
    if not args.tie_word_embeddings:
        plan.append((layout.OUTPUT[1], (v, h), dtype))
        work.append((layout.OUTPUT[0], None, [layout.OUTPUT[1]]))

    writer = SafetensorsWriter(out, plan, max_shard_bytes)
    by_key = {layout.layer_ckpt_key(p): p for p in layout.LAYER_PARAMS}
    for key, layer, names in tqdm(work, desc="export", unit="tensor"):
        tensor = reader.get(key, layer)
        if key in by_key:
            pieces = layout.to_hf(by_key[key], tensor, args)
        else:
            pieces = [tensor[:v] if tensor.dim() == 2 else tensor]
        for name, piece in zip(names, pieces, strict=True):
            writer.write(name, piece)
    writer.close()

    args = args.replace(dtype=dtype_name(dtype))
    (out / "config.json").write_text(json.dumps(args.to_hf_config(), indent=2) + "\n")
    _write_generation_config(args, out)
    copy_tokenizer(root / TOKENIZER_DIR, out)
    return out


def _write_generation_config(args: LlamaArgs, out: Path) -> None:
    config = args.hf_config
    generation = {"_from_model_config": True}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if config.get(key) is not None:
            generation[key] = config[key]
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
