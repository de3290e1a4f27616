"""Read documents from JSONL (plain, .gz, .zst), Parquet, or a folder of text files.

Every input unit yields either a :class:`Document` or a :class:`Reject` (malformed JSON, invalid
UTF-8, a missing or non-string text field) so callers can account for every line: nothing is
silently dropped and nothing stops a run.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from motif_megatron.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class Document:
    line: int
    """0-based position of the unit in the input (line, row or file)."""
    id: str
    text: str
    source: str


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    source: str


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _from_mapping(record: object, line: int, source: str, text_key: str, id_key: str):
    if not isinstance(record, dict):
        return Reject(line, "not_an_object", source)
    if text_key not in record:
        return Reject(line, f"missing_{text_key}", source)
    text = record[text_key]
    if not isinstance(text, str):
        return Reject(line, f"non_string_{text_key}", source)
    doc_id = record.get(id_key)
    return Document(line, str(doc_id) if doc_id is not None else f"{source}:{line}", text, source)


def _jsonl(path: Path, text_key: str, id_key: str) -> Iterator[Document | Reject]:
    with _open_binary(path) as f:
        for line, raw in enumerate(f):
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield Reject(line, "invalid_utf8", path.name)
                continue
            if not decoded.strip():
                yield Reject(line, "blank_line", path.name)
                continue
            try:
                record = json.loads(decoded)
            except json.JSONDecodeError:
                yield Reject(line, "malformed_json", path.name)
                continue
            yield _from_mapping(record, line, path.name, text_key, id_key)


def _parquet(path: Path, text_key: str, id_key: str) -> Iterator[Document | Reject]:
    import pyarrow.parquet as pq

    line = 0
    for batch in pq.ParquetFile(path).iter_batches():
        for record in batch.to_pylist():
            yield _from_mapping(record, line, path.name, text_key, id_key)
            line += 1


def _text_folder(path: Path) -> Iterator[Document | Reject]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
    for line, file in enumerate(files):
        rel = str(file.relative_to(path))
        try:
            yield Document(line, rel, file.read_bytes().decode("utf-8"), path.name)
        except UnicodeDecodeError:
            yield Reject(line, "invalid_utf8", rel)


def iter_documents(
    path: str | Path, text_key: str = "text", id_key: str = "id"
) -> Iterator[Document | Reject]:
    """Documents and rejects of ``path``, in input order."""
    path = Path(path)
    if path.is_dir():
        return _text_folder(path)
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    name = path.name
    if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")):
        return _jsonl(path, text_key, id_key)
    if name.endswith(".parquet"):
        return _parquet(path, text_key, id_key)
    raise UserError(f"unsupported input {path.name}: use .jsonl[.gz|.zst], .parquet or a folder")
