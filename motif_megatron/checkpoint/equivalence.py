"""Prove two implementations compute the same function: max absolute logit difference.

Compares a Megatron checkpoint (any TP/PP) against an HF model directory or a second Megatron
checkpoint on one deterministic token batch. Growth transforms are checked the same way: the
grown model must reproduce the base model's logits over the base vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from motif_megatron import device, parallel
from motif_megatron.checkpoint.dist import build_from_checkpoint
from motif_megatron.model.builder import BuildOptions
from motif_megatron.model.inference import forward_logits


@dataclass(frozen=True)
class EquivalenceResult:
    max_abs_diff: float
    vocab_compared: int


def token_batch(batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    """The same random token ids on every rank (a seeded private generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq), generator=generator)


def hf_logits(hf_dir: str, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(tokens).logits.float()


def _megatron_logits(load: str, options: BuildOptions, tokens: torch.Tensor, vocab: int):
    model, args = build_from_checkpoint(load, options)
    return forward_logits(model, tokens, min(vocab, args.vocab_size))


def compare(
    load: str,
    *,
    hf_dir: str | None = None,
    load_b: str | None = None,
    options: BuildOptions,
    batch: int = 2,
    seq: int = 64,
    seed: int = 1234,
) -> EquivalenceResult:
    """Max |logits(load) - logits(other)| over the shared vocabulary, identical on every rank."""
    from motif_megatron.checkpoint import dist as ckpt
    from motif_megatron.model.llama import LlamaArgs

    if (hf_dir is None) == (load_b is None):
        raise ValueError("give exactly one of hf_dir or load_b")
    parallel.initialize(parallel.ParallelConfig(options.tp, options.pp), seed=seed)
    vocab = LlamaArgs.load(ckpt.root_of(load)).vocab_size
    if load_b is not None:
        vocab = min(vocab, LlamaArgs.load(ckpt.root_of(load_b)).vocab_size)
    tokens = token_batch(batch, seq, vocab, seed)
    ours = _megatron_logits(load, options, tokens, vocab)[..., :vocab]
    if load_b is not None:
        other = _megatron_logits(load_b, options, tokens, vocab)[..., :vocab]
    else:
        other = torch.zeros_like(ours)
        if dist.get_rank() == 0:
            other = device.to_device(hf_logits(hf_dir, tokens)[..., :vocab])
        dist.broadcast(other, src=0)
    return EquivalenceResult(float((ours - other).abs().max()), vocab)
