"""The training engine: Megatron DDP, ``get_megatron_optimizer`` and one pipelined train step
on the model's one schedule path (``model/schedule.py``).

Everything here is Megatron-Core's own machinery (DDP grad buffers, mixed-precision optimizer,
``get_forward_backward_func`` schedules, ``finalize_model_grads``); this module only wires it up
for a Llama ``GPTModel`` and reduces the loss the way Megatron-LM does with
``--calculate-per-token-loss``: summed token losses divided by the number of loss tokens of the
whole global batch (all microbatches and data-parallel ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from motif_megatron.model.schedule import forward_only, lm_objective, reduce_reports, run_schedule


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


@dataclass(frozen=True)
class Overlap:
    """Megatron-LM's communication overlap: DP grad reduce during backward, param all-gather
    (distributed optimizer) during forward."""

    grad_reduce: bool = False
    param_gather: bool = False


def wrap_ddp(chunks: list, optim: OptimConfig, overlap: Overlap = Overlap()) -> list:
    """Megatron DDP around each model chunk (contiguous fp32 grad buffers over the
    data-parallel group), with the model config pointed at Megatron-Core's
    ``finalize_model_grads``: after the schedule's backward it reduces the gradients over DP, the
    tied word embedding between the first and last pipeline stages and norms under sequence
    parallel, then divides by the global batch's loss tokens."""
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
    # as megatron/training/training.py: the later chunks of the interleaved schedule keep one
    # bucket each, reduced as their backward ends
    ddps = [
        DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0
        )
        for i, chunk in enumerate(chunks)
    ]
    config = chunks[0].config  # the schedule reads the first chunk's
    config.finalize_model_grads_func = finalize_model_grads
    # with overlap the schedule defers and launches the bucket reductions itself
    no_sync = [d.no_sync for d in ddps] if overlap.grad_reduce else None
    grad_sync = [d.start_grad_sync for d in ddps] if overlap.grad_reduce else None
    config.no_sync_func = no_sync[0] if no_sync and len(ddps) == 1 else no_sync
    config.grad_sync_func = grad_sync[0] if grad_sync and len(ddps) == 1 else grad_sync
    return ddps


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


@contextlib.contextmanager
def timed(timers, name: str):
    """Megatron-LM's ``timers(name).start()`` ... ``.stop()`` (each synchronizes the device)."""
    if timers is None:
        yield
        return
    timers(name, log_level=0).start()
    try:
        yield
    finally:
        timers(name).stop()


def train_step(
    model_chunks: list,
    optimizer,
    batch,
    micro_batch_size: int,
    after_grad_sync: Callable[[int, torch.nn.Module], None] | None = None,
    objective=lm_objective,
    timers=None,
) -> dict:
    """Forward, backward, ``finalize_model_grads`` (in the schedule), clip and one update.

    ``after_grad_sync(i, chunk)`` may edit chunk ``i``'s reduced gradients (row masks) before
    the update. ``timers`` (Megatron-Core's ``Timers``) times ``forward-backward`` and
    ``optimizer`` as Megatron-LM's ``train_step`` does.
    Returns ``loss`` (the objective's first report), ``grad_norm``, ``skipped`` and ``reports``."""
    with timed(timers, "forward-backward"):
        for chunk in model_chunks:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        schedule = run_schedule(model_chunks, batch, micro_batch_size, False, objective)
        reports = reduce_reports(schedule)
    with timed(timers, "optimizer"):
        if after_grad_sync is not None:
            for i, chunk in enumerate(model_chunks):
                after_grad_sync(i, chunk.module)
        update_ok, grad_norm, _ = optimizer.step()
    if grad_norm is None and update_ok:  # --clip-grad 0: the norm is still reported and checked
        grad_norm = optimizer.get_grad_norm()
    loss = next(iter(reports.values()))
    return {"loss": loss, "grad_norm": grad_norm, "skipped": not update_ok, "reports": reports}


def eval_loss(model_chunks: list, batch, micro_batch_size: int, objective=lm_objective) -> float:
    """The objective's first report (mean token loss for LM) without gradients."""
    reports = forward_only(model_chunks, batch, micro_batch_size, objective)
    return next(iter(reduce_reports(reports).values()))
