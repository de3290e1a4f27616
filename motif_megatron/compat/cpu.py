"""Let megatron-core 0.16 run on a CPU-only torch with gloo.

This is the only module in the project that knows megatron-core can run without CUDA. Megatron-Core
asks for ``torch.cuda.current_device()`` and literal ``device="cuda"`` tensors in rotary embeddings,
tensor-parallel layers, DDP buffers, p2p, schedules and the optimizer, and keeps its model-parallel
RNG streams in CUDA generators. Rather than forking those modules, :func:`apply` swaps the ``torch``
global of every loaded ``megatron.core`` module for a thin proxy whose tensor factories and
``torch.cuda`` namespace map CUDA onto the CPU, points the RNG tracker at the CPU generator, and
replaces the one helper that asserts CUDA tensor types. Nothing outside megatron.core is touched
except ``Tensor.cuda`` (an identity here, since there is no other device to move to). The patches
are applied once, and only when CUDA is unavailable; GPU runs never import this code path.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import pkgutil
import sys
import types
from typing import Any

import torch

_APPLIED = False

# Modules whose import pulls in everything a GPT model, its DDP/optimizer, the pipeline schedules and
# dist_checkpointing need. They are imported before patching so that their ``torch`` global exists.
_MEGATRON_MODULES = (
    "megatron.core.parallel_state",
    "megatron.core.tensor_parallel",
    "megatron.core.models.gpt.gpt_model",
    "megatron.core.models.gpt.gpt_layer_specs",
    "megatron.core.transformer.transformer_block",
    "megatron.core.transformer.utils",
    "megatron.core.distributed",
    "megatron.core.optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer_param_scheduler",
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.pipeline_parallel.p2p_communication",
    "megatron.core.dist_checkpointing",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.torch",
    "megatron.core.dist_checkpointing.strategies.fully_parallel",
    "megatron.core.dist_checkpointing.strategies.async_utils",
    "megatron.core.timers",
    "megatron.core.utils",
)

# Megatron-Core fusions that need CUDA kernels (or apex/TE) and have exact unfused equivalents.
CPU_CONFIG_OVERRIDES: dict[str, Any] = {
    "bias_activation_fusion": False,
    "bias_dropout_fusion": False,
    "masked_softmax_fusion": False,
    "apply_rope_fusion": False,
    "gradient_accumulation_fusion": False,
    "persist_layer_norm": False,
    "cross_entropy_loss_fusion": False,
    "use_cpu_initialization": True,
}


def needed() -> bool:
    """True when this process must run Megatron-Core without CUDA."""
    return not torch.cuda.is_available()


def device() -> torch.device:
    """The device a CUDA-less process computes on (``motif_megatron.device`` asks here)."""
    return torch.device("cpu")


def _cpu(device: Any) -> Any:
    if device is None:
        return None
    if isinstance(device, torch.device):
        return torch.device("cpu") if device.type == "cuda" else device
    if isinstance(device, int):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    return device


def _on_cpu(factory):
    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    return wrapper


def _device(kind: Any = "cpu", index: int | None = None) -> torch.device:
    if isinstance(kind, str) and kind.startswith("cuda"):
        return torch.device("cpu")
    return torch.device(kind) if index is None else torch.device(kind, index)


class _Stream:
    """Stands in for ``torch.cuda.Stream``: CPU work is already ordered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, other: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def record_event(self, event: Any = None) -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _CudaOnCpu(types.ModuleType):
    """``torch.cuda`` as Megatron-Core sees it on a CPU: one device, the CPU generator, no-op syncs."""

    def __init__(self) -> None:
        super().__init__("torch.cuda")
        self.current_device = lambda: torch.device("cpu")
        self.device_count = lambda: 1
        self.synchronize = lambda *a, **k: None
        self.empty_cache = lambda: None
        self.manual_seed = torch.manual_seed
        self.manual_seed_all = torch.manual_seed
        self.get_rng_state = lambda *a, **k: torch.get_rng_state()
        self.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
        self.current_stream = lambda *a, **k: _Stream()
        self.default_stream = lambda *a, **k: _Stream()
        self.Stream = _Stream
        self.stream = lambda s=None: _Stream()
        self.nvtx = types.SimpleNamespace(range_push=lambda *a: None, range_pop=lambda: None)
        self.memory_allocated = lambda *a, **k: 0
        self.max_memory_allocated = lambda *a, **k: 0

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cuda, name)


class _TorchOnCpu(types.ModuleType):
    """``torch`` as Megatron-Core sees it on a CPU: tensor factories map ``device="cuda"`` to CPU."""

    _FACTORIES = (
        "zeros",
        "ones",
        "empty",
        "full",
        "tensor",
        "arange",
        "rand",
        "randn",
        "randint",
        "zeros_like",
        "ones_like",
        "empty_like",
        "full_like",
        "as_tensor",
    )

    def __init__(self) -> None:
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))
        self.cuda = _CudaOnCpu()
        self.device = _device

    def __getattr__(self, name: str) -> Any:
        value = getattr(torch, name)
        setattr(self, name, value)  # cache: later look-ups are plain attribute hits
        return value


def _rng_state(*args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.get_rng_state()


def _set_rng_state(new_state: torch.Tensor, *args: Any, **kwargs: Any) -> None:
    torch.set_rng_state(new_state)


def _clip_grad_by_total_norm_fp32(
    parameters, max_norm: float, total_norm: float, use_decoupled_grad: bool = False
) -> None:
    """Megatron's version asserts ``torch.cuda.FloatTensor``; same scaling, any device."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr).detach() for p in parameters if getattr(p, attr, None) is not None]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def _import_megatron() -> None:
    for name in _MEGATRON_MODULES:
        importlib.import_module(name)
    # every submodule of the packages we drive, so that lazily imported helpers are patched too
    pkgs = ("megatron.core.transformer", "megatron.core.models.common")
    for pkg_name in (*pkgs, "megatron.core.dist_checkpointing"):
        pkg = importlib.import_module(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if any(part in info.name for part in (".moe", "experimental", "cuda_graphs", "fsdp")):
                continue
            with contextlib.suppress(ImportError):  # GPU-only extras (TE, apex, flash-attn)
                importlib.import_module(info.name)


def apply() -> None:
    """Patch megatron.core for a CUDA-less process. Idempotent; a no-op when CUDA is available."""
    global _APPLIED
    if _APPLIED or not needed():
        return
    _import_megatron()
    proxy = _TorchOnCpu()
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and getattr(module, "torch", None) is torch:
            module.torch = proxy

    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.tensor_parallel import random

    random._get_cuda_rng_state = _rng_state
    random._set_cuda_rng_state = _set_rng_state
    clip_grads.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    _APPLIED = True
