"""Tokenise documents into Megatron indexed shards, fast, partitioned and resumable.

The encoder is gigatoken (Rust, multithreaded; its ids are identical to HF ``tokenizers`` for
byte-level BPE and SentencePiece-BPE tokenizers, which the tests check on the real corpora) with
HF ``tokenizers``/``sentencepiece`` as the fallback. Documents hold exactly the tokenizer's ids for
their text (no BOS is added), followed by EOD when asked. Input is cut into partitions of
``partition_docs`` documents, each written as its own shard with a completion marker, then merged in
order, so a killed run resumes from the last finished partition. A corpus of many files (or
``tasks`` shares of one) becomes one shard per task and a blend file, or one merged shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from motif_megatron.data.blend import blend, data_path
from motif_megatron.data.indexed import IndexedWriter, optimal_dtype, token_count
from motif_megatron.data.readers import (
    Document,
    Reject,
    Unit,
    input_files,
    input_root,
    input_units,
    iter_documents,
    task_units,
)
from motif_megatron.errors import UserError


def _special_token_id(tokenizer_json: dict, content: str) -> int | None:
    for token in tokenizer_json.get("added_tokens", []):
        if token["content"] == content:
            return token["id"]
    return tokenizer_json.get("model", {}).get("vocab", {}).get(content)


class Encoder:
    """Batch encoder for an HF tokenizer directory (``tokenizer.json``) or a SentencePiece model."""

    def __init__(self, tokenizer: str | Path, backend: str = "auto") -> None:
        path = Path(tokenizer)
        model = path / "tokenizer.json" if path.is_dir() else path
        if path.is_dir() and not model.is_file() and (path / "tokenizer.model").is_file():
            model = path / "tokenizer.model"
        if not model.is_file():
            raise UserError(f"no tokenizer.json or tokenizer.model at {path}")
        self.kind = "sentencepiece" if model.suffix == ".model" else "hf"
        self.backend = self._pick_backend(backend)
        if self.kind == "hf":
            spec = json.loads(model.read_text(encoding="utf-8"))
            self.eod = self._hf_eod(path if path.is_dir() else path.parent, spec)
            if self.backend == "gigatoken":
                import gigatoken

                self._tok = gigatoken.Tokenizer.from_json(model.read_bytes())
            else:
                from tokenizers import Tokenizer

                self._tok = Tokenizer.from_file(str(model))
            ids = [t["id"] for t in spec.get("added_tokens", [])]
            self.vocab_size = max([*spec["model"]["vocab"].values(), *ids]) + 1
        else:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
            self.eod = self._sp.eos_id()
            self.vocab_size = self._sp.get_piece_size()
            if self.backend == "gigatoken":
                import gigatoken

                try:
                    self._tok = gigatoken.Tokenizer.from_sentencepiece(model.read_bytes())
                except ValueError:  # gigatoken reads byte-fallback (Llama-2 style) models only
                    if backend == "gigatoken":
                        raise UserError(
                            f"gigatoken cannot read {model.name}; use --backend reference"
                        ) from None
                    self.backend = "reference"

    @staticmethod
    def _pick_backend(backend: str) -> str:
        if backend != "auto":
            return backend
        try:
            import gigatoken  # noqa: F401
        except ImportError:
            return "reference"
        return "gigatoken"

    @staticmethod
    def _hf_eod(folder: Path, spec: dict) -> int:
        config = folder / "tokenizer_config.json"
        eos = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
        if isinstance(eos, dict):
            eos = eos.get("content")
        candidates = [eos] if eos else ["<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>"]
        for content in candidates:
            found = _special_token_id(spec, content)
            if found is not None:
                return found
        raise UserError(f"cannot find the EOD token ({candidates}) in the tokenizer at {folder}")

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Concatenated ids and per-document lengths for ``texts`` (no special tokens added)."""
        if self.backend == "gigatoken":
            import awkward as ak

            encoded = self._tok.encode_batch(texts)
            return ak.to_numpy(ak.flatten(encoded)), ak.to_numpy(ak.num(encoded))
        if self.kind == "hf":
            docs = [
                np.asarray(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)
            ]
        else:
            docs = [np.asarray(ids) for ids in self._sp.encode(texts)]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        return (np.concatenate(docs) if docs else np.zeros(0, np.int64)), lengths


@dataclass
class TokenizeStats:
    documents: int = 0
    tokens: int = 0
    rejected: int = 0
    seconds: float = 0.0


def _partitions(records: Iterator[Document | Reject], size: int):
    while chunk := list(islice(records, size)):
        yield chunk


def fingerprint(tokenizer: str | Path, append_eod: bool) -> dict:
    """What a shard's ids depend on: the tokenizer file's SHA-256 and whether EOD follows."""
    path = Path(tokenizer)
    if path.is_dir():
        found = [path / n for n in ("tokenizer.json", "tokenizer.model") if (path / n).is_file()]
        path = found[0] if found else path / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"no tokenizer.json or tokenizer.model at {tokenizer}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"tokenizer_sha256": digest, "append_eod": append_eod}


def refuse_other(prefix: str, made: dict) -> None:
    """A shard (or a partition of one) at ``prefix`` made with another tokenizer or settings is
    refused, never reused: its ids would be silently kept."""
    found = [
        Path(prefix + ".json"),
        *sorted(Path(prefix).parent.glob(Path(prefix).name + ".part*.done")),
    ]
    for marker in (m for m in found if m.is_file()):
        old = json.loads(marker.read_text())
        changed = sorted(k for k in made if old.get(k) != made[k])
        if changed:
            raise UserError(
                f"{marker} was made with another tokenizer or settings ({', '.join(changed)}): "
                "use a new --output-prefix, or delete those files to start over"
            )


def tokenize_records(
    records: Iterator[Document | Reject],
    final: str,
    encoder: Encoder,
    append_eod: bool,
    partition_docs: int,
    progress: bool,
    made: dict,
) -> TokenizeStats:
    """Write ``final.{bin,idx}`` (and ``final.json`` last) from ``records``, partition by
    partition; a partition finished by an interrupted run is reused (``made`` by the same
    tokenizer: :func:`refuse_other` checks first)."""
    refuse_other(final, made)
    from tqdm import tqdm

    start = time.time()
    dtype = optimal_dtype(encoder.vocab_size)
    Path(final).parent.mkdir(parents=True, exist_ok=True)
    stats = TokenizeStats()
    parts = []
    rejects_path = Path(final + ".rejects.jsonl")
    with (
        open(rejects_path, "w") as rejects,
        tqdm(desc=f"tokenize {Path(final).name}", unit="doc", disable=not progress) as bar,
    ):
        for index, chunk in enumerate(_partitions(records, partition_docs)):
            part = f"{final}.part{index:05d}"
            parts.append(part)
            docs = [r for r in chunk if isinstance(r, Document)]
            for r in chunk:
                if isinstance(r, Reject):
                    where = {"offset": r.offset} if r.offset is not None else {"line": r.line}
                    record = {"source": r.source, **where, "reason": r.reason}
                    rejects.write(json.dumps(record) + "\n")
            stats.rejected += len(chunk) - len(docs)
            marker = Path(part + ".done")
            if marker.is_file():  # finished by an earlier, interrupted run
                done = json.loads(marker.read_text())
                stats.documents += done["documents"]
                stats.tokens += done["tokens"]
                bar.update(len(chunk))
                continue
            tokens, lengths = encoder.encode([d.text for d in docs])
            if append_eod:
                tokens, lengths = _append(tokens, lengths, encoder.eod)
            writer = IndexedWriter(part, dtype)
            writer.add_flat(tokens, lengths)
            writer.close()
            done = {"documents": len(docs), "tokens": int(lengths.sum())} | made
            marker.write_text(json.dumps(done))
            stats.documents += len(docs)
            stats.tokens += int(lengths.sum())
            bar.update(len(chunk))
    _merge(parts, final, dtype)
    if not stats.rejected:
        rejects_path.unlink()
    stats.seconds = time.time() - start
    _summary(final, stats, _meta(encoder) | made)
    return stats


def _merge(shards: list[str], final: str, dtype) -> None:
    """Megatron's shard merge: ``shards`` one after another into ``final``, then removed."""
    writer = IndexedWriter(final, dtype)
    for shard in shards:
        writer.add_shard(shard)
    writer.close()
    for shard in shards:
        for suffix in (".bin", ".idx", ".done", ".json", ".rejects.jsonl"):
            Path(shard + suffix).unlink(missing_ok=True)


def _meta(encoder: Encoder) -> dict:
    dtype = np.dtype(optimal_dtype(encoder.vocab_size)).name
    return {"dtype": dtype, "eod": encoder.eod, "backend": encoder.backend}


def _summary(final: str, stats: TokenizeStats, meta: dict) -> None:
    Path(final + ".json").write_text(json.dumps(stats.__dict__ | meta) + "\n")


class TokenizeShards:
    """Task ``rank`` of a tokenisation: its share of the corpus into
    ``{prefix}_{rank:05d}_{key}_document`` (ours as a datatrove pipeline step, a plain callable:
    gigatoken's ids, which equal the HF tokenizer's, Megatron's format, partitions to resume
    from; its counts are in the shard's summary). A finished shard is kept."""

    def __init__(self, units: list[Unit], prefix: str, json_key: str, settings: dict) -> None:
        """``settings``: tokenizer, backend, append_eod, partition_docs, threads, made."""
        self.units, self.prefix, self.json_key, self.settings = units, prefix, json_key, settings

    def __call__(self, data=None, rank: int = 0, world_size: int = 1):
        s = self.settings
        shard = shard_prefix(self.prefix, rank, self.json_key)
        if not Path(shard + ".json").is_file():
            # the Rust encoders size their thread pools from these at first use
            os.environ["RAYON_NUM_THREADS"] = os.environ["GIGATOKEN_NUM_THREADS"] = str(
                s["threads"]
            )
            encoder = Encoder(s["tokenizer"], s["backend"])
            records = (
                r
                for u in task_units(self.units, rank, world_size)
                for r in u.documents(self.json_key, "id")
            )
            tokenize_records(
                records, shard, encoder, s["append_eod"], s["partition_docs"], False, s["made"]
            )
        return data


def shard_prefix(prefix: str | Path, rank: int, json_key: str) -> str:
    return f"{prefix}_{rank:05d}_{json_key}_document"


def tokenize_corpus(
    input_path: str | Path,
    output_prefix: str | Path,
    tokenizer: str | Path,
    json_key: str = "text",
    append_eod: bool = True,
    partition_docs: int = 20000,
    max_docs: int | None = None,
    backend: str = "auto",
    progress: bool = True,
    tasks: int | None = None,
    merge: bool = False,
    executor: str | None = None,
    workers: int = 1,
    threads: int = 1,
    logging_dir: str | Path | None = None,
    **executor_options,
) -> TokenizeStats:
    """Tokenise a corpus (a file, a folder or a glob). One task in this process (one file and
    no ``executor``) writes ``{output_prefix}_{json_key}_document.{bin,idx}``; ``tasks`` shares
    (one per file by default) run on ``executor`` (datatrove's local, Slurm or Ray executor,
    ``workers`` at once, ``threads`` encoder threads each) and write
    ``{output_prefix}_{rank:05d}_{json_key}_document`` each, listed with token-count weights in
    ``..._document.blend`` (Megatron's ``--data-path`` syntax), or merged into one shard
    (``merge``). Finished tasks are kept on a rerun; shards of another tokenizer are refused."""
    made = fingerprint(tokenizer, append_eod)
    files = input_files(input_path)
    tasks = tasks or len(files)
    final = f"{output_prefix}_{json_key}_document"
    if tasks == 1 and executor is None:
        encoder = Encoder(tokenizer, backend)
        records = (r for f in files for r in iter_documents(f, text_key=json_key))
        return tokenize_records(
            islice(records, max_docs), final, encoder, append_eod, partition_docs, progress, made
        )
    if max_docs is not None:
        raise UserError("--max-docs needs a single task (one input file, no --tasks or --executor)")
    shards = [shard_prefix(output_prefix, rank, json_key) for rank in range(tasks)]
    for shard in [*shards, final]:
        refuse_other(shard, made)
    from motif_megatron.data.blocks import metered
    from motif_megatron.data.executors import Stage, execute

    settings = {
        "tokenizer": str(Path(tokenizer).resolve()),
        "backend": backend,
        "append_eod": append_eod,
        "partition_docs": partition_docs,
        "threads": threads,
        "made": made,
    }
    units = input_units(files, tasks, input_root(input_path))
    step = TokenizeShards(units, str(Path(output_prefix).resolve()), json_key, settings)
    logs = Path(logging_dir) if logging_dir else Path(f"{final}.logs")
    stage = Stage("tokenize", metered([step]), tasks)
    # this process holds no encoder and no threads: forked workers skip its imports
    execute([stage], executor or "local", workers, logs, start_method="fork", **executor_options)
    total, summaries = TokenizeStats(), [json.loads(Path(s + ".json").read_text()) for s in shards]
    for done in summaries:
        for k in ("documents", "tokens", "rejected", "seconds"):
            setattr(total, k, getattr(total, k) + done[k])
    if merge:  # the tasks' encoders said what the shards hold
        meta = {k: summaries[0][k] for k in ("dtype", "eod", "backend")} | made
        _merge(shards, final, np.dtype(meta["dtype"]).type)
        _summary(final, total, meta)
        return total
    entries = blend({"corpus": (1.0, [s for s in shards if token_count(s)])})
    Path(final + ".blend").write_text(" ".join(data_path(entries)) + "\n")
    return total


def _append(tokens: np.ndarray, lengths: np.ndarray, eod: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``eod`` after every document of a flat token array (vectorised)."""
    ends = np.cumsum(lengths)
    return np.insert(tokens, ends, eod), lengths + 1
