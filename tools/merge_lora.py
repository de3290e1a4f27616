#!/usr/bin/env python
"""Merge a LoRA checkpoint's adapters into its weights: a plain checkpoint, streamed.

  python tools/merge_lora.py --load RUN --save MERGED

A LoRA run saves each adapted layer's base once with its adapters beside it; every tool
(``convert_hf.py export``, ``evaluate.py``, ``expand_checkpoint.py``, the next training stage)
already reads the merged ``W + (alpha / r) B A``. This writes that model as a checkpoint of its
own, one tensor at a time, loadable at any TP/PP.
"""

import argparse

from motif_megatron.errors import quiet_library_warnings, run_cli
from motif_megatron.memory import return_freed_memory


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", required=True, help="LoRA checkpoint root (or iteration folder)")
    p.add_argument("--save", required=True, help="merged checkpoint root to write")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    return_freed_memory()  # streamed: keep peak RSS near the largest tensor
    from motif_megatron.growth.transform import merge_adapters

    summary = merge_adapters(args.load, args.save)
    print(
        f"wrote {args.save}: {summary['layers']} layers with the adapters merged; "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB"
    )


if __name__ == "__main__":
    main()
