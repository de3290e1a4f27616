"""Masked Structure Growth modules: new width enters the function only as the mask ``m`` ramps 0->1.

Adapted to pre-norm RMSNorm Llama: every writer into the residual stream masks its new output
dims by ``m`` (the embedding via a forward hook, attention ``linear_proj`` and MLP ``linear_fc2``
as :class:`MaskedRowParallelLinear`), which also multiplies the outputs of new attention heads and
new FFN channels by ``m`` before they are projected; :class:`MaskedRMSNorm` divides by
``d_old + m * (d_new - d_old)`` so the old dims are normalised exactly as before while the new
ones are zero. At ``m = 0`` the grown model computes the base function; at ``m = 1`` every mask
is the identity and the model is a plain Llama of the new shape (``--finalize`` drops the masks).
The masks enter through a spec beside the TE and local ones; transformer code never sees them.
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import RowParallelLinear

MASK_BUFFER = "msg_m"


def _mask(new: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(new, m, torch.ones_like(m))


class MaskedRMSNorm(torch.nn.Module):
    """RMSNorm whose mean runs over ``old_hidden + m * (hidden - old_hidden)`` dims."""

    def __init__(
        self, config, hidden_size: int, eps: float = 1e-5, old_hidden: int = 0, **_
    ) -> None:
        super().__init__()
        self.config = config
        self.eps = eps
        self.old_hidden, self.hidden = old_hidden, hidden_size
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.register_buffer(MASK_BUFFER, torch.zeros((), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = getattr(self, MASK_BUFFER)
        dims = self.old_hidden + m * (self.hidden - self.old_hidden)
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / dims + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


class MaskedRowParallelLinear(RowParallelLinear):
    """RowParallelLinear that scales new input features (heads, FFN channels) and new output dims
    (the residual stream's new width) by ``m``."""

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


def masked_spec(config, growth: dict, num_layers_local: int):
    """TransformerBlockSubmodules of the local Llama spec with the masked modules swapped in."""
    import copy

    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    msg = growth["msg"]
    hidden = config.hidden_size
    out_new = torch.arange(hidden) >= msg["old_hidden"]
    head_new = torch.zeros(config.num_attention_heads, dtype=torch.bool)
    head_new[msg["new_heads"]] = True
    ffn_new = torch.zeros(config.ffn_hidden_size, dtype=torch.bool)
    ffn_new[msg["new_ffn"]] = True
    norm = ModuleSpec(module=MaskedRMSNorm, params={"old_hidden": msg["old_hidden"]})
    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.input_layernorm = norm
    layer.submodules.pre_mlp_layernorm = norm
    layer.submodules.self_attention.submodules.linear_proj = ModuleSpec(
        module=MaskedRowParallelLinear,
        params={"in_new": head_new.repeat_interleave(config.kv_channels), "out_new": out_new},
    )
    layer.submodules.mlp.submodules.linear_fc2 = ModuleSpec(
        module=MaskedRowParallelLinear, params={"in_new": ffn_new, "out_new": out_new}
    )
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers_local, layer_norm=norm)


def attach_embedding_mask(model, old_hidden: int) -> None:
    """The embedding writes into the residual stream too: mask its new dims by ``m``."""
    if not getattr(model, "pre_process", False):
        return
    embedding = model.embedding
    embedding.register_buffer(MASK_BUFFER, torch.zeros((), dtype=torch.float32), persistent=False)
    new = torch.arange(model.config.hidden_size) >= old_hidden

    def hook(module, inputs, output):
        return output * _mask(new, getattr(module, MASK_BUFFER)).to(output.dtype)

    embedding.register_forward_hook(hook)


def set_mask(model, m: float) -> None:
    """Set every MSG mask of ``model`` to ``m`` (the trainer ramps it from 0 to 1)."""
    for module in model.modules():
        buffer = getattr(module, MASK_BUFFER, None)
        if isinstance(buffer, torch.Tensor):
            buffer.fill_(m)


def mask_value(model) -> float | None:
    """The mask value held by the checkpointed (persistent) mask buffers."""
    for module in model.modules():
        if isinstance(module, (MaskedRMSNorm, MaskedRowParallelLinear)):
            return float(getattr(module, MASK_BUFFER))
    return None
