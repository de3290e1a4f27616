"""Full-vocabulary logits from a (tensor/pipeline-parallel) Megatron model, via Megatron's schedules.

Used by the equivalence checker and evaluation: the same pipeline schedule as training runs the
forward pass, the last stage gathers the vocab-parallel logits, and one rank broadcasts them so
every rank returns the same ``[batch, seq, vocab]`` fp32 tensor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def forward_logits(model: torch.nn.Module, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Logits ``[batch, seq, vocab_size]`` (padding columns dropped) for ``tokens [batch, seq]``."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    batch, seq = tokens.shape
    positions = torch.arange(seq).unsqueeze(0).expand(batch, -1)

    def step(data_iterator, chunk):
        return chunk(tokens, positions, None, runtime_gather_output=True), None

    model.eval()
    with torch.no_grad():
        outputs = get_forward_backward_func()(
            forward_step_func=step,
            data_iterator=iter([None]),
            model=[model],
            num_microbatches=1,
            seq_length=seq,
            micro_batch_size=batch,
            forward_only=True,
        )
    holder = (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )
    src = torch.tensor([dist.get_rank() if holder else -1])
    dist.all_reduce(src, op=dist.ReduceOp.MAX)
    logits = torch.empty(batch, seq, vocab_size, dtype=torch.float32)
    if holder:
        logits.copy_(outputs[0][..., :vocab_size].float())
    dist.broadcast(logits, src=int(src))
    return logits
