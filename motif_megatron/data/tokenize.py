"""Tokenise documents into Megatron indexed shards, fast, partitioned and resumable.

The encoder is gigatoken (Rust, multithreaded; its ids are identical to HF ``tokenizers`` for
byte-level BPE and SentencePiece-BPE tokenizers, which the tests check on the real corpora) with
HF ``tokenizers``/``sentencepiece`` as the fallback. Documents hold exactly the tokenizer's ids for
their text (no BOS is added), followed by EOD when asked. Input is cut into partitions of
``partition_docs`` documents, each written as its own shard with a completion marker, then merged in
order, so a killed run resumes from the last finished partition.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np

from motif_megatron.data.indexed import IndexedWriter, optimal_dtype
from motif_megatron.data.readers import Document, Reject, iter_documents
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


def tokenize_file(
    input_path: str | Path,
    output_prefix: str | Path,
    tokenizer: str | Path,
    json_key: str = "text",
    append_eod: bool = True,
    partition_docs: int = 20000,
    max_docs: int | None = None,
    backend: str = "auto",
    progress: bool = True,
) -> TokenizeStats:
    """Write ``{output_prefix}_{json_key}_document.{bin,idx}``; returns what was written."""
    from tqdm import tqdm

    start = time.time()
    encoder = Encoder(tokenizer, backend)
    dtype = optimal_dtype(encoder.vocab_size)
    final = f"{output_prefix}_{json_key}_document"
    Path(final).parent.mkdir(parents=True, exist_ok=True)
    records = islice(iter_documents(input_path, text_key=json_key), max_docs)
    stats = TokenizeStats()
    parts = []
    rejects_path = Path(final + ".rejects.jsonl")
    with (
        open(rejects_path, "w") as rejects,
        tqdm(desc="tokenize", unit="doc", disable=not progress) as bar,
    ):
        for index, chunk in enumerate(_partitions(records, partition_docs)):
            part = f"{final}.part{index:05d}"
            parts.append(part)
            docs = [r for r in chunk if isinstance(r, Document)]
            for r in chunk:
                if isinstance(r, Reject):
                    rejects.write(json.dumps({"line": r.line, "reason": r.reason}) + "\n")
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
            marker.write_text(json.dumps({"documents": len(docs), "tokens": int(lengths.sum())}))
            stats.documents += len(docs)
            stats.tokens += int(lengths.sum())
            bar.update(len(chunk))
    writer = IndexedWriter(final, dtype)
    for part in parts:
        writer.add_shard(part)
    writer.close()
    for part in parts:
        for suffix in (".bin", ".idx", ".done"):
            Path(part + suffix).unlink()
    if not stats.rejected:
        rejects_path.unlink()
    stats.seconds = time.time() - start
    Path(final + ".json").write_text(
        json.dumps(
            stats.__dict__
            | {"dtype": np.dtype(dtype).name, "eod": encoder.eod, "backend": encoder.backend}
        )
        + "\n"
    )
    return stats


def _append(tokens: np.ndarray, lengths: np.ndarray, eod: int) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``eod`` after every document of a flat token array (vectorised)."""
    ends = np.cumsum(lengths)
    return np.insert(tokens, ends, eod), lengths + 1
