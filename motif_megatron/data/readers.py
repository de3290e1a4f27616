"""Read documents from JSONL (plain, .gz, .zst, .xz), Parquet, or a folder of text files.

Every input unit yields either a :class:`Document` or a :class:`Reject` (malformed JSON, invalid
UTF-8, a lone surrogate escape, a missing or non-string text field) so callers can account for
every line: nothing is silently dropped and nothing stops a run. A compressed file that is cut
short, corrupt or not what its name says yields the documents before the damage, then one reject.
A corpus is a file, a folder or a glob of files (:func:`input_files`); :func:`input_units` cuts
it into contiguous, input-ordered pieces so that ``N`` tasks share even one large plain JSONL
file: a piece is a byte range of whole lines, which its task finds by seeking, never by reading
what comes before it (a line is then located by its byte offset).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import os
import zlib
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
    """0-based position of the unit in its piece of the input (line, row or file); a piece that
    starts the file counts from its start."""
    id: str
    text: str
    source: str
    offset: int | None = None
    """Byte offset of the line in a plain JSONL file (stable whatever the pieces)."""


@dataclass(frozen=True)
class Reject:
    line: int
    reason: str
    source: str
    offset: int | None = None


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    if path.suffix == ".zst":
        return io.BufferedReader(_Zstd(path), 1 << 20)
    return open(path, "rb")


class _Zstd(io.RawIOBase):
    """A zstd file's frames, one after another, that raises ``EOFError`` where the file ends
    inside a frame (zstandard's own stream reader just stops there)."""

    def __init__(self, path: Path, chunk: int = 1 << 20) -> None:
        import zstandard

        self._zstd, self._file, self._chunk = zstandard, open(path, "rb"), chunk  # noqa: SIM115
        self._frame, self._in_frame = None, False
        self._pending, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Decompress the next chunk of the file; False at its end."""
        data, out = self._file.read(self._chunk), []
        if not data:
            if self._in_frame:
                raise EOFError("zstd file ends inside a frame")
            return False
        while data:
            if self._frame is None:
                self._frame = self._zstd.ZstdDecompressor().decompressobj()
            out.append(self._frame.decompress(data))
            self._in_frame, data = not self._frame.eof, b""
            if self._frame.eof:  # the next frame starts in what is left
                data, self._frame = self._frame.unused_data, None
        self._pending, self._pos = b"".join(out), 0
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._pending):
            if not self._fill():
                return 0
        n = min(len(buffer), len(self._pending) - self._pos)
        buffer[:n] = self._pending[self._pos : self._pos + n]
        self._pos += n
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _from_mapping(record: object, line: int, source: str, text_key: str, id_key: str, offset=None):
    """A document of ``record``; without an id, its place: ``source@offset`` in a plain JSONL
    file, else ``source:line``."""
    if not isinstance(record, dict):
        return Reject(line, "not_an_object", source, offset)
    if text_key not in record:
        return Reject(line, f"missing_{text_key}", source, offset)
    text = record[text_key]
    if not isinstance(text, str):
        return Reject(line, f"non_string_{text_key}", source, offset)
    doc_id = record.get(id_key)
    if doc_id is None:
        doc_id = f"{source}@{offset}" if offset is not None else f"{source}:{line}"
    return Document(line, str(doc_id), text, source, offset)


READ_ERRORS: tuple[type[BaseException], ...] = (EOFError, OSError, lzma.LZMAError, zlib.error)


def _read_error(path: Path, exc: BaseException, read_any: bool) -> str:
    """``truncated_file`` (the stream ends early), ``not_<format>`` (nothing could be read:
    a file named for a format it is not in) or ``corrupt_file``."""
    if isinstance(exc, EOFError):
        return "truncated_file"
    if not read_any:
        return f"not_{path.suffix.lstrip('.')}"
    return "corrupt_file"


def _read_errors() -> tuple[type[BaseException], ...]:
    try:
        import zstandard
    except ImportError:
        return READ_ERRORS
    return (*READ_ERRORS, zstandard.ZstdError)


def _jsonl(
    path: Path, source: str, text_key: str, id_key: str, start: int = 0, end: int | None = None
) -> Iterator[Document | Reject]:
    """The lines of ``path`` that start in bytes ``[start, end)`` (the whole file by default)."""
    plain = path.name.endswith(PLAIN_SUFFIXES)
    line, position = 0, 0
    try:
        with _open_binary(path) as f:
            if start:
                f.seek(start - 1)
                if f.read(1) != b"\n":  # mid-line: that line belongs to the previous piece
                    f.readline()
                position = f.tell()
            while end is None or position < end:
                raw = f.readline()
                if not raw:
                    return
                offset = position if plain else None
                position += len(raw)
                yield _decode_line(raw, line, offset, source, text_key, id_key)
                line += 1
    except _read_errors() as exc:
        yield Reject(line, _read_error(path, exc, position > 0), source)


def _decode_line(raw: bytes, line: int, offset, source: str, text_key: str, id_key: str):
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Reject(line, "invalid_utf8", source, offset)
    if not decoded.strip():
        return Reject(line, "blank_line", source, offset)
    try:
        record = json.loads(decoded)
    except json.JSONDecodeError:
        return Reject(line, "malformed_json", source, offset)
    if (b"\\ud" in raw or b"\\uD" in raw) and _lone_surrogate(record):
        return Reject(line, "lone_surrogate", source, offset)  # valid JSON, not valid text
    return _from_mapping(record, line, source, text_key, id_key, offset)


def _lone_surrogate(record: object) -> bool:
    """Whether a string of ``record`` (a ``\\ud800``-style escape) cannot be UTF-8."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _parquet(path: Path, source: str, text_key: str, id_key: str) -> Iterator[Document | Reject]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    line = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches():
            for record in batch.to_pylist():
                yield _from_mapping(record, line, source, text_key, id_key)
                line += 1
    except (pa.ArrowException, OSError):
        yield Reject(line, "corrupt_file" if line else "not_parquet", source)


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
    source: str | None = None,
) -> Iterator[Document | Reject]:
    """Documents and rejects of ``path`` (of bytes ``[start, end)`` of a plain JSONL file), in
    input order; ``source`` names the file in ids and rejects (its name by default)."""
    path = Path(path)
    if path.is_dir():
        return _text_folder(path)
    if not path.is_file():
        raise UserError(f"input {path} does not exist")
    name, source = path.name, source or path.name
    if name.endswith(JSONL_SUFFIXES):
        return _jsonl(path, source, text_key, id_key, start, end)
    if name.endswith(".parquet"):
        return _parquet(path, source, text_key, id_key)
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


COMPRESSION_RATIO = 4
"""Text bytes per byte of a compressed input, for sizing (gzip, zstd and xz reach 3-5 on text)."""


def text_bytes(files: list[Path]) -> int:
    """About how many bytes of text ``files`` hold (compressed ones by :data:`COMPRESSION_RATIO`)."""
    total = 0
    for f in files:
        if f.is_dir():
            total += sum(p.stat().st_size for p in f.rglob("*") if p.suffix in TEXT_SUFFIXES)
        else:
            compressed = f.suffix in (".gz", ".zst", ".xz", ".parquet")
            total += f.stat().st_size * (COMPRESSION_RATIO if compressed else 1)
    return total


def input_root(spec: str | Path) -> Path:
    """The folder the corpus ``spec`` names its files from: a folder itself, a glob's fixed
    leading folders, a file's parent."""
    parts = Path(spec).parts
    fixed = next((k for k, part in enumerate(parts) if any(ch in part for ch in "*?[")), None)
    if fixed is not None:
        return Path(*parts[:fixed]) if fixed else Path(".")
    path = Path(spec)
    return path if path.is_dir() else path.parent


@dataclass(frozen=True)
class Unit:
    """A piece of the corpus one task reads: a whole file, or a byte range of a plain JSONL.
    ``source`` is the file's path from the input root (two files of one name in two folders
    stay apart in ids and rejects)."""

    path: str
    start: int = 0
    end: int | None = None
    source: str | None = None

    def documents(self, text_key: str, id_key: str) -> Iterator[Document | Reject]:
        return iter_documents(self.path, text_key, id_key, self.start, self.end, self.source)


def input_units(files: list[Path], tasks: int, root: Path | None = None) -> list[Unit]:
    """Input-ordered units, plain JSONL files cut into about ``total / tasks`` bytes each so that
    every task has work even for a single large file; sources relative to ``root``."""
    sizes = [os.path.getsize(f) if f.is_file() else 0 for f in files]
    piece = max(sum(sizes) // max(tasks, 1), 1)
    units = []
    for f, size in zip(files, sizes, strict=True):
        source = os.path.relpath(f, root) if root is not None and f.is_file() else None
        if f.name.endswith(PLAIN_SUFFIXES) and size > piece:
            cuts = range(0, size, piece)
            units += [Unit(str(f), a, min(a + piece, size), source) for a in cuts]
        else:
            units.append(Unit(str(f), source=source))
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
