#!/usr/bin/env python
"""Grow a Megatron checkpoint: LlamaPro depth and vocabulary expansion, in one streamed pass.

  python tools/expand_checkpoint.py --load A --save B --depth-add 2 --tp 1 --pp 1
  python tools/expand_checkpoint.py --load A --save B --tokenizer tok/llama3-ko --init subword-mean

Depth copies every (L/N)-th block with zeroed output projections (an exact identity) and records
the new block indices for the trainer's ``llama-pro`` stage. Vocabulary growth keeps old rows
bit-identical and initialises new ones by --init. Check the result with
``tools/check_equivalence.py --load A --load-b B``.
"""

import argparse

from motif_megatron.errors import UserError, quiet_library_warnings, run_cli
from motif_megatron.memory import return_freed_memory


def parse_args() -> argparse.Namespace:
    from motif_megatron.cli import add_fields
    from motif_megatron.growth.request import GrowthRequest
    from motif_megatron.training.arguments import TrainConfig

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", required=True, help="source checkpoint root")
    p.add_argument("--save", required=True, help="grown checkpoint root to write")
    add_fields(p, GrowthRequest)
    add_fields(p, TrainConfig, only=("allow_partial",))
    return p.parse_args()


@run_cli
def main() -> None:
    from motif_megatron.cli import values
    from motif_megatron.growth.request import GrowthRequest

    args = parse_args()
    quiet_library_warnings()
    return_freed_memory()  # streamed: keep peak RSS near the largest tensor
    request = GrowthRequest(**values(args, GrowthRequest))
    if not request.grows():
        raise UserError(
            "nothing to grow: give --depth-add/--depth-positions, width sizes and/or --tokenizer"
        )
    from motif_megatron.growth.transform import describe, grow

    summary = grow(args.load, args.save, request, getattr(args, "allow_partial", False))
    print(
        f"wrote {args.save}: {summary['layers']} layers, vocab {summary['vocab_size']}, "
        f"growth: {describe(summary['growth'])}; peak RSS {summary['peak_rss_mb']:.0f} MB "
        f"(the full record is in {args.save}/motif_model.json)"
    )


if __name__ == "__main__":
    main()
