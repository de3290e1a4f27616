"""The one path through the model: Megatron's pipeline schedules over a batch's microbatches.

Training (forward and backward, ``training/engine.py``), evaluation, reference log-probs and
logits (forward only) all run :func:`run_schedule`; the loss is Megatron-LM's
``--calculate-per-token-loss`` form, summed token losses and their count, reduced over the whole
global batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist

from motif_megatron import device
from motif_megatron.model import packed


@dataclass
class Batch:
    """One global batch on this rank: ``[microbatches * micro_batch, seq]`` token tensors."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor | None = None
    """Packed rows: each token's example index in its row (-1 on row padding); None: one causal
    sequence per row. Each microbatch turns it into the attention inputs of the spec."""
    attention_mask: torch.Tensor | None = None
    """Local spec: ``[b, 1, s, s]``, True where blocked (built per microbatch from segments)."""
    packed_seq_params: object | None = None
    """TE spec: Megatron's ``PackedSeqParams`` (THD ``cu_seqlens``; built per microbatch)."""

    def real_tokens(self) -> int:
        """Tokens that are not row padding (every one for unpacked pretraining rows)."""
        return self.tokens.numel() if self.segments is None else int((self.segments >= 0).sum())


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Megatron-LM's per-token loss: the summed token losses and their count (the schedule adds
    the counts and ``finalize_model_grads`` divides the gradients by the global total)."""
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.cat([loss.detach().view(1), num_tokens.float().view(1)])
    return loss, num_tokens, {"lm loss": report}


def lm_objective(model, mb: Batch):
    """Megatron's forward step for next-token prediction: summed token losses and their count."""
    output = model(
        mb.tokens,
        mb.position_ids,
        mb.attention_mask,
        labels=mb.labels,
        packed_seq_params=mb.packed_seq_params,
    )
    return output, lambda out: _loss_func(mb.loss_mask, out)


def _microbatches(batch, micro_batch_size: int, thd: bool, repeat_last: int = 0):
    """Slices of every tensor field of a batch dataclass along the batch axis, on the device,
    with the attention inputs of packed rows; the last one ``repeat_last`` more times."""
    tensors = [
        f.name
        for f in dataclasses.fields(batch)
        if isinstance(getattr(batch, f.name), torch.Tensor)
    ]
    for start in range(0, batch.tokens.shape[0], micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        mb = dataclasses.replace(
            batch, **{name: device.to_device(getattr(batch, name)[sl]) for name in tensors}
        )
        mb = _packed_attention(mb, thd) if getattr(mb, "segments", None) is not None else mb
        yield mb
    for _ in range(repeat_last):
        yield mb


def _packed_attention(mb: Batch, thd: bool) -> Batch:
    """Packed rows attend within their examples: on TE the microbatch's rows become one THD
    sequence with ``cu_seqlens`` (flash attention, no mask), on the local spec a dense mask."""
    if not thd:
        return dataclasses.replace(mb, attention_mask=packed.attention_mask(mb.segments))
    flat = {k: getattr(mb, k).reshape(1, -1) for k in ("tokens", "labels", "loss_mask")}
    segments = packed.distinct_rows(mb.segments)
    return dataclasses.replace(
        mb,
        **flat,
        position_ids=mb.position_ids.reshape(1, -1),
        segments=segments,
        packed_seq_params=packed.packed_seq_params(segments),
    )


def run_schedule(
    model_chunks: list, batch, micro_batch_size: int, forward_only: bool, objective=lm_objective
) -> list[dict[str, torch.Tensor]]:
    """Megatron's pipeline schedule over the batch's microbatches: every microbatch's reports
    (the loss function's dict), on every pipeline stage.

    ``objective(model, microbatch) -> (output, loss_func)``; ``loss_func(output)`` returns
    ``(loss_sum, count, reports)`` (Megatron's per-token form: the gradient is that of the sum
    over the global batch divided by the global count) or, forward-only, ``(output, reports)``."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from motif_megatron.model.builder import uses_te

    def step(data_iterator, model):
        return objective(model, next(data_iterator))

    # THD microbatches are one sequence of all their rows (the p2p shapes follow); a sample may
    # run as several rows (KTO: an example and its KL row)
    thd = getattr(batch, "segments", None) is not None and uses_te(model_chunks[0])
    rows = 1 if thd else micro_batch_size * getattr(batch, "rows_per_sample", 1)
    count = -(-batch.tokens.shape[0] // micro_batch_size)
    # the interleaved schedule runs microbatches in groups of PP (training batches are checked
    # to fill them): a forward-only batch is padded with copies of its last microbatch, whose
    # reports are dropped
    pad = 0
    if forward_only and len(model_chunks) > 1:
        pad = -count % parallel_state.get_pipeline_model_parallel_world_size()
    # the interleaved schedule reads one iterator per chunk, each over every microbatch
    iterators = [_microbatches(batch, micro_batch_size, thd, pad) for _ in model_chunks]
    reports = get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iterators if len(iterators) > 1 else iterators[0],
        model=model_chunks,
        num_microbatches=count + pad,
        seq_length=batch.tokens.shape[1] * (micro_batch_size if thd else 1),
        micro_batch_size=rows,
        forward_only=forward_only,
    )
    return _from_last_stage(reports if parallel_state.is_pipeline_last_stage() else None)[:count]


def _from_last_stage(reports: list[dict] | None) -> list[dict[str, torch.Tensor]]:
    """The last pipeline stage's per-microbatch reports, broadcast along the pipeline: one
    broadcast per report name (microbatches stacked), after one for names and shapes."""
    from megatron.core import parallel_state

    group = parallel_state.get_pipeline_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return reports
    src = parallel_state.get_pipeline_model_parallel_last_rank()
    stacked = {k: torch.stack([r[k] for r in reports]) for k in reports[0]} if reports else None
    layout = [{k: (v.shape, v.dtype) for k, v in stacked.items()} if stacked else None]
    dist.broadcast_object_list(layout, src=src, group=group)
    if stacked is None:
        stacked = {
            k: device.to_device(torch.empty(shape, dtype=dtype))
            for k, (shape, dtype) in layout[0].items()
        }
    for tensor in stacked.values():
        dist.broadcast(tensor, src=src, group=group)
    count = next(iter(stacked.values())).shape[0]
    return [{k: v[i] for k, v in stacked.items()} for i in range(count)]


def reduce_reports(reports: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Each ``[sum, count]`` report summed over microbatches and data-parallel replicas, as
    ``sum / count`` (the same on every rank)."""
    from megatron.core import parallel_state

    names = list(reports[0])
    totals = torch.stack([torch.stack([r[n].double() for n in names]) for r in reports]).sum(0)
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    return {n: float(t[0] / t[1].clamp(min=1)) for n, t in zip(names, totals, strict=True)}


def as_chunks(model) -> list:
    """A model's chunks: a list of chunks (the interleaved schedule's) as it is, one model as a
    list of one."""
    return model if isinstance(model, list) else [model]


def forward_only(
    model_chunks: list, batch, micro_batch_size: int, objective=lm_objective
) -> list[dict[str, torch.Tensor]]:
    """The one forward-only path (evaluation, reference log-probs, logits): eval mode, no
    gradients, Megatron's schedule; every microbatch's reports on every pipeline stage."""
    for chunk in model_chunks:
        chunk.eval()
    with torch.no_grad():
        reports = run_schedule(model_chunks, batch, micro_batch_size, True, objective)
    for chunk in model_chunks:
        chunk.train()
    return reports
