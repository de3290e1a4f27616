"""Llama architecture arguments: read from an HF ``config.json``, checked, and turned back into one.

``LlamaArgs`` is the single description of a model's shape that every tool shares (importer,
exporter, growth transforms, trainer). It is stored beside each checkpoint as ``motif_model.json``
together with the original HF config, so fields this project does not model survive a round trip.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from motif_megatron.errors import UserError

MODEL_ARGS_FILE = "motif_model.json"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_from_name(name: str) -> torch.dtype:
    """``"bfloat16"`` -> ``torch.bfloat16``; the names HF configs use."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise UserError(f"unsupported dtype {name!r}; use one of {sorted(_DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in _DTYPES.items() if v == dtype)


@dataclass
class LlamaArgs:
    """Shape and numerics of a Llama-family decoder (names follow HF ``LlamaConfig``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    """HF ``rope_scaling``; only ``rope_type: llama3`` (or none) is supported."""
    max_position_embeddings: int = 8192
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    padded_vocab_size: int | None = None
    """Rows of the Megatron embedding/output layer (Megatron-LM pads the vocabulary). Kept fixed
    across TP sizes that divide it, so the loss (which spans padded columns) does not depend on TP."""
    dtype: str = "float32"
    """The checkpoint's native dtype; conversion keeps it."""
    hf_config: dict[str, Any] = field(default_factory=dict)
    """The original HF config, so fields we do not model (token ids, ...) survive export."""
    growth: dict[str, Any] = field(default_factory=dict)
    """What growth transforms did (e.g. ``llama_pro_layers``: the new blocks the trainer trains)."""

    def __post_init__(self) -> None:
        problems = []
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if self.rope_scaling is not None and self.rope_type not in ("default", "llama3"):
            problems.append(f"rope_scaling type {self.rope_type!r} is not supported (llama3 only)")
        dtype_from_name(self.dtype)
        if problems:
            raise UserError("; ".join(problems))

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> LlamaArgs:
        """Build from an HF ``config.json`` dict; refuse anything that is not a plain Llama."""
        archs = config.get("architectures") or []
        if config.get("model_type") != "llama" and "LlamaForCausalLM" not in archs:
            raise UserError(
                f"not a Llama config (model_type={config.get('model_type')!r}, "
                f"architectures={archs}); only LlamaForCausalLM is supported"
            )
        for flag in ("attention_bias", "mlp_bias"):
            if config.get(flag):
                raise UserError(f"{flag}=true is not supported: Llama has no linear biases")
        if config.get("hidden_act", "silu") != "silu":
            raise UserError(
                f"hidden_act={config['hidden_act']!r} is not supported (Llama uses silu)"
            )
        heads = config["num_attention_heads"]
        dtype = config.get("torch_dtype") or config.get("dtype") or "float32"
        return cls(
            vocab_size=config["vocab_size"],
            hidden_size=config["hidden_size"],
            intermediate_size=config["intermediate_size"],
            num_hidden_layers=config["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=_rope_theta(config),
            rope_scaling=_rope_scaling(config),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            initializer_range=config.get("initializer_range", 0.02),
            dtype=str(dtype).replace("torch.", ""),
            hf_config=dict(config),
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The HF ``config.json`` for these args (original extra fields kept, shapes updated)."""
        config = dict(self.hf_config)
        config.pop("dtype", None)
        config.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling,
            rope_parameters={
                "rope_type": "default",
                **(self.rope_scaling or {}),
                "rope_theta": self.rope_theta,
            },
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            attention_bias=False,
            mlp_bias=False,
            torch_dtype=self.dtype,
        )
        return config

    def replace(self, **changes: Any) -> LlamaArgs:
        return dataclasses.replace(self, **changes)

    def save(self, ckpt_dir: str | Path) -> None:
        path = Path(ckpt_dir) / MODEL_ARGS_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, ckpt_dir: str | Path) -> LlamaArgs:
        path = Path(ckpt_dir) / MODEL_ARGS_FILE
        if not path.is_file():
            raise UserError(f"{path} not found: not a motif-megatron checkpoint directory")
        return cls(**json.loads(path.read_text()))


def _rope_theta(config: dict[str, Any]) -> float:
    params = config.get("rope_parameters") or {}
    return float(config.get("rope_theta") or params.get("rope_theta") or 10000.0)


def _rope_scaling(config: dict[str, Any]) -> dict[str, Any] | None:
    """transformers<5 writes ``rope_scaling``; transformers>=5 folds it into ``rope_parameters``."""
    if config.get("rope_scaling"):
        return dict(config["rope_scaling"])
    params = {k: v for k, v in (config.get("rope_parameters") or {}).items() if k != "rope_theta"}
    return params if params.get("rope_type", "default") != "default" else None


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    """Megatron-LM's padding: a multiple of ``divisible_by * tp`` so every TP shard is equal."""
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def llama3_inv_freq(args: LlamaArgs) -> torch.Tensor:
    """RoPE inverse frequencies exactly as HF computes them, including Llama-3 ``rope_scaling``.

    Megatron-Core hard-codes the Llama-3 low/high frequency factors and the original context
    length; computing them here keeps any HF config exact.
    """
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if args.rope_type != "llama3":
        return inv_freq
    scaling = args.rope_scaling
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_len = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)
