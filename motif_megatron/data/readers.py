"""Read documents from JSONL (plain, .gz, .zst, .xz), Parquet, or a folder of text files.

Every input unit yields either a :class:`Document` or a :class:`Reject` (malformed JSON, invalid
UTF-8, a missing or non-string text field) so callers can account for every line: nothing is
silently dropped and nothing stops a run. A corpus is a file, a folder or a glob of files
(:func:`input_files`); :func:`input_units` cuts it into contiguous, input-ordered pieces so that
``N`` tasks share even one large plain JSONL file (a piece is a byte range of whole lines).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from motif_megatron.errors import UserError

TEXT_SUFFIXES = (".txt", ".md", ".rst")
JSONL_SUFFIXES = tuple(f"{b}{z}" for z in ("", ".gz", ".zst", ".xz") for b in (".jsonl", ".json"))
PLAIN_SUFFIXES = (".jsonl", ".json")


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
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
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


def _lines_before(path: Path, offset: int, chunk: int = 1 << 24) -> int:
    """Newlines in the first ``offset`` bytes: a piece's first line number, so that ids and
    reject lines are the same whatever the number of tasks (a read of the file's prefix at
    ``bytes.count`` speed, once per piece)."""
    count = 0
    with open(path, "rb") as f:
        while offset > 0:
            block = f.read(min(chunk, offset))
            count += block.count(b"\n")
            offset -= len(block)
    return count


def _jsonl(
    path: Path, text_key: str, id_key: str, start: int = 0, end: int | None = None
) -> Iterator[Document | Reject]:
    """The lines of ``path`` that start in bytes ``[start, end)`` (the whole file by default)."""
    with _open_binary(path) as f:
        line = 0
        if start:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # mid-line: that line belongs to the previous piece
                f.readline()
            line = _lines_before(path, f.tell())
        position = f.tell() if start else 0
        while end is None or position < end:
            raw = f.readline()
            if not raw:
                return
            position += len(raw)
            yield _decode_line(raw, line, path.name, text_key, id_key)
            line += 1


def _decode_line(raw: bytes, line: int, source: str, text_key: str, id_key: str):
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reject(line, "invalid_utf8", source)
    if not decoded.strip():
        return Reject(line, "blank_line", source)
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError:
        return Reject(line, "malformed_json", source)
    return _from_mapping(record, line, source, text_key, id_key)


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
    path: str | Path,
    text_key: str = "text",
    id_key: str = "id",
    start: int = 0,
    end: int | None = None,
) -> Iterator[Document | Reject]:
    """Documents and rejects of ``path`` (of bytes ``[start, end)`` of a plain JSONL file), in
    input order."""
    path = Path(path)
    if path.is_dir():
        return _text_folder(path)
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    name = path.name
    if name.endswith(JSONL_SUFFIXES):
        return _jsonl(path, text_key, id_key, start, end)
    if name.endswith(".parquet"):
        return _parquet(path, text_key, id_key)
    raise UserError(
        f"unsupported input {path.name}: use .jsonl[.gz|.zst|.xz], .parquet or a folder"
    )


def input_files(spec: str | Path) -> list[Path]:
    """The corpus ``spec`` names, sorted: a file, a glob, or a folder (its JSONL/Parquet files,
    recursively; a folder without any is one unit of text files)."""
    spec = str(spec)
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"--input {spec}: no file matches")
        return files
    path = Path(spec)
    if path.is_dir():
        data = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.name.endswith((*JSONL_SUFFIXES, ".parquet"))
        )
        return data or [path]
    if not path.exists():
        raise UserError(f"input {path} does not exist")
    return [path]


@dataclass(frozen=True)
class Unit:
    """A piece of the corpus one task reads: a whole file, or a byte range of a plain JSONL."""

    path: str
    start: int = 0
    end: int | None = None

    def documents(self, text_key: str, id_key: str) -> Iterator[Document | Reject]:
        return iter_documents(self.path, text_key, id_key, self.start, self.end)


def input_units(files: list[Path], tasks: int) -> list[Unit]:
    """Input-ordered units, plain JSONL files cut into about ``total / tasks`` bytes each so that
    every task has work even for a single large file."""
    sizes = [os.path.getsize(f) if f.is_file() else 0 for f in files]
    piece = max(sum(sizes) // max(tasks, 1), 1)
    units = []
    for f, size in zip(files, sizes, strict=True):
        if f.name.endswith(PLAIN_SUFFIXES) and size > piece:
            cuts = range(0, size, piece)
            units += [Unit(str(f), a, min(a + piece, size)) for a in cuts]
        else:
            units.append(Unit(str(f)))
    return units


def task_units(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """Task ``rank``'s contiguous share (tasks in rank order read the corpus in input order)."""
    n = len(units)
    return units[rank * n // world_size : (rank + 1) * n // world_size]


def corpus_texts(spec: str | Path, text_key: str = "text") -> Iterator[str]:
    """The texts of every document of a corpus (file, folder or glob), streamed in input order;
    bad lines are skipped (the corpus pipeline accounts for them)."""
    files = input_files(spec)  # checked now, not at the first next()
    return (
        r.text
        for f in files
        for r in iter_documents(f, text_key=text_key)
        if isinstance(r, Document)
    )
