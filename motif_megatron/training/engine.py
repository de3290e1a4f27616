"""The training engine: Megatron DDP, ``get_megatron_optimizer`` and one pipelined train step.

Everything here is Megatron-Core's own machinery (DDP grad buffers, mixed-precision optimizer,
``get_forward_backward_func`` schedules); this module only wires it up for a Llama ``GPTModel`` and
reduces the language-model loss the way Megatron-LM does: summed token losses divided by the
number of loss tokens across microbatches and data-parallel ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters (Megatron-LM's flag names and defaults)."""

    lr: float = 3e-4
    min_lr: float = 0.0
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
    attention_mask: torch.Tensor | None = None
    """``[b, 1, s, s]``, True where blocked (packed examples); None: plain causal."""


def wrap_ddp(model: torch.nn.Module, optim: OptimConfig):
    """Megatron DDP: contiguous fp32 grad buffers, reduced over the data-parallel group."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=optim.use_distributed_optimizer,
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_config, module=model)


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
    losses = output_tensor.float().view(-1)
    mask = loss_mask.view(-1).float()
    loss = torch.sum(losses * mask)
    num_tokens = mask.sum().to(torch.int)
    report = torch.cat([loss.detach().view(1), num_tokens.float().view(1)])
    return loss, num_tokens, {"lm loss": report}


def _microbatches(batch: Batch, micro_batch_size: int):
    for start in range(0, batch.tokens.shape[0], micro_batch_size):
        sl = slice(start, start + micro_batch_size)
        mask = None if batch.attention_mask is None else batch.attention_mask[sl]
        yield Batch(
            batch.tokens[sl], batch.labels[sl], batch.loss_mask[sl], batch.position_ids[sl], mask
        )


def _run_schedule(model_chunks: list, batch: Batch, micro_batch_size: int, forward_only: bool):
    """Run the pipeline schedule; returns the mean token loss (same value on every rank)."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def step(data_iterator, model):
        mb = next(data_iterator)
        output = model(mb.tokens, mb.position_ids, mb.attention_mask, labels=mb.labels)
        return output, lambda out: _loss_func(mb.loss_mask, out)

    num_microbatches = batch.tokens.shape[0] // micro_batch_size
    reports = get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=_microbatches(batch, micro_batch_size),
        model=model_chunks,
        num_microbatches=num_microbatches,
        seq_length=batch.tokens.shape[1],
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    totals = torch.zeros(2, dtype=torch.float64)
    if parallel_state.is_pipeline_last_stage():
        for report in reports:
            totals += report["lm loss"].double()
    # sum over data-parallel replicas, then share the last stage's value along the pipeline
    dist.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    dist.all_reduce(totals, group=parallel_state.get_pipeline_model_parallel_group())
    return float(totals[0] / totals[1].clamp(min=1))


def train_step(
    model_chunks: list,
    optimizer,
    batch: Batch,
    micro_batch_size: int,
    after_grad_sync: Callable[[torch.nn.Module], None] | None = None,
) -> dict:
    """Forward, backward, DP grad reduce, clip and one optimizer update.

    ``after_grad_sync(chunk)`` may edit the reduced gradients (row masks) before the update."""
    for chunk in model_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss = _run_schedule(model_chunks, batch, micro_batch_size, forward_only=False)
    for chunk in model_chunks:
        chunk.finish_grad_sync()
        if after_grad_sync is not None:
            after_grad_sync(chunk.module)
    update_ok, grad_norm, _ = optimizer.step()
    return {"loss": loss, "grad_norm": grad_norm, "skipped": not update_ok}


def eval_loss(model_chunks: list, batch: Batch, micro_batch_size: int) -> float:
    """Mean token loss without gradients."""
    for chunk in model_chunks:
        chunk.eval()
    with torch.no_grad():
        loss = _run_schedule(model_chunks, batch, micro_batch_size, forward_only=True)
    for chunk in model_chunks:
        chunk.train()
    return loss
