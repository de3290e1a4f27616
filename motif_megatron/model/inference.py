"""Full-vocabulary logits from a (tensor/pipeline-parallel) Megatron model, through the
trainer's one forward-only path (Megatron's schedules).

Used by the equivalence checker, evaluation and the safety watch: the last stage gathers the
vocab-parallel logits and shares them along the pipeline, so every rank returns the same
``[batch, seq, vocab]`` fp32 tensor.
"""

from __future__ import annotations

import torch

from motif_megatron.model.schedule import Batch, forward_only


def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits ``[batch, seq, vocab_size]`` (padding columns dropped) for ``tokens [batch, seq]``."""
    batch, seq = tokens.shape
    inputs = Batch(
        tokens=tokens,
        labels=tokens,
        loss_mask=torch.ones(batch, seq),
        position_ids=torch.arange(seq).unsqueeze(0).expand(batch, -1),
    )

    def objective(chunk, mb: Batch):
        output = chunk(mb.tokens, mb.position_ids, None, runtime_gather_output=True)
        return output, lambda out: (out, {"logits": out[..., :vocab_size].float()})

    return forward_only([model], inputs, batch, objective)[0]["logits"]
