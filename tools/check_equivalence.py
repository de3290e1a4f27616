#!/usr/bin/env python
"""Check that a Megatron checkpoint computes the same logits as an HF model or another checkpoint.

  torchrun --nproc_per_node=2 tools/check_equivalence.py --hf-dir HF --load CKPT --tp 2
  torchrun --nproc_per_node=2 tools/check_equivalence.py --load BASE --load-b GROWN --pp 2 --atol 1e-5
  python tools/check_equivalence.py --load BASE --load-b WIDE1 WIDE2 WIDE3   # several in one launch

Runs both on one seeded token batch and prints ``max_abs_diff=<float>`` as the last line (the
largest over every --load-b, each also on a line of its own); exits 1 when it exceeds --atol.
Logits are compared over the vocabulary both models share.
"""

import argparse
import sys

from motif_megatron.errors import quiet_library_warnings, run_cli


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    other = parser.add_mutually_exclusive_group(required=True)
    other.add_argument("--hf-dir", help="HF model directory to compare against")
    other.add_argument(
        "--load-b", nargs="+", help="Megatron checkpoint(s) to compare against, one by one"
    )
    parser.add_argument("--load", required=True, help="Megatron checkpoint to check")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size to run at")
    parser.add_argument("--pp", type=int, default=1, help="pipeline-parallel size to run at")
    parser.add_argument(
        "--atol", type=float, default=1e-4, help="largest allowed |logit difference|"
    )
    parser.add_argument("--batch-size", type=int, default=2, help="sequences in the token batch")
    parser.add_argument("--seq-length", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the random token batch")
    parser.add_argument(
        "--spec",
        choices=["auto", "te", "local"],
        default="auto",
        help="layer spec: Transformer Engine, local, or TE when available",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="compute dtype for the Megatron model (fp32 for exact checks)",
    )
    return parser.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    from motif_megatron import parallel
    from motif_megatron.checkpoint.equivalence import compare
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.model.llama import dtype_from_name

    options = BuildOptions(
        tp=args.tp, pp=args.pp, spec=args.spec, params_dtype=dtype_from_name(args.dtype)
    )
    results = {  # label -> result; --hf-dir is one comparison, --load-b one per checkpoint
        load_b or args.hf_dir: compare(
            args.load,
            hf_dir=None if load_b else args.hf_dir,
            load_b=load_b,
            options=options,
            batch=args.batch_size,
            seq=args.seq_length,
            seed=args.seed,
        )
        for load_b in (args.load_b or [None])
    }
    for other, result in results.items():
        within = "within" if result.max_abs_diff <= args.atol else "ABOVE"
        parallel.print_rank0(
            f"{other}: compared {result.vocab_compared} vocabulary logits, "
            f"max_abs_diff={result.max_abs_diff:.6g} ({within} atol={args.atol:g})"
        )
    worst = max(result.max_abs_diff for result in results.values())
    ok = worst <= args.atol
    parallel.print_rank0(f"max_abs_diff={worst:.6g}")
    parallel.shutdown()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
