#!/usr/bin/env python
"""Megatron ``--data-path`` weights for a target token ratio across groups of shards.

  python tools/mix_data.py --group ko 9 data/ko_text_document --group en 1 data/en_text_document \
      --train-tokens 1000000000 --output blend.json --data-args-path blend.txt

Prints the ``--data-path`` value (``w1 p1 w2 p2 ...``) and, per shard, its tokens and how many epochs
``--train-tokens`` would take over it; ``--output`` saves the same as JSON, ``--data-args-path``
the value alone for the trainer's ``--data-args-path`` (so a recipe's train step reads its blend).
"""

import argparse
import json

from motif_megatron.errors import UserError, run_cli


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--group",
        nargs="+",
        action="append",
        required=True,
        metavar=("NAME RATIO", "PREFIX"),
        help="a group name, its share of tokens, and its shard prefixes",
    )
    parser.add_argument(
        "--train-tokens", type=int, help="planned training tokens (for epoch counts)"
    )
    parser.add_argument("--output", help="write the blend as JSON here")
    parser.add_argument(
        "--data-args-path",
        help="write the --data-path value here (the trainer's --data-args-path, Megatron-LM's)",
    )
    return parser.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.data.blend import blend, data_path

    groups = {}
    for spec in args.group:
        if len(spec) < 3:
            raise UserError(f"--group {' '.join(spec)}: expected NAME RATIO PREFIX [PREFIX ...]")
        try:
            groups[spec[0]] = (float(spec[1]), spec[2:])
        except ValueError:
            raise UserError(f"--group {spec[0]}: ratio {spec[1]!r} is not a number") from None
    entries = blend(groups)
    for e in entries:
        epochs = f", {e.epochs(args.train_tokens):.2f} epochs" if args.train_tokens else ""
        print(f"{e.group}: {e.prefix} {e.tokens} tokens, weight {e.weight:.4f}{epochs}")
    path = data_path(entries)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"data_path": path, "shards": [e.__dict__ for e in entries]}, f, indent=2)
    if args.data_args_path:
        with open(args.data_args_path, "w") as f:
            f.write(" ".join(path) + "\n")
    print("--data-path " + " ".join(path))


if __name__ == "__main__":
    main()
