"""Full-vocabulary logits from a (tensor/pipeline-parallel) Megatron model, through the
trainer's one forward-only path (Megatron's schedules).

Used by the equivalence checker, evaluation and the safety watch: the last stage gathers the
vocab-parallel logits and shares them along the pipeline, so every rank returns the same
``[batch, seq, vocab]`` fp32 tensor.
"""

from __future__ import annotations

import torch

from motif_megatron.model.schedule import Batch, as_chunks, forward_only


def forward_logits(model, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits ``[batch, seq, vocab_size]`` (padding columns dropped) for ``tokens [batch, seq]``
    from a model or its list of chunks."""
    batch, seq = tokens.shape
    inputs = Batch(
        tokens=tokens,
        labels=tokens,
        loss_mask=torch.ones(batch, seq),
        position_ids=torch.arange(seq).unsqueeze(0).expand(batch, -1),
    )

    def objective(chunk, mb: Batch):
        output = chunk(mb.tokens, mb.position_ids, None, runtime_gather_output=True)
        # a copy: Megatron's forward-only step divides the output by the microbatch count in
        # place (and the interleaved schedule may run padding microbatches)
        return output, lambda out: (out, {"logits": out[..., :vocab_size].float().clone()})

    return forward_only(as_chunks(model), inputs, batch, objective)[0]["logits"]
