#!/usr/bin/env python
"""Continual pretraining on Megatron-Core: ``torchrun --nproc_per_node=K pretrain_motif.py ...``.

Flags keep Megatron-LM's names (``--tensor-model-parallel-size``, ``--micro-batch-size``,
``--data-path 0.9 ko 0.1 en``, ``--train-iters``, ``--save-interval`` ...); ``--config run.yaml``
takes the same keys, plus a ``stages`` list. A run resumes from its ``--save`` root.
"""

import sys

from motif_megatron.errors import quiet_library_warnings, run_cli
from motif_megatron.training import preemption


@run_cli
def main() -> None:
    preemption.catch(sys.argv)  # before torch and Megatron load: a signal then is not fatal
    from motif_megatron import parallel
    from motif_megatron.training.arguments import parse_args
    from motif_megatron.training.loop import Trainer

    config = parse_args(description=__doc__)
    quiet_library_warnings()
    try:
        Trainer(config).train()
    finally:
        parallel.shutdown()


if __name__ == "__main__":  # dist_checkpointing spawns helpers that re-import __main__
    main()
