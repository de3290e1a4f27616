"""Process groups: torchrun/gloo/NCCL setup, Megatron model-parallel state and seeds.

The only module that initialises distributed state. A plain ``python tool.py`` run becomes a
one-process group, so every tool and test drives the same Megatron-Core code paths as torchrun.
"""

from __future__ import annotations

import os
import random
import socket
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
                f"launch torchrun with a multiple of {self.tp * self.pp} processes"
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(backend: str | None = None) -> None:
    """Join the torchrun group (or form a one-process group) on NCCL with CUDA, gloo without."""
    if dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    cpu.apply()
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if "RANK" in os.environ:  # launched by torchrun
        dist.init_process_group(backend)
    else:  # a plain process: a private one-process group, leaving the environment untouched
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1
        )


def initialize(config: ParallelConfig, seed: int = 1234) -> None:
    """Distributed + Megatron model-parallel groups + seeded RNGs, idempotent per config."""
    from megatron.core import parallel_state, tensor_parallel

    init_distributed()
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
