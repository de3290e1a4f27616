"""User-facing errors: bad input gets one clear line, never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Input the user can fix (missing file, unsupported shape, bad flag); printed as one line."""


STOPPED_EARLY = 3
"""Exit status of a run stopped before ``--train-iters`` (signal, ``--exit-duration-in-mins``,
``--exit-interval``) with its checkpoint published: the same command resumes it, and
``pretrain.sbatch`` requeues itself on it. 0 means complete, 2 bad input or a NaN stop."""


class StoppedEarly(Exception):
    """A training run ended before its last iteration, its checkpoint (if any) published."""


def run_cli(main: Callable[[], T]) -> Callable[[], T]:
    """Wrap a tool's ``main`` so a ``UserError`` prints ``error: <message>`` and exits with 2,
    and :class:`StoppedEarly` prints ``stopped: <message>`` and exits with :data:`STOPPED_EARLY`."""

    @functools.wraps(main)
    def wrapper() -> T:
        try:
            return main()
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except StoppedEarly as exc:
            print(f"stopped: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(STOPPED_EARLY) from None

    return wrapper


# (category, message, module) of the warnings known to be noise here, each matched by all three
# (regular expressions from the start); every other warning is shown as Python shows it
KNOWN_NOISE = (
    # Megatron-Core's optional GPU extras, absent on a CPU or a TE-less machine
    (UserWarning, r"(Transformer Engine and )?Apex (is|are) not installed", r"megatron\.core\."),
    # pad = EOD on purpose: the loss mask, not the id, keeps padding out of the loss
    (UserWarning, r"The pad token id in the tokenizer collides", r"megatron\.core\.datasets\."),
    # Megatron-Core's own default (cuda_graph_scope), not a flag of ours
    (UserWarning, r"full scope is deprecated", r"megatron\.core\.transformer\."),
    # torch_dist checkpoints are Megatron-Core's ShardedTensor format and its load calls
    (FutureWarning, r"Please use DTensor instead", r"torch\.distributed\.checkpoint\."),
    (FutureWarning, r"`load_state_dict` is deprecated", r"megatron\.core\.dist_checkpointing\."),
)


def quiet_library_warnings() -> None:
    """Hide the :data:`KNOWN_NOISE` warnings of Megatron-Core and torch, and only those."""
    import warnings

    for category, message, module in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message, category, module)
