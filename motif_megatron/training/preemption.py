"""When to stop early and save: Megatron-LM's ``--exit-signal-handler`` and
``--exit-duration-in-mins``.

A signal handler only sets a flag (the iteration in flight finishes); every iteration the ranks
agree, through one all-reduce, on whether any of them was signalled or ran out of time, so they all
save the same iteration and exit 0. SIGTERM is what Slurm sends on preemption, ``scancel`` and at
the time limit; SIGUSR1 is the usual choice for ``sbatch --signal=USR1@SECONDS``.
"""

from __future__ import annotations

import signal
import time

import torch
import torch.distributed as dist

from motif_megatron import device

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class ExitConditions:
    """Installs the handlers (when asked) for the duration of a ``with`` block."""

    def __init__(self, handle_signals: bool, duration_mins: float | None) -> None:
        self.handle_signals, self.duration_mins = handle_signals, duration_mins
        self.signal: int | None = None
        self.start = time.monotonic()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> ExitConditions:
        if self.handle_signals:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signal = self.signal or signum

    def check(self) -> str | None:
        """Why every rank should save and stop now, or None (the same answer on every rank)."""
        if not self.handle_signals and self.duration_mins is None:
            return None
        elapsed = (time.monotonic() - self.start) / 60
        out_of_time = self.duration_mins is not None and elapsed > self.duration_mins
        flags = device.to_device(
            torch.tensor([self.signal or 0, int(out_of_time)], dtype=torch.int)
        )
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0]:
            return f"received {signal.Signals(int(flags[0])).name}"
        if flags[1]:
            return f"--exit-duration-in-mins {self.duration_mins:g} reached"
        return None
