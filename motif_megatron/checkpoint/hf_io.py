"""Stream HF safetensors checkpoints tensor by tensor, in both directions.

Reading opens every shard lazily (``safe_open``) and returns one tensor at a time. Writing lays out
all shard headers up front from the planned names, shapes and dtypes, then writes each tensor's
bytes at its offset, so peak memory is one tensor whatever the model size.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from motif_megatron.errors import UserError

_ST_DTYPES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.int32: "I32",
}
INDEX_FILE = "model.safetensors.index.json"


class HFWeights:
    """Read-only view of an HF checkpoint directory's safetensors weights.

    Tensors are read with positioned reads into fresh tensors rather than through an mmap: mapped
    file pages stay resident in the process, so an mmap reader grows to the model's size.
    """

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_FILE
        single = self.dir / "model.safetensors"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif single.is_file():
            files = [single.name]
        else:
            raise UserError(f"no model.safetensors or {INDEX_FILE} in {self.dir}")
        self._entries: dict[str, tuple[Path, int, list[int], torch.dtype]] = {}
        for file in files:
            path = self.dir / file
            for name, (offset, shape, dtype) in _read_header(path).items():
                self._entries[name] = (path, offset, shape, dtype)

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> list[int]:
        return self._entries[name][2]

    def dtype(self, name: str) -> torch.dtype:
        return self._entries[name][3]

    def get(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """Read tensor ``name``, into ``out`` (a contiguous slice of a larger tensor) if given."""
        if name not in self._entries:
            raise UserError(f"tensor {name!r} missing from {self.dir}")
        path, offset, shape, dtype = self._entries[name]
        if out is not None and (list(out.shape) != list(shape) or out.dtype != dtype):
            raise UserError(
                f"{name}: stored {shape} {dtype}, expected {list(out.shape)} {out.dtype}"
            )
        tensor = torch.empty(shape, dtype=dtype) if out is None else out
        buffer = tensor.reshape(-1).view(torch.uint8).numpy()
        with open(path, "rb") as f:
            f.seek(offset)
            if f.readinto(memoryview(buffer)) != buffer.nbytes:
                raise UserError(f"{path} is truncated (tensor {name})")
        return tensor


def _read_header(path: Path) -> dict[str, tuple[int, list[int], torch.dtype]]:
    """``name -> (absolute byte offset, shape, dtype)`` from a safetensors file header."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    by_code = {code: dtype for dtype, code in _ST_DTYPES.items()}
    entries = {}
    for name, info in header.items():
        if info["dtype"] not in by_code:
            raise UserError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        entries[name] = (8 + size + info["data_offsets"][0], info["shape"], by_code[info["dtype"]])
    return entries


class SafetensorsWriter:
    """Write planned tensors into sharded safetensors files, in any order, one tensor in memory."""

    def __init__(
        self,
        out_dir: str | Path,
        plan: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
        max_shard_bytes: int = 5 * 1024**3,
    ) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        shards: list[list[tuple[str, tuple[int, ...], torch.dtype]]] = [[]]
        size = 0
        for name, shape, dtype in plan:
            nbytes = _nbytes(shape, dtype)
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append((name, tuple(shape), dtype))
            size += nbytes
        total = len(shards)
        self._where: dict[str, tuple[Path, int, tuple[int, ...], torch.dtype]] = {}
        self._written: set[str] = set()
        self.files = []
        for i, shard in enumerate(shards):
            file = self.dir / (
                "model.safetensors"
                if total == 1
                else f"model-{i + 1:05d}-of-{total:05d}.safetensors"
            )
            self.files.append(file)
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name, shape, dtype in shard:
                end = offset + _nbytes(shape, dtype)
                header[name] = {
                    "dtype": _ST_DTYPES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, end],
                }
                offset = end
            blob = json.dumps(header, separators=(",", ":")).encode()
            blob += b" " * (-len(blob) % 8)
            with open(file, "wb") as f:
                f.write(struct.pack("<Q", len(blob)) + blob)
                f.truncate(8 + len(blob) + offset)
            data_start = 8 + len(blob)
            for name, shape, dtype in shard:
                self._where[name] = (
                    file,
                    data_start + header[name]["data_offsets"][0],
                    shape,
                    dtype,
                )

    def write(self, name: str, tensor: torch.Tensor) -> None:
        file, offset, shape, dtype = self._where[name]
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            raise ValueError(
                f"{name}: planned {shape} {dtype}, got {tuple(tensor.shape)} {tensor.dtype}"
            )
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        with open(file, "r+b") as f:
            f.seek(offset)
            f.write(memoryview(data))
        self._written.add(name)

    def close(self) -> None:
        missing = sorted(set(self._where) - self._written)
        if missing:
            raise RuntimeError(f"planned tensors never written: {missing}")
        if len(self.files) > 1:
            total = sum(_nbytes(s, d) for _, _, s, d in self._where.values())
            index = {
                "metadata": {"total_size": total},
                "weight_map": {n: w[0].name for n, w in sorted(self._where.items())},
            }
            (self.dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    numel = 1
    for s in shape:
        numel *= s
    return numel * torch.empty((), dtype=dtype).element_size()
