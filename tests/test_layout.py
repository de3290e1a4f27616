"""The HF <-> Megatron tensor layouts agree with Megatron-Core's own model and checkpoint keys."""

from __future__ import annotations

import torch

from motif_megatron.checkpoint import layout
from motif_megatron.model.llama import LlamaArgs, llama3_inv_freq


def _args(**kw):
    base = dict(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=4,
    )
    return LlamaArgs(**{**base, **kw})


def test_qkv_is_grouped_per_kv_head():
    args = _args()
    q = torch.arange(32).float().view(32, 1).expand(32, 32)
    k = 100 + torch.arange(8).float().view(8, 1).expand(8, 32)
    v = 200 + torch.arange(8).float().view(8, 1).expand(8, 32)
    packed = layout.pack_qkv(q, k, v, args)[:, 0].tolist()
    # group 0: query heads 0-3 (rows 0-15), then k head 0 (rows 0-3), v head 0; then group 1
    assert packed[:24] == [*range(16), 100, 101, 102, 103, 200, 201, 202, 203]
    assert packed[24:40] == list(range(16, 32))
    assert [
        t.equal(u)
        for t, u in zip(
            layout.unpack_qkv(layout.pack_qkv(q, k, v, args), args), (q, k, v), strict=True
        )
    ] == [True] * 3


def test_llama3_inv_freq_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    config = LlamaConfig(
        hidden_size=64,
        num_attention_heads=4,
        rope_theta=500000.0,
        rope_scaling=scaling,
        max_position_embeddings=1024,
    )
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    args = _args(
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        rope_theta=500000.0,
        rope_scaling=scaling,
    )
    assert torch.equal(llama3_inv_freq(args), expected)


def test_hf_config_round_trip_keeps_unknown_fields():
    config = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "rope_theta": 500000.0,
        "torch_dtype": "bfloat16",
    }
    args = LlamaArgs.from_hf_config(config)
    assert args.head_dim == 8 and args.dtype == "bfloat16"
    out = args.to_hf_config()
    assert out["bos_token_id"] == 128000 and out["rope_parameters"]["rope_theta"] == 500000.0
    assert LlamaArgs.from_hf_config(out) == args.replace(hf_config=out)


def test_sequence_parallel_is_refused_without_te():
    import pytest

    from motif_megatron.errors import UserError
    from motif_megatron.model.builder import BuildOptions, te_available, transformer_config

    if te_available():
        pytest.skip("Transformer Engine present: sequence parallel is allowed")
    with pytest.raises(UserError, match="sequence parallel needs Transformer Engine"):
        transformer_config(_args(), BuildOptions(tp=2, sequence_parallel=True))
