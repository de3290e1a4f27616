"""HF Llama <-> Megatron-Core parameter names and tensor layouts.

Megatron packs attention as one ``linear_qkv`` whose rows are grouped per KV group
(``[q heads of group g; k_g; v_g]`` for each g) and the gated MLP as one ``linear_fc1`` of
``[gate; up]``. On disk (``torch_dist``) the per-layer tensors are stacked along a leading layer
axis under keys such as ``decoder.layers.self_attention.linear_qkv.weight``, fc1 is stored as the
global ``[gate; up]`` whatever the TP size, and the local spec's norms are stored under TE's names.
That makes a checkpoint independent of the TP/PP layout it was saved from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from motif_megatron.model.llama import LlamaArgs


@dataclass(frozen=True)
class LayerParam:
    """One per-layer parameter: its checkpoint key, local-spec module name, and HF name(s)."""

    ckpt_key: str
    """Key under ``decoder.layers.`` in the dist checkpoint (stacked over layers)."""
    local_name: str
    """Parameter name under ``decoder.layers.{i}.`` in a local-spec ``GPTModel``."""
    hf_names: tuple[str, ...]
    """Names under ``model.layers.{i}.`` in HF, combined by ``to_megatron``."""


LAYER_PARAMS = (
    LayerParam(
        "self_attention.linear_qkv.layer_norm_weight",
        "input_layernorm.weight",
        ("input_layernorm.weight",),
    ),
    LayerParam(
        "self_attention.linear_qkv.weight",
        "self_attention.linear_qkv.weight",
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"),
    ),
    LayerParam(
        "self_attention.linear_proj.weight",
        "self_attention.linear_proj.weight",
        ("self_attn.o_proj.weight",),
    ),
    LayerParam(
        "mlp.linear_fc1.layer_norm_weight",
        "pre_mlp_layernorm.weight",
        ("post_attention_layernorm.weight",),
    ),
    LayerParam(
        "mlp.linear_fc1.weight",
        "mlp.linear_fc1.weight",
        ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
    ),
    LayerParam("mlp.linear_fc2.weight", "mlp.linear_fc2.weight", ("mlp.down_proj.weight",)),
)

EMBEDDING = ("embedding.word_embeddings.weight", "model.embed_tokens.weight")
FINAL_NORM = ("decoder.final_layernorm.weight", "model.norm.weight")
OUTPUT = ("output_layer.weight", "lm_head.weight")


def layer_ckpt_key(param: LayerParam) -> str:
    return f"decoder.layers.{param.ckpt_key}"


def hf_layer_names(param: LayerParam, layer: int) -> list[str]:
    return [f"model.layers.{layer}.{n}" for n in param.hf_names]


def pack_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, args: LlamaArgs) -> torch.Tensor:
    """HF q/k/v projections -> Megatron's per-group interleaved ``linear_qkv`` weight."""
    groups, d = args.num_key_value_heads, args.head_dim
    per_group = args.num_attention_heads // groups
    hidden = q.shape[-1]
    return torch.cat(
        [
            q.reshape(groups, per_group * d, hidden),
            k.reshape(groups, d, hidden),
            v.reshape(groups, d, hidden),
        ],
        dim=1,
    ).reshape(-1, hidden)


def unpack_qkv(qkv: torch.Tensor, args: LlamaArgs) -> tuple[torch.Tensor, ...]:
    """Inverse of :func:`pack_qkv`."""
    groups, d = args.num_key_value_heads, args.head_dim
    per_group = args.num_attention_heads // groups
    hidden = qkv.shape[-1]
    q, k, v = qkv.reshape(groups, (per_group + 2) * d, hidden).split([per_group * d, d, d], dim=1)
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


def to_megatron(param: LayerParam, hf: list[torch.Tensor], args: LlamaArgs) -> torch.Tensor:
    """Combine a layer's HF tensors into the Megatron tensor for ``param``."""
    if len(hf) == 3:
        return pack_qkv(*hf, args)
    if len(hf) == 2:
        return torch.cat(hf, dim=0)
    return hf[0]


def to_hf(param: LayerParam, tensor: torch.Tensor, args: LlamaArgs) -> list[torch.Tensor]:
    """Split a layer's Megatron tensor into its HF tensors (inverse of :func:`to_megatron`)."""
    if len(param.hf_names) == 3:
        return list(unpack_qkv(tensor, args))
    if len(param.hf_names) == 2:
        return list(tensor.chunk(2, dim=0))
    return [tensor]
