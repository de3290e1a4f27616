"""Process groups: torchrun/srun, gloo/NCCL setup, Megatron model-parallel state and seeds.

The only module that initialises distributed state. A process reads torchrun's or srun's
environment (``srun python pretrain_motif.py`` forms one job of ``SLURM_NTASKS`` ranks); a plain
``python tool.py`` run becomes a one-process group, so every tool and test drives the same
Megatron-Core code paths as a launched job.
"""

from __future__ import annotations

import datetime
import os
import random
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from motif_megatron.compat import cpu
from motif_megatron.errors import UserError


@dataclass(frozen=True)
class ParallelConfig:
    """How the world is split: tensor, pipeline and (derived) data parallel sizes."""

    tp: int = 1
    pp: int = 1
    timeout_minutes: float = 10.0
    """How long a collective waits for the other ranks (``--distributed-timeout-minutes``)."""
    vpp: int = 1
    """Model chunks per pipeline rank (the interleaved schedule when above 1)."""

    def check(self, world_size: int) -> None:
        if self.tp < 1 or self.pp < 1:
            raise UserError(f"--tp {self.tp} and --pp {self.pp} must be positive")
        if world_size % (self.tp * self.pp):
            raise UserError(
                f"world size {world_size} is not divisible by tp*pp = {self.tp}*{self.pp}; "
                f"launch torchrun or srun with a multiple of {self.tp * self.pp} processes"
            )


@dataclass(frozen=True)
class Launch:
    """Where this process sits in its job: rank, world size, local rank and the rendezvous."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str


def _split_top(text: str) -> list[str]:
    """Split at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _expand(expression: str) -> list[str]:
    """One host expression (``rack[1-2]-n[01-04]``): the product of its bracket groups in
    order, each range keeping its zero padding."""
    match = re.search(r"\[([^\]]*)\]", expression)
    if match is None:
        return [expression]
    head, tail = expression[: match.start()], _expand(expression[match.end() :])
    names = []
    for item in match.group(1).split(","):
        low, _, high = item.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or int(high or low) < int(low):
            raise ValueError(item)
        for n in range(int(low), int(high or low) + 1):
            names += [f"{head}{n:0{len(low)}d}{rest}" for rest in tail]
    return names


def hostnames(nodelist: str) -> list[str]:
    """Every host of a Slurm hostlist, in Slurm's order (``scontrol show hostnames``):
    ``gpu[003-004,9],rack[1-2]-n[1-2]`` -> gpu003 gpu004 gpu9 rack1-n1 rack1-n2 rack2-n1
    rack2-n2 (each range keeps the width of its own first number)."""
    try:
        hosts = [h for part in _split_top(nodelist.strip()) if part for h in _expand(part)]
    except ValueError:
        hosts = []
    if not hosts or any(c in "".join(hosts) for c in "[],"):
        raise UserError(f"cannot read the Slurm host list {nodelist!r}")
    return hosts


def slurm_port(env: Mapping[str, str]) -> int:
    """The rendezvous port of one job step: 20000-39999 from the job and step ids, so two steps
    of a job (or two jobs on a node) do not meet on one port; no port is probed."""
    job, step = int(env.get("SLURM_JOB_ID", "0")), int(env.get("SLURM_STEP_ID", "0") or 0)
    return 20000 + (job * 97 + step) % 20000


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch described by torchrun's or srun's variables (None: a plain process).

    torchrun wins (``srun torchrun`` is one of the documented layouts); a process started by
    ``srun`` reads ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and meets its peers at
    ``MASTER_ADDR``/``MASTER_PORT`` if set, else at the step's first node on a port derived from
    the job and step ids (:func:`slurm_port`). A batch script's own shell (no
    ``SLURM_STEP_ID``) is a plain process."""
    if "RANK" in env and "WORLD_SIZE" in env:
        return Launch(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", "0")),
            env.get("MASTER_ADDR", "127.0.0.1"),
            int(env.get("MASTER_PORT", "29500")),
            "torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        # the step's own nodes: a step may run on part of the job's allocation
        nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "127.0.0.1")
        return Launch(
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_NTASKS", "1")),
            int(env.get("SLURM_LOCALID", "0")),
            env.get("MASTER_ADDR") or hostnames(nodes)[0],
            int(env.get("MASTER_PORT") or slurm_port(env)),
            "srun",
        )
    if int(env.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but neither torchrun's RANK nor srun's SLURM_PROCID "
            "is set; launch with torchrun or srun"
        )
    return None


def init_distributed(backend: str | None = None, timeout_minutes: float = 10.0) -> None:
    """Join the torchrun or srun group (or form a one-process group) on NCCL with CUDA, gloo
    without; the device is ``local_rank % device_count`` (a node may show each task one GPU)."""
    if dist.is_initialized():
        return
    launch = launch_from_env()
    if torch.cuda.is_available():
        torch.cuda.set_device((launch.local_rank if launch else 0) % torch.cuda.device_count())
    cpu.apply()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if launch is None or launch.world_size == 1:
        # one process needs no rendezvous: an in-process store, no socket and no port (a
        # `torchrun --nproc_per_node=1` worker would otherwise wait on torchrun's agent store)
        store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        return
    if launch.launcher == "torchrun":  # env://: the workers share torchrun's agent store
        dist.init_process_group(backend, timeout=timeout)
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
        rank=launch.rank,
        world_size=launch.world_size,
        timeout=timeout,
    )


def initialize(config: ParallelConfig, seed: int = 1234, backend: str | None = None) -> None:
    """Distributed + Megatron model-parallel groups + seeded RNGs, idempotent per config.

    ``backend="gloo"`` keeps a host-only job (conversion, growth) off the GPU of a GPU node."""
    from megatron.core import parallel_state, tensor_parallel

    init_distributed(backend, config.timeout_minutes)
    config.check(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        same = (
            parallel_state.get_tensor_model_parallel_world_size() == config.tp
            and parallel_state.get_pipeline_model_parallel_world_size() == config.pp
            and (parallel_state.get_virtual_pipeline_model_parallel_world_size() or 1) == config.vpp
        )
        if same:
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tp,
        pipeline_model_parallel_size=config.pp,
        virtual_pipeline_model_parallel_size=config.vpp if config.vpp > 1 else None,
        distributed_timeout_minutes=int(config.timeout_minutes),
    )
    set_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch; each pipeline stage gets its own stream like Megatron-LM."""
    from megatron.core import parallel_state

    seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def hosts() -> str:
    """Where the ranks run, for the log: ``4 ranks on 2 hosts (n1 x2, n2 x2)`` (a collective)."""
    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname())
    counts = {name: names.count(name) for name in dict.fromkeys(names)}
    listed = ", ".join(f"{name} x{n}" for name, n in counts.items())
    return f"{len(names)} ranks on {len(counts)} hosts ({listed})"


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def print_rank0(*args: object) -> None:
    if rank() == 0:
        print(*args, flush=True)
