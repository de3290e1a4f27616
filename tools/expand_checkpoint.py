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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", required=True, help="source checkpoint root")
    p.add_argument("--save", required=True, help="grown checkpoint root to write")
    p.add_argument(
        "--depth-add", type=int, help="LlamaPro: add N identity blocks (N divides the layers)"
    )
    p.add_argument(
        "--depth-positions",
        type=int,
        nargs="+",
        help="LlamaPro: insert a copy after each of these original layers instead",
    )
    for flag in (
        "--hidden-size",
        "--ffn-hidden-size",
        "--num-attention-heads",
        "--num-query-groups",
    ):
        p.add_argument(
            flag, type=int, help="Masked Structure Growth width target (not available yet)"
        )
    p.add_argument(
        "--finalize",
        action="store_true",
        help="drop the MSG masks of a width-grown checkpoint trained until m=1",
    )
    p.add_argument("--tokenizer", help="expanded tokenizer directory (with new_tokens.json)")
    p.add_argument(
        "--init",
        default="subword-mean",
        choices=["random", "mean", "mean-resizing", "subword-mean", "first-subword", "decompose"],
        help="initialisation of new vocabulary rows",
    )
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size the result is meant for")
    p.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size the result is meant for"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random initialisations")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    return_freed_memory()  # streamed: keep peak RSS near the largest tensor
    width = (
        args.hidden_size,
        args.ffn_hidden_size,
        args.num_attention_heads,
        args.num_query_groups,
    )
    if not (
        args.depth_add
        or args.depth_positions
        or args.tokenizer
        or args.finalize
        or any(w is not None for w in width)
    ):
        raise UserError(
            "nothing to grow: give --depth-add/--depth-positions, width sizes and/or --tokenizer"
        )
    from motif_megatron.growth.transform import GrowthRequest, describe, grow

    request = GrowthRequest(
        depth_add=args.depth_add,
        depth_positions=tuple(args.depth_positions) if args.depth_positions else None,
        tokenizer=args.tokenizer,
        init=args.init,
        tp=args.tp,
        pp=args.pp,
        seed=args.seed,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        finalize=args.finalize,
    )
    summary = grow(args.load, args.save, request)
    print(
        f"wrote {args.save}: {summary['layers']} layers, vocab {summary['vocab_size']}, "
        f"growth: {describe(summary['growth'])}; peak RSS {summary['peak_rss_mb']:.0f} MB "
        f"(the full record is in {args.save}/motif_model.json)"
    )


if __name__ == "__main__":
    main()
