"""The one device helper: where this process's model, microbatches and collective tensors live.

Written the Megatron-LM way: the model moves once to ``torch.cuda.current_device()`` and every
microbatch and every tensor this project hands to a collective goes through :func:`to_device`
(``.cuda(non_blocking=True)`` on a GPU). On a CUDA-less machine ``compat.cpu`` names the CPU as
the device, so CPU tests run these same lines; and because every path goes through this one
function, a test can check that none bypasses it.
"""

from __future__ import annotations

import torch

from motif_megatron.compat import cpu


def current() -> torch.device:
    """This rank's accelerator (``torch.cuda.current_device()``, set from the local rank)."""
    return cpu.device() if cpu.needed() else torch.device("cuda", torch.cuda.current_device())


def to_device(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on this rank's device (asynchronous from pinned host memory, as Megatron-LM)."""
    return tensor.to(current(), non_blocking=True)


def module_to_device(module: torch.nn.Module) -> torch.nn.Module:
    """Parameters and buffers on this rank's device (``model.cuda(current_device())``)."""
    return module.to(current())
