#!/usr/bin/env python
"""Post-training on the trainer's engine: ``torchrun ... posttrain_motif.py sft [flags]``.

sft: chat-template SFT with assistant-only loss, packing, NEFTune and a dataset curriculum.
     Every pretrain_motif.py flag applies (parallelism, --lr, --save, --metrics-file, resume),
     plus --sft-data, --neftune-alpha, --chat-template, or a YAML 'curriculum' list.
kto: KTO on desirable/undesirable completions with cached reference log-probs (--kto-data, --beta).
"""

import sys

from motif_megatron.errors import UserError, quiet_library_warnings, run_cli
from motif_megatron.training import preemption

USAGE = "usage: posttrain_motif.py sft|kto [flags] (e.g. posttrain_motif.py sft --help)"


@run_cli
def main() -> None:
    preemption.catch(sys.argv)  # before torch and Megatron load: a signal then is not fatal
    from motif_megatron import parallel
    from motif_megatron.training.arguments import TrainConfig, parse_configs

    if len(sys.argv) < 2 or sys.argv[1] not in ("sft", "kto"):
        if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
            print(f"{USAGE}\n\n{__doc__}")
            return
        raise UserError(USAGE)
    from motif_megatron.posttrain import kto, sft

    method = {"sft": (sft.SFTConfig, sft.run), "kto": (kto.KTOConfig, kto.run)}[sys.argv[1]]
    train, options = parse_configs(sys.argv[2:], __doc__, (TrainConfig, method[0]))
    quiet_library_warnings()
    try:
        method[1](train, options)
    finally:
        parallel.shutdown()


if __name__ == "__main__":  # dist_checkpointing spawns helpers that re-import __main__
    main()
