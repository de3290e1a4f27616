"""Named model shapes and random-weight HF Llama models built from them.

No pretrained weights can be downloaded here, so tests and the demo start from a randomly
initialised HF ``LlamaForCausalLM`` of a preset shape with a real tokenizer: the same files a
user would point the importer at.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from motif_megatron.errors import UserError
from motif_megatron.tokenizer.files import copy_tokenizer


def _llama3_rope_scaling(original_max_position_embeddings: int) -> dict[str, Any]:
    """Llama-3.1's RoPE scaling (factor 8 above the original context)."""
    return {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": original_max_position_embeddings,
    }


PRESETS: dict[str, dict[str, Any]] = {
    # a few layers, small hidden, GQA (8 query heads over 2 KV groups), Llama-3 RoPE scaling
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope_scaling(256),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # Llama-3.1-8B's published config (the GPU check trains a slice of it: fewer layers)
    "llama3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling=_llama3_rope_scaling(8192),
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
}


def hf_config(preset: str, vocab_size: int, **overrides: Any) -> dict[str, Any]:
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return {"vocab_size": vocab_size, **PRESETS[preset], **overrides}


def tokenizer_ids(tokenizer_dir: str | Path) -> dict[str, Any]:
    """Vocabulary size and special token ids of an HF tokenizer directory (no model needed)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }


def random_hf_model(
    out: str | Path,
    preset: str,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    **overrides: Any,
) -> Path:
    """Write a random-weight HF Llama of ``preset`` (with the tokenizer's files, if given)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ids = tokenizer_ids(tokenizer_dir) if tokenizer_dir else {"vocab_size": 1024}
    config = LlamaConfig(**hf_config(preset, **{**ids, **overrides}))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    out = Path(out)
    model.save_pretrained(out)
    if tokenizer_dir:
        copy_tokenizer(Path(tokenizer_dir), out)
    (out / "motif_preset.json").write_text(json.dumps({"preset": preset, "seed": seed}) + "\n")
    return out
