"""Masked Structure Growth modules: new width enters the function only as the mask ``m`` ramps 0->1.

Adapted to pre-norm RMSNorm Llama: every writer into the residual stream masks its new output
dims by ``m`` (the embedding through :class:`EmbeddingMask`, attention ``linear_proj`` and MLP
``linear_fc2`` as masked row-parallel linears), which also multiplies the outputs of new attention
heads and new FFN channels by ``m`` before they are projected; :class:`MaskedRMSNorm` divides by
``d_old + m * (d_new - d_old)`` so the old dims are normalised exactly as before while the new
ones are zero. At ``m = 0`` the grown model computes the base function; at ``m = 1`` every mask
is the identity and the model is a plain Llama of the new shape (``--finalize`` drops the masks).

The masks enter through :func:`masked_spec`, which rewrites the plain TE or local spec: the
row-parallel class of the spec (``TERowParallelLinear`` or ``RowParallelLinear``) gets the mask
mixin, and where TE fuses the norm into ``TELayerNormColumnParallelLinear`` (which cannot take
the mask) the norm becomes a separate :class:`MaskedRMSNorm` before a ``TEColumnParallelLinear``;
the checkpoint keys stay those of the plain spec. Masks are registered buffers (they move with the
model) and stay fp32 under ``--bf16``, so the denominators are exact; transformer code never sees
them.
"""

from __future__ import annotations

import copy

import torch

from motif_megatron.compat.specs import submodules

MASK_BUFFER = "msg_m"


def _mask(new: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(new, m, torch.ones_like(m))


class _Fp32Mask:
    """Keeps the ``msg_m`` buffer fp32 through ``.to(dtype)`` / ``.bfloat16()`` (Float16Module
    casts every floating buffer): a bf16 ``m`` would round ``d_old + m (d_new - d_old)``."""

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._buffers[MASK_BUFFER] = self._buffers[MASK_BUFFER].float()
        return out


class MaskedRMSNorm(_Fp32Mask, torch.nn.Module):
    """RMSNorm whose mean runs over ``old_hidden + m * (hidden - old_hidden)`` dims, in fp32."""

    def __init__(
        self, config, hidden_size: int, eps: float = 1e-5, old_hidden: int = 0, **_
    ) -> None:
        super().__init__()
        self.config = config
        self.eps = eps
        self.old_hidden, self.hidden = old_hidden, hidden_size
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # under sequence parallelism each TP rank sees its own tokens: finalize_model_grads
        # all-reduces this gradient over TP (as for TE's norms)
        self.weight.sequence_parallel = config.sequence_parallel
        self.register_buffer(MASK_BUFFER, torch.zeros((), dtype=torch.float32))

    def dims(self) -> torch.Tensor:
        """The fp32 denominator ``d_old + m (d_new - d_old)`` of the mean square."""
        m = getattr(self, MASK_BUFFER)
        return self.old_hidden + m * (self.hidden - self.old_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / self.dims() + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class RowMask(_Fp32Mask):
    """Mixin for a row-parallel linear (local or TE): scales new input features (heads, FFN
    channels) and new output dims (the residual stream's new width) by ``m``."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        in_new: torch.Tensor,
        out_new: torch.Tensor,
        **kwargs,
    ) -> None:
        super().__init__(input_size, output_size, **kwargs)
        from megatron.core import parallel_state

        tp, rank = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_tensor_model_parallel_rank(),
        )
        local = input_size // tp
        self.register_buffer(
            "msg_in_new", in_new[rank * local : (rank + 1) * local].clone(), persistent=False
        )
        self.register_buffer("msg_out_new", out_new.clone(), persistent=False)
        self.register_buffer(MASK_BUFFER, torch.zeros((), dtype=torch.float32))

    def forward(self, input_, *args, **kwargs):
        m = getattr(self, MASK_BUFFER)
        x = input_ * _mask(self.msg_in_new, m).to(input_.dtype)
        out, bias = super().forward(x, *args, **kwargs)
        return out * _mask(self.msg_out_new, m).to(out.dtype), bias


_MASKED: dict[type, type] = {}


def masked_row(cls: type) -> type:
    """``cls`` (a spec's row-parallel linear) with the MSG mask: one subclass per class."""
    if cls not in _MASKED:
        _MASKED[cls] = type(f"Masked{cls.__name__}", (RowMask, cls), {})
    return _MASKED[cls]


class EmbeddingMask(_Fp32Mask, torch.nn.Module):
    """The embedding writes into the residual stream too: its new dims are scaled by ``m``."""

    def __init__(self, hidden: int, old_hidden: int) -> None:
        super().__init__()
        self.register_buffer("msg_out_new", torch.arange(hidden) >= old_hidden, persistent=False)
        self.register_buffer(MASK_BUFFER, torch.zeros((), dtype=torch.float32), persistent=False)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return output * _mask(self.msg_out_new, getattr(self, MASK_BUFFER)).to(output.dtype)


def _unfuse_norm(layer_submodules, slot_parent, slot: str, norm_slot: str, norm) -> None:
    """TE fuses the pre-norm into ``TELayerNormColumnParallelLinear``; the mask needs its own
    norm, so split it into ``norm`` and a ``TEColumnParallelLinear`` (same checkpoint keys)."""
    linear = getattr(submodules(slot_parent), slot)
    if getattr(linear, "__name__", "") == "TELayerNormColumnParallelLinear":
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear

        setattr(submodules(slot_parent), slot, TEColumnParallelLinear)
    setattr(layer_submodules, norm_slot, norm)


def masked_spec(plain_layer, config, msg: dict, num_layers_local: int):
    """``TransformerBlockSubmodules`` of a plain layer spec (TE or local) with MSG masks."""
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    out_new = torch.arange(config.hidden_size) >= msg["old_hidden"]
    head_new = torch.zeros(config.num_attention_heads, dtype=torch.bool)
    head_new[msg["new_heads"]] = True
    ffn_new = torch.zeros(config.ffn_hidden_size, dtype=torch.bool)
    ffn_new[msg["new_ffn"]] = True
    norm = ModuleSpec(module=MaskedRMSNorm, params={"old_hidden": msg["old_hidden"]})
    layer = copy.deepcopy(plain_layer)
    sub = layer.submodules
    attention, mlp = sub.self_attention, sub.mlp
    _unfuse_norm(sub, attention, "linear_qkv", "input_layernorm", norm)
    _unfuse_norm(sub, mlp, "linear_fc1", "pre_mlp_layernorm", norm)
    # the separate norms save under the fused names, as the local spec's norms do
    sub.sharded_state_dict_keys_map = {
        **sub.sharded_state_dict_keys_map,
        "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
        "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
    }
    submodules(attention).linear_proj = ModuleSpec(
        module=masked_row(submodules(attention).linear_proj),
        params={"in_new": head_new.repeat_interleave(config.kv_channels), "out_new": out_new},
    )
    submodules(mlp).linear_fc2 = ModuleSpec(
        module=masked_row(submodules(mlp).linear_fc2),
        params={"in_new": ffn_new, "out_new": out_new},
    )
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers_local, layer_norm=norm)


def attach_embedding_mask(model, old_hidden: int) -> None:
    """Mask the embedding's new dims (first pipeline stage only)."""
    if not getattr(model, "pre_process", False):
        return
    embedding = model.embedding
    embedding.msg_mask = EmbeddingMask(model.config.hidden_size, old_hidden)
    embedding.register_forward_hook(lambda module, inputs, output: module.msg_mask(output))


def set_mask(model, m: float) -> None:
    """Set every MSG mask of ``model`` to ``m`` (the trainer ramps it from 0 to 1)."""
    for module in model.modules():
        if isinstance(module, _Fp32Mask):
            getattr(module, MASK_BUFFER).fill_(m)


def mask_value(model) -> float | None:
    """The mask value held by the checkpointed (persistent) mask buffers."""
    for module in model.modules():
        if isinstance(module, (MaskedRMSNorm, RowMask)):
            return float(getattr(module, MASK_BUFFER))
    return None
