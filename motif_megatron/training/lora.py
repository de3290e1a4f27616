"""LoRA on Megatron's tensor-parallel linear layers (RedWhale's last stage), merged on save.

An adapted layer computes ``W x + (alpha / r) B A x`` with the base ``W`` frozen. Under tensor
parallelism the adapter follows its layer: on a column-parallel layer (``linear_qkv``,
``linear_fc1``) ``A`` is replicated and ``B`` split by output rows, with the ``A x`` activations
entering the TP region like the layer's input (all-reduced gradient); on a row-parallel layer
(``linear_proj``, ``linear_fc2``) ``A`` is split by input columns and its partial products are
all-reduced before the replicated ``B``. ``A`` is drawn for the full matrix from a seed and the
layer name, then sliced, so TP=1 and TP=2 runs start from the same adapters.

Checkpoints stay plain Llama checkpoints: the usual ``weight`` key holds the merged
``W + (alpha / r) B A``, so every tool (export, evaluation, growth) reads the adapted model;
``lora_base``, ``lora_a`` and ``lora_b`` beside it let a LoRA run resume exactly.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motif_megatron.errors import UserError

_CLASSES: dict[type, type] = {}


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8
    alpha: float = 32.0
    targets: tuple[str, ...] = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")
    seed: int = 1234

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class _LoRAMixin:
    """Adds the adapter to a ColumnParallelLinear / RowParallelLinear (local or TE) instance."""

    lora_scale: float
    lora_row_parallel: bool
    lora_gated: bool

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
        if getattr(self, "lora_nf4", None) is not None:
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
        nf4 = getattr(self, "lora_nf4", None)
        return self.weight if nf4 is None else _dequantize(nf4, self.weight.dtype)

    def merged_weight(self) -> torch.Tensor:
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.lora_scale
        return (self.base_weight().float() + delta).to(self.weight.dtype)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        from megatron.core.dist_checkpointing.mapping import ShardedTensor
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        placeholder = self.weight.data
        self.weight.data = self.base_weight().detach()  # a 4-bit base saves dequantized
        try:
            state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        finally:
            self.weight.data = placeholder
        weight: ShardedTensor = state[f"{prefix}weight"]
        base_key = weight.key[: -len("weight")]
        state[f"{prefix}weight"] = dataclasses.replace(weight, data=self.merged_weight().detach())
        state[f"{prefix}lora_base"] = dataclasses.replace(weight, key=base_key + "lora_base")
        # A (row-parallel) or B (column-parallel) is split over TP like the weight; the other
        # factor is replicated
        axis = {"lora_a": 1} if self.lora_row_parallel else {"lora_b": 0}
        adapters = make_sharded_tensors_for_checkpoint(
            {"lora_a": self.lora_a, "lora_b": self.lora_b}, base_key, axis, sharded_offsets
        )
        state[f"{prefix}lora_a"] = adapters[f"{base_key}lora_a"]
        state[f"{prefix}lora_b"] = adapters[f"{base_key}lora_b"]
        if self.lora_gated:
            # SwiGLU's fc1 holds [gate; up] of its shard on every TP rank: its base and B rows
            # are saved as MLP saves the weight, gate and up apart, so any TP can load them
            from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

            for key in (f"{prefix}lora_base", f"{prefix}lora_b"):
                state[key] = apply_swiglu_sharded_factory(state[key], sharded_offsets)
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        base = state_dict.pop(f"{prefix}lora_base", None)
        if base is not None:  # the merged weight is for other tools; resume from the base
            state_dict[f"{prefix}weight"] = base
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


def quantize_base(model: torch.nn.Module, blocksize: int = 64) -> int:
    """QLoRA: store every adapted layer's frozen base weight in NF4 (bitsandbytes) and free the
    full-precision copy; returns the number of layers quantized. Call after :func:`attach`."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise UserError("--qlora needs bitsandbytes: pip install bitsandbytes") from None
    count = 0
    for module in model.modules():
        if isinstance(module, _LoRAMixin) and getattr(module, "lora_nf4", None) is None:
            weight = module.weight.detach()
            module.lora_nf4 = bnbf.quantize_4bit(
                weight.float().contiguous(), quant_type="nf4", blocksize=blocksize
            )
            module.weight.data = torch.empty(0, dtype=weight.dtype, device=weight.device)
            count += 1
    return count


def _adapted_class(cls: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"LoRA{cls.__name__}", (_LoRAMixin, cls), {})
    return _CLASSES[cls]


def attach(model: torch.nn.Module, config: LoRAConfig) -> int:
    """Give every target layer of ``model`` an adapter (``B = 0``: the function is unchanged).

    Returns the number of adapted layers. Call after the base weights are loaded.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from motif_megatron.growth.masked import RowMask

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    count = 0
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] not in config.targets or isinstance(module, _LoRAMixin):
            continue
        if isinstance(module, RowMask):
            raise UserError("LoRA on an MSG-masked model: finalize the width growth first")
        row = isinstance(module, RowParallelLinear) or "Row" in type(module).__name__
        if not (
            row or isinstance(module, ColumnParallelLinear) or "Column" in type(module).__name__
        ):
            raise UserError(
                f"LoRA target {name} is a {type(module).__name__}, not a parallel linear"
            )
        out_local, in_local = module.weight.shape
        in_full = in_local * tp if row else in_local
        global_name = _global_name(model, name)
        generator = torch.Generator().manual_seed(config.seed + zlib.crc32(global_name.encode()))
        a = torch.empty(config.rank, in_full)
        bound = 1 / math.sqrt(in_full)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and PEFT
        a.uniform_(-bound, bound, generator=generator)
        if row:
            a = a[:, rank * in_local : (rank + 1) * in_local]
        b = torch.zeros(out_local, config.rank)
        dtype, device = module.weight.dtype, module.weight.device
        module.register_parameter("lora_a", torch.nn.Parameter(a.contiguous().to(device, dtype)))
        module.register_parameter("lora_b", torch.nn.Parameter(b.to(device, dtype)))
        for p in (module.lora_a, module.lora_b):
            p.tensor_model_parallel = (p is module.lora_a) == row
            p.partition_dim = 1 if row else 0
        module.lora_scale = config.scale
        module.lora_row_parallel = row
        module.lora_gated = name.endswith("linear_fc1") and module.config.gated_linear_unit
        module.__class__ = _adapted_class(type(module))
        count += 1
    if not count:
        raise UserError(f"no LoRA targets {list(config.targets)} found in the model")
    return count


def merge(model: torch.nn.Module) -> None:
    """Fold every adapter into its weight and turn the layers back into plain ones."""
    for module in model.modules():
        if isinstance(module, _LoRAMixin):
            merged = module.merged_weight()
            if getattr(module, "lora_nf4", None) is not None:
                module.weight.data = torch.empty_like(merged)
                module.lora_nf4 = None
            base_cls = next(
                c
                for c in type(module).__mro__[1:]
                if c is not _LoRAMixin and not issubclass(c, _LoRAMixin)
            )
            module.__class__ = base_cls
            with torch.no_grad():
                module.weight.copy_(merged)
            del module._parameters["lora_a"], module._parameters["lora_b"]


def _global_name(model: torch.nn.Module, name: str) -> str:
    """``decoder.layers.{local}.x`` with the global layer number, so PP stages seed alike."""
    parts = name.split(".")
    if len(parts) > 2 and parts[0] == "decoder" and parts[1] == "layers":
        parts[2] = str(model.decoder.layers[int(parts[2])].layer_number - 1)
    return ".".join(parts)
