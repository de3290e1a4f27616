"""Megatron-Core indexed datasets (``MMIDIDX`` ``.bin``/``.idx``), written without torch or Megatron.

Byte-for-byte the format of ``megatron.core.datasets.indexed_dataset.IndexedDatasetBuilder`` for
GPT-style shards (one sequence per document): the ``.bin`` is the concatenated token ids, the
``.idx`` a header, the dtype code, counts, int32 sequence lengths, int64 byte pointers and int64
document indices. Writing from NumPy keeps the tokeniser tools free of torch's import cost.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"
_DTYPE_CODES = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
_CODE_DTYPES = {code: dtype for dtype, code in _DTYPE_CODES.items()}


def optimal_dtype(vocab_size: int) -> type[np.number]:
    """Megatron's rule: uint16 below 65,500 ids, int32 above (Llama-3's 128k vocab needs int32)."""
    return np.uint16 if vocab_size < 65500 else np.int32


def write_index(idx_path: str | Path, dtype: type[np.number], lengths: np.ndarray) -> None:
    """The ``.idx`` for documents of ``lengths`` tokens (one sequence per document)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    pointers = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(dtype).itemsize, out=pointers[1:])
    with open(idx_path, "wb") as f:
        f.write(INDEX_HEADER)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", _DTYPE_CODES[dtype]))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(lengths) + 1))
        f.write(lengths.tobytes(order="C"))
        f.write(pointers.tobytes(order="C"))
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes(order="C"))


def read_index(idx_path: str | Path) -> tuple[type[np.number], np.ndarray]:
    """``(dtype, sequence lengths)`` of an ``.idx`` file."""
    with open(idx_path, "rb") as f:
        if f.read(len(INDEX_HEADER)) != INDEX_HEADER:
            raise ValueError(f"{idx_path} is not a Megatron MMIDIDX index")
        f.read(8)
        (code,) = struct.unpack("<B", f.read(1))
        (count,) = struct.unpack("<Q", f.read(8))
        f.read(8)
        lengths = np.frombuffer(f.read(4 * count), dtype=np.int32)
    return _CODE_DTYPES[code], lengths


class IndexedWriter:
    """Append documents (arrays of token ids) to ``prefix.bin``; ``close`` writes ``prefix.idx``."""

    def __init__(self, prefix: str | Path, dtype: type[np.number]) -> None:
        self.prefix = str(prefix)
        self.dtype = dtype
        self._bin = open(self.prefix + ".bin", "wb")  # noqa: SIM115 -- closed in close()
        self._lengths: list[np.ndarray] = []

    def add_flat(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Add many documents at once: their concatenated ids and each one's length."""
        self._bin.write(np.asarray(tokens, dtype=self.dtype).tobytes(order="C"))
        self._lengths.append(np.asarray(lengths, dtype=np.int32))

    def add_shard(self, prefix: str | Path) -> None:
        """Append another shard of the same dtype (partition merge)."""
        dtype, lengths = read_index(str(prefix) + ".idx")
        if dtype != self.dtype:
            raise ValueError(f"{prefix}: dtype {dtype} differs from {self.dtype}")
        with open(str(prefix) + ".bin", "rb") as f:
            shutil.copyfileobj(f, self._bin)
        self._lengths.append(lengths)

    def close(self) -> int:
        """Finish both files; returns the number of documents."""
        self._bin.close()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int32)
        write_index(self.prefix + ".idx", self.dtype, lengths)
        return len(lengths)


def token_count(prefix: str | Path) -> int:
    """Total tokens in a shard, from its index alone."""
    return int(read_index(str(prefix) + ".idx")[1].sum(dtype=np.int64))
