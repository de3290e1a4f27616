"""The training engine: Megatron DDP, ``get_megatron_optimizer``, one pipelined train step and
the one forward-only path (evaluation, reference log-probs, logits).

Everything here is Megatron-Core's own machinery (DDP grad buffers, mixed-precision optimizer,
``get_forward_backward_func`` schedules, ``finalize_model_grads``); this module only wires it up
for a Llama ``GPTModel`` and reduces the loss the way Megatron-LM does with
``--calculate-per-token-loss``: summed token losses divided by the number of loss tokens of the
whole global batch (all microbatches and data-parallel ranks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from motif_megatron import device


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters (Megatron-LM's flag names and defaults)."""

    lr: float = 3e-4
    min_lr: float = 0.0
    decoupled_lr: float | None = None
    decoupled_min_lr: float | None = None
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    clip_grad: float = 1.0
    use_distributed_optimizer: bool = False


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


@dataclass(frozen=True)
class Overlap:
    """Megatron-LM's communication overlap: DP grad reduce during backward, param all-gather
    (distributed optimizer) during forward."""

    grad_reduce: bool = False
    param_gather: bool = False


def wrap_ddp(model: torch.nn.Module, optim: OptimConfig, overlap: Overlap = Overlap()):
    """Megatron DDP (contiguous fp32 grad buffers over the data-parallel group), with the model
    config pointed at Megatron-Core's ``finalize_model_grads``: after the schedule's backward it
    reduces the gradients over DP, the tied word embedding between the first and last pipeline
    stages and norms under sequence parallel, then divides by the global batch's loss tokens."""
    from megatron.core.distributed import (
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap.grad_reduce,
        overlap_param_gather=overlap.param_gather,
        use_distributed_optimizer=optim.use_distributed_optimizer,
    )
    ddp = DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)
    config = model.config
    config.finalize_model_grads_func = finalize_model_grads
    # as megatron/training/training.py: with overlap the schedule defers and launches the
    # bucket reductions itself
    config.no_sync_func = ddp.no_sync if overlap.grad_reduce else None
    config.grad_sync_func = ddp.start_grad_sync if overlap.grad_reduce else None
    return ddp


def sync_params(model_chunks: list) -> None:
    """Before a save, an evaluation or a stage switch (Megatron-LM's ``disable_forward_pre_hook``):
    with ``--overlap-param-gather`` the distributed optimizer's updated shards reach the other
    ranks only in the next forward, so gather them now (nothing to do without the overlap)."""
    for chunk in model_chunks:
        if chunk.ddp_config.overlap_param_gather:
            chunk.start_param_sync(force_sync=True)


def build_optimizer(model_chunks: list, optim: OptimConfig, no_decay: set[str] = frozenset()):
    """``get_megatron_optimizer`` with AdamW (TE/apex fused Adam on GPU, torch AdamW on CPU).

    Megatron's standard groups apply (no weight decay on norms); ``no_decay`` names parameters
    that must not decay either (tensors trained by rows: decay would move their frozen rows).
    """
    from megatron.core.optimizer import (
        OptimizerConfig,
        ParamKey,
        get_megatron_optimizer,
        get_standard_config_overrides,
    )
    from megatron.core.optimizer_param_scheduler import ParamGroupOverride

    config = model_chunks[0].config
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=optim.lr,
        min_lr=optim.min_lr,
        decoupled_lr=optim.decoupled_lr,
        decoupled_min_lr=optim.decoupled_min_lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1,
        adam_beta2=optim.adam_beta2,
        adam_eps=optim.adam_eps,
        clip_grad=optim.clip_grad,
        bf16=config.bf16,
        fp16=config.fp16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=optim.use_distributed_optimizer,
    )
    overrides = get_standard_config_overrides(opt_config)
    if no_decay:
        names = tuple(sorted(no_decay)) + tuple(f"module.{n}" for n in sorted(no_decay))
        overrides[ParamKey(name=names)] = ParamGroupOverride(wd_mult=0.0)
    return get_megatron_optimizer(opt_config, model_chunks, config_overrides=overrides)


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


def _microbatches(batch, micro_batch_size: int, thd: bool):
    """Slices of every tensor field of a batch dataclass along the batch axis, on the device,
    with the attention inputs of packed rows."""
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
        yield _packed_attention(mb, thd) if getattr(mb, "segments", None) is not None else mb


def _packed_attention(mb: Batch, thd: bool) -> Batch:
    """Packed rows attend within their examples: on TE the microbatch's rows become one THD
    sequence with ``cu_seqlens`` (flash attention, no mask), on the local spec a dense mask."""
    from motif_megatron.posttrain import packing

    if not thd:
        return dataclasses.replace(mb, attention_mask=packing.attention_mask(mb.segments))
    flat = {k: getattr(mb, k).reshape(1, -1) for k in ("tokens", "labels", "loss_mask")}
    segments = packing.distinct_rows(mb.segments)
    return dataclasses.replace(
        mb,
        **flat,
        position_ids=mb.position_ids.reshape(1, -1),
        segments=segments,
        packed_seq_params=packing.packed_seq_params(segments),
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

    # THD microbatches are one sequence of all their rows (the p2p shapes follow)
    thd = getattr(batch, "segments", None) is not None and uses_te(model_chunks[0])
    rows = 1 if thd else micro_batch_size
    reports = get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=_microbatches(batch, micro_batch_size, thd),
        model=model_chunks,
        num_microbatches=batch.tokens.shape[0] // micro_batch_size,
        seq_length=batch.tokens.shape[1] * micro_batch_size // rows,
        micro_batch_size=rows,
        forward_only=forward_only,
    )
    return _from_last_stage(reports if parallel_state.is_pipeline_last_stage() else None)


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


def train_step(
    model_chunks: list,
    optimizer,
    batch,
    micro_batch_size: int,
    after_grad_sync: Callable[[torch.nn.Module], None] | None = None,
    objective=lm_objective,
) -> dict:
    """Forward, backward, ``finalize_model_grads`` (in the schedule), clip and one update.

    ``after_grad_sync(chunk)`` may edit the reduced gradients (row masks) before the update.
    Returns ``loss`` (the objective's first report), ``grad_norm``, ``skipped`` and ``reports``."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    reports = reduce_reports(run_schedule(model_chunks, batch, micro_batch_size, False, objective))
    if after_grad_sync is not None:
        for chunk in model_chunks:
            after_grad_sync(chunk.module)
    update_ok, grad_norm, _ = optimizer.step()
    loss = next(iter(reports.values()))
    return {"loss": loss, "grad_norm": grad_norm, "skipped": not update_ok, "reports": reports}


def eval_loss(model_chunks: list, batch, micro_batch_size: int, objective=lm_objective) -> float:
    """The objective's first report (mean token loss for LM) without gradients."""
    reports = forward_only(model_chunks, batch, micro_batch_size, objective)
    return next(iter(reduce_reports(reports).values()))
