"""NEFTune (Jain et al., 2023): uniform noise on the input embeddings, in training only.

``x + U(-1, 1) * alpha / sqrt(L * d)`` for sequence length ``L`` (the rows' ``--seq-length``, as
TRL takes the padded length; not the embedding's first dimension, which sequence parallelism
divides by TP and THD packing multiplies by the rows) and hidden size ``d``. The noise
comes from the default generator, which every tensor-parallel rank holds in the same state (the
seeds differ only between pipeline stages), so the replicated embedding output stays identical
across TP ranks.
"""

from __future__ import annotations

import torch


def attach(model: torch.nn.Module, alpha: float, seq_length: int):
    """Add the noise to ``model.embedding``'s output (first pipeline stage only); returns the
    hook handle (``.remove()`` turns it off), or None where this stage has no embedding."""
    embedding = getattr(model, "embedding", None)
    if embedding is None or alpha <= 0:
        return None

    def hook(module, inputs, output):
        if not module.training:
            return output
        scale = alpha / (seq_length * output.shape[-1]) ** 0.5  # Megatron's [s, b, h]
        noise = torch.rand(output.shape, dtype=torch.float32, device=output.device)
        return output + noise.mul_(2).sub_(1).mul_(scale).to(output.dtype)

    return embedding.register_forward_hook(hook)
