"""Megatron-Core distributed checkpoints (``torch_dist``): layout on disk, save, load, stream.

A checkpoint root follows Megatron-LM: ``latest_checkpointed_iteration.txt`` names ``release`` or
an iteration, whose folder (``release/``, ``iter_0000100/``) is a ``dist_checkpointing`` directory.
Beside them live ``motif_model.json`` (the ``LlamaArgs``) and ``tokenizer/``. Saves go to a
temporary folder that is renamed into place before the tracker file is updated, so a crash during
a save leaves the previous checkpoint loadable.

Streaming: :func:`stream_save` writes a model whose parameters are placeholders (never touched,
so never resident) and asks a producer for each parameter's real value only when the writer
reaches it; :class:`CheckpointReader` reads one tensor, or one layer of a stacked tensor, at a
time. Both keep peak memory near the largest tensor, whatever the model size.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from motif_megatron.checkpoint import adapters
from motif_megatron.errors import UserError
from motif_megatron.model import masked
from motif_megatron.model.builder import BuildOptions, build_model
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.model.lora import local_shard

TRACKER_FILE = "latest_checkpointed_iteration.txt"
RELEASE = "release"
SAVE_DELAY_ENV = "MOTIF_TEST_SAVE_DELAY"
"""Seconds a written save waits before it is published: a test hook that makes a signal during
a save easy to aim at."""


def iteration_dir(root: str | Path, iteration: int | None) -> Path:
    """``root/release`` for converted checkpoints, ``root/iter_0000042`` for training saves."""
    return Path(root) / (RELEASE if iteration is None else f"iter_{iteration:07d}")


def read_tracker(root: str | Path) -> str | None:
    """What a root's tracker file names (``release`` or an iteration); None without one."""
    tracker = Path(root) / TRACKER_FILE
    return tracker.read_text().strip() if tracker.is_file() else None


def resolve(load: str | Path) -> Path:
    """The ``dist_checkpointing`` folder for ``load`` (a root with a tracker, or the folder itself)."""
    path = Path(load)
    if (path / "metadata.json").is_file():
        return path
    value = read_tracker(path)
    if value is None:
        raise UserError(f"{path} is not a checkpoint: no {TRACKER_FILE} or metadata.json")
    ckpt = iteration_dir(path, None if value == RELEASE else int(value))
    if not (ckpt / "metadata.json").is_file():
        raise UserError(
            f"{path / TRACKER_FILE} points to {ckpt.name}, which is missing or incomplete"
        )
    return ckpt


def check_complete(load: str | Path, allow_partial: bool = False) -> None:
    """Refuse a training checkpoint saved before its run's ``--train-iters`` (a run cut by its
    time limit: schedule, MSG ramp and data unfinished) unless ``allow_partial``; converted,
    grown and complete checkpoints pass."""
    loop = _loop_state(load)
    done, total = loop.get("iteration"), loop.get("train_iters")
    if total is not None and done < total and not allow_partial:
        raise UserError(
            f"{load} is iteration {done} of a run with --train-iters {total}, stopped before its "
            "end: resume that run to finish it, or pass --allow-partial to use it as it is"
        )


def stop_reason(load: str | Path) -> str | None:
    """Why the run that saved ``load`` stopped before its ``--train-iters`` when this is the save
    that stop made (``received SIGUSR1`` ...); None for any other checkpoint (complete,
    converted, grown, or a periodic save of a run that went on and failed later)."""
    return _loop_state(load).get("stopped")


def _loop_state(load: str | Path) -> dict:
    """A checkpoint's training loop state; empty for converted and grown checkpoints."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(resolve(load))).get("loop") or {}


def root_of(load: str | Path) -> Path:
    """The checkpoint root (where ``motif_model.json`` lives) for a root or an iteration folder."""
    path = Path(load)
    return (
        path
        if (path / TRACKER_FILE).is_file() or not (path / "metadata.json").is_file()
        else path.parent
    )


def _publish(tmp: Path, final: Path, root: Path, tracker_value: str) -> None:
    """Rank 0 moves a finished save into place, then points the tracker at it (both atomic)."""
    if dist.get_rank() == 0:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        tracker_tmp = root / (TRACKER_FILE + ".tmp")
        tracker_tmp.write_text(tracker_value + "\n")
        os.replace(tracker_tmp, root / TRACKER_FILE)
    dist.barrier()


def _tmp_dir(final: Path) -> Path:
    tmp = final.with_name(final.name + ".tmp")
    if dist.get_rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    return tmp


def save(
    sharded_state_dict: dict,
    root: str | Path,
    iteration: int | None = None,
    parallel_group=None,
    asynchronous: bool = False,
    published: Callable[[], None] | None = None,
):
    """Save a sharded state dict (model, optimizer, ...) atomically under ``root``, then call
    ``published``.

    ``parallel_group`` (the data-parallel group): Megatron-LM's fully parallel save, each
    replicated tensor written by one rank of the group, spread over all of them.
    ``asynchronous``: return Megatron-Core's ``AsyncRequest`` whose forked writers run while
    training goes on; publishing (``metadata.json``, rename, tracker, ``published``) is its
    last finalize step, so the folder appears only once every rank has written.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelSaveStrategyWrapper,
    )

    final = iteration_dir(root, iteration)
    tmp = _tmp_dir(final)
    strategy = get_default_save_sharded_strategy()
    if parallel_group is not None and dist.get_world_size(parallel_group) > 1:
        strategy = FullyParallelSaveStrategyWrapper(strategy, parallel_group)

    def publish() -> None:
        time.sleep(float(os.environ.get(SAVE_DELAY_ENV, "0")))
        _publish(tmp, final, Path(root), RELEASE if iteration is None else str(iteration))
        if published is not None:
            published()

    request = dist_checkpointing.save(
        sharded_state_dict, str(tmp), strategy, async_sharded_save=asynchronous
    )
    if not asynchronous:
        publish()
        return final
    request.add_finalize_fn(publish)
    return request


def checkpoint_keys(ckpt_dir: str | Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(ckpt_dir)).read_metadata().state_dict_metadata)


def load_model(model, load: str | Path, strict: bool = True) -> Path:
    """Load model weights from a checkpoint saved at any TP/PP into this (sharded) model, or
    into all of its chunks at once (the interleaved schedule's: one read covers the stacked
    layers of every chunk)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from motif_megatron.model.schedule import as_chunks

    ckpt = resolve(load)
    chunks = as_chunks(model)
    # TE modules keep fp8 metadata in ``_extra_state``; a checkpoint from the local spec has none.
    stored = checkpoint_keys(ckpt)
    sharded = [
        {
            k: v
            for k, v in chunk.sharded_state_dict().items()
            if not (
                isinstance(v, ShardedObject)
                and k.endswith("_extra_state")
                and not any(s.startswith(v.key) for s in stored)
            )
        }
        for chunk in chunks
    ]
    state = dist_checkpointing.load({str(i): sd for i, sd in enumerate(sharded)}, str(ckpt))
    for i, chunk in enumerate(chunks):
        weights = {k: v for k, v in state[str(i)].items() if k in sharded[i]}
        chunk.load_state_dict(weights, strict=strict and len(weights) == len(chunk.state_dict()))
        if any(k.endswith(".lora_a") for k in stored):  # a LoRA checkpoint: the adapted weights
            adapters.fold(chunk, CheckpointReader(ckpt, merge_adapters=False))
    return ckpt


class _LazySavePlanner:
    """Mixin for Megatron's save planner: resolve each placeholder view through a producer."""

    def __init__(
        self,
        produce: Callable[[str], torch.Tensor],
        params: dict[str, torch.Tensor],
        *args,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._produce = produce
        self._owner = {p.untyped_storage().data_ptr(): (name, p) for name, p in params.items()}
        self._cached: tuple[str, torch.Tensor] | None = None
        self._fixed: set[int] = set()  # buffers (e.g. MSG mask values) are saved as they are

    def fix(self, buffers: list[torch.Tensor]) -> None:
        self._fixed = {b.untyped_storage().data_ptr() for b in buffers}

    def resolve_data(self, write_item):
        placeholder = super().resolve_data(write_item)
        if not isinstance(placeholder, torch.Tensor):
            return placeholder  # serialised ShardedObject bytes
        if placeholder.untyped_storage().data_ptr() in self._fixed:
            return placeholder
        name, param = self._owner[placeholder.untyped_storage().data_ptr()]
        if self._cached is None or self._cached[0] != name:
            self._cached = None  # release the previous tensor before producing the next
            value = self._produce(name)
            if value.shape != param.shape or value.dtype != param.dtype:
                raise ValueError(
                    f"{name}: expected {tuple(param.shape)} {param.dtype}, "
                    f"produced {tuple(value.shape)} {value.dtype}"
                )
            self._cached = (name, value.contiguous())
        value = self._cached[1]
        return value.as_strided(
            placeholder.shape,
            placeholder.stride(),
            placeholder.storage_offset() - param.storage_offset(),
        )


def stream_save(
    model: torch.nn.Module, produce: Callable[[str], torch.Tensor], root: str | Path
) -> Path:
    """Save ``model`` as a ``release`` checkpoint, asking ``produce(param_name)`` for each value.

    ``model``'s own parameters are placeholders that are never read (build it with
    ``perform_initialization=False``: ``torch.empty`` pages are never touched). The writer saves
    one file per tensor chunk so nothing is retained after it is written.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import (
        MCoreSavePlanner,
        TorchDistSaveShardedStrategy,
        _replace_state_dict_keys_with_sharded_keys,
        mcore_to_pyt_state_dict,
    )
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save

    params = dict(model.named_parameters())

    class Planner(_LazySavePlanner, MCoreSavePlanner):
        pass

    class StreamingStrategy(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir):
            sharded_state_dict, _, _ = _replace_state_dict_keys_with_sharded_keys(
                sharded_state_dict, True
            )
            writer = FileSystemWriter(
                str(checkpoint_dir), single_file_per_rank=False, thread_count=1
            )
            planner = Planner(
                produce, params, dedup_replicated_tensors=False, flatten_state_dict=False
            )
            planner.fix([b for _, b in model.named_buffers()])
            dcp_save(
                mcore_to_pyt_state_dict(sharded_state_dict, False),
                storage_writer=writer,
                planner=planner,
            )

    final = iteration_dir(root, None)
    tmp = _tmp_dir(final)
    dist_checkpointing.save(
        model.sharded_state_dict(), str(tmp), sharded_strategy=StreamingStrategy("torch_dist", 1)
    )
    _publish(tmp, final, Path(root), RELEASE)
    return final


class _SlicePlanner:
    """Load planner that reads one chunk (offsets + the target's shape) of a stored tensor."""

    def __init__(self, offsets: tuple[int, ...]) -> None:
        from torch.distributed.checkpoint import DefaultLoadPlanner

        class Planner(DefaultLoadPlanner):
            def create_local_plan(inner):
                from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
                from torch.distributed.checkpoint.planner import LoadPlan
                from torch.distributed.checkpoint.planner_helpers import (
                    create_read_items_for_chunk_list,
                )

                ((fqn, tensor),) = inner.state_dict.items()
                chunk = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=tensor.shape)
                stored = inner.metadata.state_dict_metadata[fqn]
                return LoadPlan(create_read_items_for_chunk_list(fqn, stored, [chunk]))

            def lookup_tensor(inner, index):
                return inner.state_dict[index.fqn]

        self.planner = Planner()


class CheckpointReader:
    """Read single tensors (or single layers of stacked tensors) from a ``torch_dist`` checkpoint.

    Only the stored chunks that overlap the request are read, so a layer slice of a stacked
    tensor costs one layer of memory. A chunk stored alone in its file (as :func:`stream_save`
    and Megatron's per-rank writer with one item per file produce) is memory-mapped and copied
    once into the result; other layouts go through ``torch.distributed.checkpoint``, which
    holds the serialised bytes, a loaded copy and the result at once.

    A LoRA checkpoint's adapted weights read merged (base + scale B A, see
    :mod:`~motif_megatron.checkpoint.adapters`) unless ``merge_adapters`` is False.
    """

    def __init__(self, load: str | Path, merge_adapters: bool = True) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        self.dir = resolve(load)
        self.merge_adapters = merge_adapters
        metadata = FileSystemReader(str(self.dir)).read_metadata()
        tensors = {k: m for k, m in metadata.state_dict_metadata.items() if hasattr(m, "size")}
        self.shapes = {k: tuple(m.size) for k, m in tensors.items()}
        self.dtypes = {k: m.properties.dtype for k, m in tensors.items()}
        self._files: dict[str, list[tuple[tuple[int, ...], Path]] | None] = {}
        for index, info in metadata.storage_data.items():
            if index.fqn not in tensors:
                continue
            path = self.dir / info.relative_path
            chunks = self._files.setdefault(index.fqn, [])
            alone = (
                chunks is not None
                and info.offset == 0
                and not info.transform_descriptors
                and path.stat().st_size == info.length
            )
            self._files[index.fqn] = [*chunks, (tuple(index.offset), path)] if alone else None

    def get(
        self, key: str, layer: int | None = None, rows: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """The whole tensor ``key``, its slice ``[layer]`` along the stacked layer axis, or its
        rows ``[start:stop]`` (a block of an embedding, read without the rest)."""
        if key not in self.shapes:
            raise UserError(f"tensor {key!r} missing from checkpoint {self.dir}")
        shape = self.shapes[key]
        if not shape:  # a scalar (an MSG mask value)
            target = torch.empty((), dtype=self.dtypes[key])
            self._read_dcp(key, target, ())
            return target
        start, stop = (
            rows if rows is not None else (layer, layer + 1) if layer is not None else (0, shape[0])
        )
        target = torch.empty((stop - start, *shape[1:]), dtype=self.dtypes[key])
        offsets = (start,) + (0,) * (len(shape) - 1)
        if self._files.get(key):
            for chunk_offsets, path in self._files[key]:
                _copy_stored_chunk(path, chunk_offsets, target, offsets)
        else:
            self._read_dcp(key, target, offsets)
        target = target[0] if layer is not None else target
        base = key.removesuffix("weight")
        if self.merge_adapters and rows is None and base + "lora_a" in self.shapes:
            target = adapters.merge(
                target,
                self.get(base + "lora_a", layer),
                self.get(base + "lora_b", layer),
                self.get(base + "lora_scale", layer),
            )
        return target

    def _read_dcp(self, key: str, target: torch.Tensor, offsets: tuple[int, ...]) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load

        dcp_load(
            {key: target},
            storage_reader=FileSystemReader(str(self.dir)),
            planner=_SlicePlanner(offsets).planner,
            no_dist=True,
        )


def _stored_bytes(path: Path) -> int | None:
    """File offset of the single storage inside a ``torch.save`` zip, or None if there are more."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        members = [i for i in archive.infolist() if "/data/" in i.filename]
        if len(members) != 1 or members[0].compress_type != zipfile.ZIP_STORED:
            return None
        header_offset = members[0].header_offset
    with open(path, "rb") as f:
        f.seek(header_offset)
        name_len, extra_len = struct.unpack("<HH", f.read(30)[26:30])
    return header_offset + 30 + name_len + extra_len


def _copy_stored_chunk(
    path: Path, chunk_offsets: tuple[int, ...], target: torch.Tensor, offsets: tuple[int, ...]
) -> None:
    """Copy the overlap of a stored chunk (alone in ``path``) into ``target``.

    Whole rows are read from the file straight into ``target``'s memory, a block at a time, so
    nothing but ``target`` becomes resident; partial rows (a TP-sharded column block) are copied
    through a memory map.
    """
    chunk = torch.load(path, mmap=True, weights_only=True)  # metadata only until touched
    src, dst = [], []
    for lo, size, c_lo, c_size in zip(
        offsets, target.shape, chunk_offsets, chunk.shape, strict=True
    ):
        begin, end = max(lo, c_lo), min(lo + size, c_lo + c_size)
        if begin >= end:
            return
        src.append(slice(begin - c_lo, end - c_lo))
        dst.append(slice(begin - lo, end - lo))
    full_rows = (
        tuple(chunk.shape[1:])
        == tuple(target.shape[1:])
        == tuple(s.stop - s.start for s in src[1:])
    )
    base = _stored_bytes(path) if full_rows and chunk.is_contiguous() else None
    if base is None:
        target[tuple(dst)].copy_(chunk[tuple(src)])
        return
    row_bytes = chunk[0].numel() * chunk.element_size()
    first = base + chunk.storage_offset() * chunk.element_size() + src[0].start * row_bytes
    out = target[dst[0]].view(-1).view(torch.uint8).numpy()
    del chunk
    block = 16 << 20
    with open(path, "rb", buffering=0) as f:
        f.seek(first)
        for i in range(0, len(out), block):
            view = memoryview(out[i : i + block])
            while len(view):
                read = f.readinto(view)
                if not read:
                    raise UserError(f"{path} is truncated")
                view = view[read:]


def build_from_checkpoint(load: str, options: BuildOptions):
    """Build this rank's model chunk from ``load``'s ``motif_model.json`` and load its weights.

    Returns ``(model, args)``. Weights load at any TP/PP, in ``options.params_dtype`` if given.
    """
    args = LlamaArgs.load(root_of(load))
    model = build_model(args, options)
    load_model(model, load)
    if args.growth.get("msg"):  # the checkpoint's mask value wins (the trainer ramps it)
        masked.set_mask(model, masked.mask_value(model))
    return model, args


def base_from_checkpoint(
    model: torch.nn.Module, load, merge_adapters: bool
) -> Callable[[str, torch.nn.Module], torch.Tensor]:
    """:func:`~motif_megatron.model.lora.quantize_base`'s source reading one layer of a checkpoint at a time: merged with
    its adapters when it is a LoRA checkpoint used as a base, the stored base on a resume."""

    @functools.cache
    def index() -> tuple[CheckpointReader, dict]:  # on first use: not for a model without QLoRA
        where = {
            id(m): (key, layer, row, gated) for m, key, layer, row, gated in adapters.linears(model)
        }
        return CheckpointReader(load, merge_adapters=merge_adapters), where

    def read(name: str, module: torch.nn.Module) -> torch.Tensor:
        reader, where = index()
        key, layer, row, gated = where[id(module)]
        return local_shard(reader.get(key + "weight", layer), module.lora_shape, row, gated)

    return read
