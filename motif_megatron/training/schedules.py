"""Pure functions and small state machines of the training step: LR, MSG mask ramp, plateau.

Everything here is a function of the iteration (and, for the plateau detector, of the losses it
was shown), so a resumed run recomputes exactly what an uninterrupted one had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


def msg_mask(iteration: int, start: int, ramp_iters: int) -> float:
    """The MSG mask value after ``iteration`` steps: 0 until ``start``, then linear to 1."""
    if ramp_iters <= 0:
        return 1.0
    return min(max((iteration - start) / ramp_iters, 0.0), 1.0)


def build_lr_scheduler(optimizer, lr: float, min_lr: float, warmup: int, decay: int, style: str):
    """Megatron-Core's ``OptimizerParamScheduler``, stepped once per iteration."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    weight_decay = optimizer.param_groups[0]["weight_decay"] if optimizer.param_groups else 0.0
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else lr,
        max_lr=lr,
        min_lr=min(min_lr, lr),
        lr_warmup_steps=warmup,
        lr_decay_steps=max(decay, warmup + 1),
        lr_decay_style=style,
        start_wd=weight_decay,
        end_wd=weight_decay,
        wd_incr_steps=max(decay, 1),
        wd_incr_style="constant",
        wsd_decay_steps=max(decay // 10, 1) if style == "WSD" else None,
        lr_wsd_decay_style="linear" if style == "WSD" else None,
    )


@dataclass
class Plateau:
    """Has the training loss converged? EEVE advances stages on it.

    Watches an exponential moving average of the loss; converged once ``patience`` iterations pass
    without the average improving on its best by more than ``min_delta`` (relative).
    """

    patience: int
    min_delta: float
    smoothing: float
    ema: float | None = None
    best: float | None = None
    since_best: int = 0

    def update(self, loss: float) -> bool:
        """Feed one iteration's loss; True once the loss has plateaued."""
        self.ema = (
            loss if self.ema is None else self.smoothing * self.ema + (1 - self.smoothing) * loss
        )
        if self.best is None or self.ema < self.best * (1 - self.min_delta):
            self.best, self.since_best = self.ema, 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)
