"""Training checkpoints: model, optimizer, LR scheduler, RNG and loop state in one atomic save.

The layout is Megatron-LM's (``iter_0000042/`` under the ``--save`` root, ``latest_checkpointed_
iteration.txt``); model tensors keep the keys of converted checkpoints, so every tool loads a
training checkpoint's weights at any TP/PP. Optimizer and RNG state are saved per model-parallel
rank (data-parallel replicas share them; the distributed optimizer in Megatron's DP-reshardable
format), so they restore at any data-parallel size but only at the TP/PP they were saved with
(``--no-load-optim`` resumes weights only).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import shutil
from multiprocessing.managers import SyncManager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from motif_megatron.checkpoint import dist as ckpt
from motif_megatron.training import preemption


def latest_iteration(root: str | Path | None) -> int | None:
    """The iteration a training root's tracker points to (None: no training checkpoint)."""
    value = None if root is None else ckpt.read_tracker(root)
    return int(value) if value and value.isdigit() else None


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        # the default CUDA generator (NEFTune's noise, dropout outside the tracker's regions)
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _per_model_rank(key: str, value) -> object:
    """An object saved once per tensor/pipeline rank (data-parallel replicas hold the same one),
    so a save loads at any data-parallel size: Megatron-LM's layout for its RNG state."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(
        key,
        value,
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(),
    )


def _model_keys(count: int) -> list[str]:
    """Megatron-LM's keys: ``model``, or ``model0``, ``model1``, ... for the chunks of the
    interleaved schedule; the tensors inside carry global layer numbers, so every layout
    reads them."""
    return ["model"] if count == 1 else [f"model{i}" for i in range(count)]


def init_optimizer_state(optimizer) -> None:
    """The optimizer state a load reads into, made before it, as Megatron-LM has it made
    (``init_state_fn``): without TE or apex megatron-core falls back to torch's AdamW, whose
    state also holds a ``step`` that the distributed optimizer's ``state_dict()`` requires of
    every parameter (megatron-core 0.16.1 asserts it, so a fresh one could not be loaded into).
    The values are a fresh AdamW's: the first update is unchanged."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if getattr(opt, "init_state_fn", None) is not None:
            opt.init_state_fn(opt.optimizer, opt.config)
        if isinstance(opt.optimizer, torch.optim.Adam | torch.optim.AdamW):
            for group in opt.optimizer.param_groups:
                for param in group["params"]:
                    opt.optimizer.state[param].setdefault("step", torch.tensor(0.0))


def _sharded(chunks: list, optimizer, loop_state: dict | None, is_loading: bool) -> dict:
    if is_loading and optimizer is not None:
        init_optimizer_state(optimizer)
    state = {
        k: c.sharded_state_dict() for k, c in zip(_model_keys(len(chunks)), chunks, strict=True)
    }
    frozen = any(not p.requires_grad for chunk in chunks for p in chunk.parameters())
    if optimizer is not None and frozen and not optimizer.config.use_distributed_optimizer:
        # a partial stage has moments for some layers of a stacked tensor only, which the
        # torch_dist format cannot describe: keep the (data-parallel replicated) state as one
        # object per model-parallel rank
        state["optimizer"] = _per_model_rank(
            "optimizer_state", None if is_loading else optimizer.state_dict()
        )
    elif optimizer is not None:
        # the distributed optimizer saves its flat buffers (trainable parameters only) in a
        # format that reshards over data parallel
        metadata = {"distrib_optim_sharding_type": "dp_reshardable"} if frozen else None
        state["optimizer"] = optimizer.sharded_state_dict(
            dict(state), is_loading=is_loading, metadata=metadata
        )
    state["rng_state"] = _per_model_rank("rng_state", None if is_loading else _rng_state())
    if loop_state is not None:
        state["loop"] = loop_state
    return state


def _start_results_queue() -> None:
    """Megatron's torch_dist writer returns its write results through a Manager process that it
    spawns at the first save and keeps. Slurm signals every process of a step (SIGUSR1 before
    the time limit, SIGTERM on preemption), which would end that helper and fail the save in
    progress or the next one: start it now, ignoring those signals. A signal that ends it before
    it ignores them (its first fraction of a second) only costs a retry."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    for _ in range(3):
        if filesystem_async._results_queue is not None:
            return
        manager = SyncManager(ctx=mp.get_context("spawn"))
        try:
            manager.start(preemption.ignore)
        except EOFError:
            continue
        filesystem_async._results_queue = manager.Queue()


class Saver:
    """How a run saves: spread over the data-parallel ranks (Megatron-LM's fully parallel save,
    ``--ckpt-fully-parallel-save``) and, with ``--async-save``, written by forked processes
    while training goes on. A save is published only when every rank has written it; the next
    save, a NaN stop and the end of training wait for the one in flight."""

    def __init__(self, root: str | Path | None, fully_parallel: bool, asynchronous: bool) -> None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        self.root, self.fully_parallel = root, fully_parallel
        self.queue = AsyncCallsQueue() if asynchronous else None
        if root:
            _start_results_queue()

    def save(self, iteration: int, chunks: list, optimizer, loop_state: dict, published) -> None:
        """Everything a bitwise resume needs as ``iter_{iteration}``; ``published()`` runs on
        every rank once it is in place."""
        from megatron.core import parallel_state as ps

        self.wait()
        group = ps.get_data_parallel_group(with_context_parallel=True)
        with preemption.held():
            request = ckpt.save(
                _sharded(chunks, optimizer, loop_state, False),
                self.root,
                iteration,
                group if self.fully_parallel else None,
                self.queue is not None,
                published,
            )
        if self.queue is not None:
            self.queue.schedule_async_request(request)

    def poll(self) -> None:
        """Publish the async saves that every rank has finished (one all-reduce)."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=False)

    def wait(self) -> None:
        """Block until the save in flight is published."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)


def remove_unfinished(root: str | Path) -> list[Path]:
    """Delete the ``iter_*.tmp`` folders of saves that were killed before publishing (rank 0
    deletes, every rank returns them); call it when no save is in flight."""
    unfinished = sorted(p for p in Path(root).glob("iter_*.tmp") if p.is_dir())
    if dist.get_rank() == 0:
        for folder in unfinished:
            shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()
    return unfinished


def retain(root: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` iteration folders under ``root`` (never the one the
    tracker names) and any unfinished save; rank 0 deletes, every rank returns the deleted
    folders."""
    latest = latest_iteration(root)
    folders = sorted(
        (p for p in Path(root).glob("iter_*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    old = [p for p in folders[: max(len(folders) - keep, 0)] if int(p.name[5:]) != latest]
    if dist.get_rank() == 0:
        for folder in old:
            shutil.rmtree(folder, ignore_errors=True)
    return old + remove_unfinished(root)


def load_loop_state(root: str | Path, iteration: int) -> dict:
    """The loop state (iteration, stage, scheduler, plateau, saved world) of a training save."""
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load_common_state_dict(str(ckpt.iteration_dir(root, iteration)))[
        "loop"
    ]


def load(
    root: str | Path, iteration: int, chunks: list, optimizer, with_rng: bool, fully_parallel: bool
) -> None:
    """Restore the model chunks (and optimizer and RNG, when given) from a training save, in place;
    ``fully_parallel``: each data-parallel rank reads a part and they exchange the rest
    (Megatron-LM's ``--ckpt-fully-parallel-load``)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
    )

    folder = ckpt.iteration_dir(root, iteration)
    if optimizer is None and not with_rng:
        ckpt.load_model(chunks, folder)
        return
    state = _sharded(chunks, optimizer, None, True)
    if not with_rng:
        state.pop("rng_state")
    strategy = None
    if fully_parallel:
        strategy = FullyParallelLoadStrategyWrapper(
            get_default_load_sharded_strategy(str(folder)),
            ps.get_data_parallel_group(with_context_parallel=True),
        )
    loaded = dist_checkpointing.load(state, str(folder), strategy)
    for chunk, key in zip(chunks, _model_keys(len(chunks)), strict=True):
        chunk.load_state_dict(loaded[key])
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if with_rng:
        _set_rng_state(loaded["rng_state"])
