"""LoRA on Megatron's tensor-parallel linear layers (RedWhale's last stage).

An adapted layer computes ``W x + (alpha / r) B A x`` with the base ``W`` frozen. The adapted
layers are modules of the spec (:func:`lora_spec` rewrites the TE or local layer spec's target
slots into LoRA subclasses of their classes), built with the model. Under tensor
parallelism the adapter follows its layer: on a column-parallel layer (``linear_qkv``,
``linear_fc1``) ``A`` is replicated and ``B`` split by output rows, with the ``A x`` activations
entering the TP region like the layer's input (all-reduced gradient); on a row-parallel layer
(``linear_proj``, ``linear_fc2``) ``A`` is split by input columns and its partial products are
all-reduced before the replicated ``B``. ``A`` is drawn for the full matrix from a seed and the
layer name, then sliced, so TP=1 and TP=2 runs start from the same adapters.

A checkpoint holds each adapted layer's base once, under its usual ``weight`` key, with
``lora_a``, ``lora_b`` and ``lora_scale`` beside it (:mod:`motif_megatron.checkpoint.adapters`):
every reader (export, evaluation, growth, the next stage) gets the merged ``W + (alpha / r) B A``,
and ``tools/merge_lora.py`` writes it as a plain checkpoint on request. QLoRA (``nf4``) builds
the adapted layers without their base and quantizes it layer by layer as it is read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motif_megatron.compat.specs import submodules
from motif_megatron.errors import UserError


def is_row_parallel(cls: type) -> bool:
    """Megatron's ``RowParallelLinear`` or TE's ``TERowParallelLinear`` (split by input)."""
    from megatron.core.tensor_parallel import RowParallelLinear

    return issubclass(cls, RowParallelLinear) or "Row" in cls.__name__


def merge(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale) -> torch.Tensor:
    """``base + scale * B @ A`` in fp32, in the base's dtype; batched over a leading layer axis
    (``scale`` then has one value per layer)."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=base.device)
    delta = (b.float() @ a.float()) * scale[..., None, None]
    return (base.float() + delta).to(base.dtype)


def local_shard(full: torch.Tensor, local_shape, row: bool, gated: bool) -> torch.Tensor:
    """This TP rank's part of a global layer tensor, as the layer holds it: the input columns of
    a row-parallel layer, the output rows of a column-parallel one, SwiGLU fc1's
    ``[gate_rank; up_rank]``."""
    from megatron.core import parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    if row:
        n = local_shape[1]
        return full[:, rank * n : (rank + 1) * n]
    n = local_shape[0]
    if not gated:
        return full[rank * n : (rank + 1) * n]
    half, n = full.shape[0] // 2, n // 2
    return torch.cat(
        [full[rank * n : (rank + 1) * n], full[half + rank * n : half + (rank + 1) * n]]
    )


_CLASSES: dict[type, type] = {}


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 32.0
    targets: tuple[str, ...] = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
    seed: int = 1234
    nf4: bool = False
    """QLoRA: the adapted layers hold no full-precision base; :func:`quantize_base` reads each
    layer's base and keeps it in NF4."""

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class _LoRAMixin:
    """A ColumnParallelLinear / RowParallelLinear (local or TE) with an adapter, built from the
    spec (:func:`lora_spec`): ``lora_a`` (replicated on a column layer, split by input columns
    on a row layer) and ``lora_b`` (split by output rows on a column layer, replicated on a row
    layer), ``B = 0`` at construction."""

    def __init__(self, *args, lora: LoRAConfig, lora_row: bool, lora_slot: str, **kwargs):
        super().__init__(*args, **kwargs)
        out_local, in_local = self.weight.shape
        dtype, device = self.weight.dtype, self.weight.device
        self.lora_a = torch.nn.Parameter(
            torch.zeros(lora.rank, in_local, dtype=dtype, device=device)
        )
        self.lora_b = torch.nn.Parameter(
            torch.zeros(out_local, lora.rank, dtype=dtype, device=device)
        )
        for p in (self.lora_a, self.lora_b):
            p.tensor_model_parallel = (p is self.lora_a) == lora_row
            p.partition_dim = 1 if lora_row else 0
        self.lora_scale = lora.scale
        self.lora_row_parallel = lora_row
        self.lora_gated = lora_slot == "linear_fc1" and self.config.gated_linear_unit
        self.lora_base_only = False
        self.lora_nf4 = None
        self.lora_shape = (out_local, in_local)
        if lora.nf4:  # freed as each layer is built: the full-precision model is never resident
            self.weight.data = torch.empty(0, dtype=dtype, device=device)

    def _lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        from megatron.core.tensor_parallel import (
            copy_to_tensor_model_parallel_region,
            reduce_from_tensor_model_parallel_region,
        )

        if hasattr(self, "layer_norm_weight"):  # TE's fused norm + linear sees the raw input
            x = F.rms_norm(x, (x.shape[-1],), self.layer_norm_weight, self.eps)
        h = F.linear(x, self.lora_a.to(x.dtype))
        if self.lora_row_parallel:
            h = reduce_from_tensor_model_parallel_region(h)
        else:
            h = copy_to_tensor_model_parallel_region(h)
        return F.linear(h, self.lora_b.to(x.dtype)) * self.lora_scale

    def forward(self, input_, *args, **kwargs):
        if self.lora_nf4 is not None:
            out, bias = self._quantized_base(input_), None
        else:
            out, bias = super().forward(input_, *args, **kwargs)
        return out + self._lora_delta(input_), bias

    def _quantized_base(self, x: torch.Tensor) -> torch.Tensor:
        """``W x`` with the NF4 base, dequantized per call (QLoRA), through the same TP
        collectives as the layer (no sequence parallelism)."""
        from megatron.core.tensor_parallel import (
            copy_to_tensor_model_parallel_region,
            reduce_from_tensor_model_parallel_region,
        )

        if hasattr(self, "layer_norm_weight"):
            x = F.rms_norm(x, (x.shape[-1],), self.layer_norm_weight, self.eps)
        if self.lora_row_parallel:
            return reduce_from_tensor_model_parallel_region(_NF4Linear.apply(x, self))
        return _NF4Linear.apply(copy_to_tensor_model_parallel_region(x), self)

    def base_weight(self) -> torch.Tensor:
        return (
            self.weight if self.lora_nf4 is None else _dequantize(self.lora_nf4, self.weight.dtype)
        )

    def merged_weight(self) -> torch.Tensor:
        return merge(self.base_weight(), self.lora_a, self.lora_b, self.lora_scale)

    @property
    def folds_stored_adapters(self) -> bool:
        """Whether a stored LoRA checkpoint's adapters go into this layer's base on load
        (:func:`~motif_megatron.checkpoint.adapters.fold`): only when loading the base alone,
        into a resident weight (a QLoRA placeholder reads its base merged instead)."""
        return self.lora_base_only and self.weight.numel() > 0

    def _placeholder(self) -> bool:
        return self.weight.numel() == 0 and self.lora_nf4 is None

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        resident, dtype = self.weight.data, self.weight.dtype
        base = None if self.lora_nf4 is None else _dequantize(self.lora_nf4, dtype)
        if base is not None:  # a 4-bit base saves dequantized
            self.weight.data = base
        elif self._placeholder():  # shaped for the key, never resident, dropped below
            self.weight.data = torch.zeros((), dtype=dtype).expand(self.lora_shape)
        try:
            state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        finally:
            self.weight.data = resident
        state = {k: v for k, v in state.items() if not k.endswith((".lora_a", ".lora_b"))}
        if base is not None:  # the entry holds the parameter, which is 4-bit again
            state[f"{prefix}weight"] = dataclasses.replace(state[f"{prefix}weight"], data=base)
        base_key = state[f"{prefix}weight"].key.removesuffix("weight")
        if self._placeholder():  # a QLoRA base not read yet: quantize_base reads it
            state.pop(f"{prefix}weight")
        if self.lora_base_only:
            return state
        # A (row-parallel) or B (column-parallel) is split over TP like the weight; the other
        # factor and the scale are replicated
        axis = {"lora_a": 1} if self.lora_row_parallel else {"lora_b": 0}
        tensors = {
            "lora_a": self.lora_a,
            "lora_b": self.lora_b,
            "lora_scale": torch.tensor(self.lora_scale, device=self.lora_a.device),
        }
        adapters = make_sharded_tensors_for_checkpoint(tensors, base_key, axis, sharded_offsets)
        for name in tensors:
            state[f"{prefix}{name}"] = adapters[f"{base_key}{name}"]
        if self.lora_gated:
            # SwiGLU's fc1 holds [gate; up] of its shard on every TP rank: its B rows are saved
            # as MLP saves the weight, gate and up apart, so any TP can load them
            from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

            singleton = (metadata or {}).get("singleton_local_shards", False)
            state[f"{prefix}lora_b"] = apply_swiglu_sharded_factory(
                state[f"{prefix}lora_b"], sharded_offsets, singleton
            )
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        scale = state_dict.pop(f"{prefix}lora_scale", None)
        if scale is not None and not math.isclose(float(scale), self.lora_scale, rel_tol=1e-6):
            raise UserError(
                f"{prefix}: the checkpoint's adapters were trained at LoRA scale "
                f"{float(scale):g} (alpha / rank), this run's is {self.lora_scale:g}; resume "
                "with the same --lora-alpha and --lora-rank"
            )
        if self._placeholder():  # a QLoRA base arrives through quantize_base
            state_dict[f"{prefix}weight"] = self.weight
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _dequantize(nf4: tuple, dtype: torch.dtype) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    packed, state = nf4
    return bnbf.dequantize_4bit(packed, state).to(dtype)


class _NF4Linear(torch.autograd.Function):
    """``x W^T`` with ``W`` stored in NF4: dequantized in forward and again in backward, so only
    the 4-bit copy stays resident; the base is frozen, so only ``x`` gets a gradient."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.layer = layer
        return F.linear(x, _dequantize(layer.lora_nf4, x.dtype))

    @staticmethod
    def backward(ctx, grad):
        return grad @ _dequantize(ctx.layer.lora_nf4, grad.dtype), None


def quantize_base(
    model: torch.nn.Module,
    read: Callable[[str, _LoRAMixin], torch.Tensor],
    blocksize: int = 64,
) -> int:
    """QLoRA, layer by layer: every adapted layer still without a base gets ``read(name,
    layer)`` (this rank's full-precision shard), stored in NF4 (bitsandbytes) before the next
    is read, so at most one layer's base is resident beside the 4-bit model. Returns the count
    (0, reading nothing, for a model without QLoRA layers)."""
    pending = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _LoRAMixin) and m._placeholder()
    ]
    if not pending:
        return 0
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise UserError("--qlora needs bitsandbytes: pip install bitsandbytes") from None
    for name, module in pending:
        weight = read(name, module).to(module.weight.device, torch.float32).contiguous()
        if tuple(weight.shape) != module.lora_shape:
            raise UserError(f"{name}: base shard {tuple(weight.shape)} != {module.lora_shape}")
        module.lora_nf4 = bnbf.quantize_4bit(weight, quant_type="nf4", blocksize=blocksize)
        del weight
    return len(pending)


def base_from_state_dict(weights: dict) -> Callable[[str, _LoRAMixin], torch.Tensor]:
    """:func:`quantize_base`'s source for in-memory weights (the previous stage's)."""
    return lambda name, module: weights[f"{name}.weight"]


def _adapted_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"LoRA{cls.__name__}", (_LoRAMixin, cls), {})
    return _CLASSES[cls]


def lora_spec(layer, config: LoRAConfig):
    """The layer spec (TE or local) with its target linears as LoRA modules of the same class.

    The adapters are built with the layer (``B = 0``: the function is unchanged) and drawn by
    :func:`init_adapters` once the model exists."""
    from megatron.core.transformer.spec_utils import ModuleSpec

    layer = copy.deepcopy(layer)
    slots = {
        "linear_qkv": submodules(layer.submodules.self_attention),
        "linear_proj": submodules(layer.submodules.self_attention),
        "linear_fc1": submodules(layer.submodules.mlp),
        "linear_fc2": submodules(layer.submodules.mlp),
    }
    unknown = sorted(set(config.targets) - set(slots))
    if unknown:
        raise UserError(f"LoRA targets {unknown}: choose from {', '.join(slots)}")
    for name in config.targets:
        cls = getattr(slots[name], name)
        if not isinstance(cls, type):
            raise UserError(f"LoRA on {name}: the layer spec already wraps it ({cls.module})")
        params = {"lora": config, "lora_row": is_row_parallel(cls), "lora_slot": name}
        setattr(slots[name], name, ModuleSpec(module=_adapted_class(cls), params=params))
    return layer


def init_adapters(model: torch.nn.Module, config: LoRAConfig) -> int:
    """Draw every adapter's ``A`` for the full matrix from the seed and the layer's global name
    (then take this rank's slice), so TP and PP layouts start alike; returns the count."""
    from megatron.core import parallel_state

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, _LoRAMixin):
            continue
        in_local = module.lora_a.shape[1]
        in_full = in_local * tp if module.lora_row_parallel else in_local
        generator = torch.Generator().manual_seed(
            config.seed + zlib.crc32(_global_name(model, name).encode())
        )
        a = torch.empty(config.rank, in_full)
        bound = 1 / math.sqrt(in_full)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and PEFT
        a.uniform_(-bound, bound, generator=generator)
        if module.lora_row_parallel:
            a = a[:, rank * in_local : (rank + 1) * in_local]
        with torch.no_grad():
            module.lora_a.copy_(a)
        count += 1
    return count


@contextlib.contextmanager
def base_checkpoint(model: torch.nn.Module):
    """Within: the adapted layers read and write only their base weight (loading a checkpoint
    saved before the LoRA stage)."""
    adapted = [m for m in model.modules() if isinstance(m, _LoRAMixin)]
    for m in adapted:
        m.lora_base_only = True
    try:
        yield
    finally:
        for m in adapted:
            m.lora_base_only = False


def load_base(model: torch.nn.Module, weights: dict) -> None:
    """Load a plain (pre-LoRA) state dict into an adapted model: every key but the adapters."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not k.endswith((".lora_a", ".lora_b"))] + list(unexpected)
    if bad:
        raise UserError(f"weights do not match the adapted model: {sorted(bad)[:5]}")


def merged_state_dict(model: torch.nn.Module) -> dict:
    """The model's state dict with every adapter folded into its weight and the adapter keys
    dropped (a plain Llama's, for the next stage)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, _LoRAMixin):
            state[f"{name}.weight"] = module.merged_weight().detach()
            for key in ("lora_a", "lora_b"):
                state.pop(f"{name}.{key}")
    return state


def _global_name(model: torch.nn.Module, name: str) -> str:
    """``decoder.layers.{local}.x`` with the global layer number, so PP stages seed alike."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "decoder" and parts[1] == "layers":
        parts[2] = str(model.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)
