"""Process groups: torchrun/srun, gloo/NCCL setup, Megatron model-parallel state and seeds.

The only module that initialises distributed state. A process reads torchrun's or srun's
environment (``srun python pretrain_motif.py`` forms one job of ``SLURM_NTASKS`` ranks); a plain
``python tool.py`` run becomes a one-process group, so every tool and test drives the same
Megatron-Core code paths as a launched job.
"""

from __future__ import annotations

import os
import random
import re
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


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist (``gpu[003-006,9],login1`` -> ``gpu003``)."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise UserError(f"cannot read SLURM_JOB_NODELIST={nodelist!r}")
    prefix, ranges = head.groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")


def launch_from_env(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The launch described by torchrun's or srun's variables (None: a plain process).

    torchrun wins (``srun torchrun`` is one of the documented layouts); a process started by
    ``srun`` reads ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` and meets its peers at
    ``MASTER_ADDR``/``MASTER_PORT`` if set, else at the job's first node on a port derived from
    the job id. A batch script's own shell (no ``SLURM_STEP_ID``) is a plain process."""
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
        job = int(env.get("SLURM_JOB_ID", "0"))
        return Launch(
            int(env["SLURM_PROCID"]),
            int(env.get("SLURM_NTASKS", "1")),
            int(env.get("SLURM_LOCALID", "0")),
            env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            int(env.get("MASTER_PORT") or 20000 + job % 20000),
            "srun",
        )
    if int(env.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            f"WORLD_SIZE={env['WORLD_SIZE']} but neither torchrun's RANK nor srun's SLURM_PROCID "
            "is set; launch with torchrun or srun"
        )
    return None


def init_distributed(backend: str | None = None) -> None:
    """Join the torchrun or srun group (or form a one-process group) on NCCL with CUDA, gloo
    without."""
    if dist.is_initialized():
        return
    launch = launch_from_env()
    if torch.cuda.is_available():
        torch.cuda.set_device(launch.local_rank if launch else 0)
    cpu.apply()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if launch is None or launch.world_size == 1:
        # one process needs no rendezvous: an in-process store, no socket and no port (a
        # `torchrun --nproc_per_node=1` worker would otherwise wait on torchrun's agent store)
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return
    if launch.launcher == "torchrun":  # env://: the workers share torchrun's agent store
        dist.init_process_group(backend)
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{launch.master_addr}:{launch.master_port}",
        rank=launch.rank,
        world_size=launch.world_size,
    )


def initialize(config: ParallelConfig, seed: int = 1234, backend: str | None = None) -> None:
    """Distributed + Megatron model-parallel groups + seeded RNGs, idempotent per config.

    ``backend="gloo"`` keeps a host-only job (conversion, growth) off the GPU of a GPU node."""
    from megatron.core import parallel_state, tensor_parallel

    init_distributed(backend)
    config.check(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        same = (
            parallel_state.get_tensor_model_parallel_world_size() == config.tp
            and parallel_state.get_pipeline_model_parallel_world_size() == config.pp
        )
        if same:
            return
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tp, pipeline_model_parallel_size=config.pp
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


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def print_rank0(*args: object) -> None:
    if rank() == 0:
        print(*args, flush=True)
