#!/usr/bin/env python
"""Chat Vector: add an instruct model's ``chat - base`` weights to an adapted checkpoint.

  python tools/chat_vector.py --base hf/llama3-8b --chat hf/llama3-8b-instruct \
      --target runs/ko-cpt --out runs/ko-chat [--scale 1.0]

``--base`` and ``--chat`` are HF models of the same shape; ``--target`` is a Megatron checkpoint,
possibly grown from that base: LlamaPro blocks take no delta (each original layer takes its own),
MSG-grown tensors take it on their old slice, an expanded vocabulary on its old rows. Streamed
tensor by tensor; a shape that cannot be mapped stops before anything is written.
"""

import argparse

from motif_megatron.errors import quiet_library_warnings, run_cli
from motif_megatron.memory import return_freed_memory


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="HF directory of the base (pre-chat) model")
    p.add_argument("--chat", required=True, help="HF directory of its chat/instruct model")
    p.add_argument("--target", required=True, help="Megatron checkpoint to add the vector to")
    p.add_argument("--out", required=True, help="checkpoint root to write")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier of chat - base")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    return_freed_memory()
    from motif_megatron.growth.chat_vector import apply

    summary = apply(args.base, args.chat, args.target, args.out, args.scale)
    print(
        f"wrote {args.out}: {args.scale} x (chat - base) added to {summary['layers']} layers "
        f"({summary['skipped_llama_pro']} LlamaPro blocks left as they were"
        f"{'; old slices of the MSG-grown tensors only' if summary['width_grown'] else ''})"
    )


if __name__ == "__main__":
    main()
