"""When to stop early and save: Megatron-LM's ``--exit-signal-handler`` and
``--exit-duration-in-mins``.

A signal handler only records the signal (the iteration in flight finishes); every iteration the
ranks agree, through one all-reduce, on whether any of them was signalled or ran out of time, so
they all save the same iteration and exit 3 (``errors.STOPPED_EARLY``). SIGTERM is what Slurm
sends on preemption, ``scancel`` and at the time limit; SIGUSR1 is the usual choice for
``sbatch --signal=USR1@SECONDS``. The handlers go in before the heavy imports (:func:`catch`,
called by the entry point) and stay until the last save is published, so a signal during
start-up, checkpoint loading or that save is recorded, never fatal. This module imports torch
only when it checks, so an entry point can install the handlers first.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import signal
import sys
import time
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received: list[int] = []


def _record(signum: int, frame: object) -> None:
    _received.append(signum)


def catch(argv: list[str]) -> None:
    """Install the recording handlers now if ``argv`` asks for ``--exit-signal-handler`` (the
    entry point calls this before importing torch and Megatron). As the interpreter shuts down,
    Python puts its handlers back to the default action, which kills: a signal during that
    teardown (Slurm's time-limit warning just after the last save) would turn a finished run
    into a killed one, so from the exit on the signals are ignored."""
    if "--exit-signal-handler" in argv:
        for sig in SIGNALS:
            signal.signal(sig, _record)
        atexit.register(_ignore_signals)


def _ignore_signals() -> None:
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


PR_SET_PDEATHSIG = 1


def ignore() -> None:
    """Ignore SIGTERM and SIGUSR1 in this process: for a save's long-lived helper processes,
    which Slurm signals along with every other process of the step. Such a helper is killed
    when its rank dies (Linux's parent-death signal): a rank killed before its cleanup would
    otherwise leave it running, holding the step's output open."""
    _ignore_signals()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold SIGTERM and SIGUSR1 in this thread for the block: the helper processes a save
    starts (its writers, a multiprocessing queue's server) inherit the mask, so the signal Slurm
    sends to every process of the step cannot kill them midway; held signals reach this
    process's handlers when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class ExitConditions:
    """Installs the handlers (when asked) for the duration of a ``with`` block."""

    def __init__(self, handle_signals: bool, duration_mins: float | None) -> None:
        self.handle_signals, self.duration_mins = handle_signals, duration_mins
        self.start = time.monotonic()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> ExitConditions:
        if self.handle_signals:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, _record)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def signal(self) -> int | None:
        """The first signal recorded in this process, also before the block began."""
        return _received[0] if _received else None

    @property
    def later(self) -> list[str]:
        """The signals recorded after the first (those that arrived during the final save)."""
        return [signal.Signals(sig).name for sig in _received[1:]]

    def check(self) -> str | None:
        """Why every rank should save and stop now, or None (the same answer on every rank)."""
        import torch
        import torch.distributed as dist

        from motif_megatron import device

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
