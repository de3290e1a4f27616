#!/usr/bin/env python
"""The demo recipe's own small steps (examples/recipes/demo.yaml): what a real run gets elsewhere.

  python examples/demo_steps.py tokenizer --out DIR          # the bundled Llama-3 tokenizer
  python examples/demo_steps.py random-base --preset tiny --tokenizer DIR --out DIR
  python examples/demo_steps.py split --input CORPUS/kept --out DIR --share 0.1

``tokenizer`` stands in for a downloaded base tokenizer, ``random-base`` for the untrained model
the demo pretrains on English (no weights can be downloaded), and ``split`` keeps the last
``share`` of the documents (at least 10; ``--share 1``: all, for a domain no step trains on) out
of training and halves it: ``DIR/train.jsonl``, ``DIR/dev.jsonl`` (what design choices look at)
and ``DIR/test.jsonl`` (read only by the final evaluation).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("tokenizer", help="unpack the bundled Llama-3 tokenizer").add_argument(
        "--out", required=True
    )
    base = sub.add_parser("random-base", help="a random HF Llama with the tokenizer's files")
    base.add_argument("--preset", default="tiny", help="motif_megatron.model.presets name")
    base.add_argument("--tokenizer", required=True, help="HF tokenizer directory")
    base.add_argument("--seed", type=int, default=0)
    base.add_argument("--out", required=True)
    split = sub.add_parser("split", help="hold out the last share of the documents")
    split.add_argument("--input", required=True, help="JSONL file, folder or quoted glob")
    split.add_argument("--share", type=float, default=0.1, help="held-out share (dev + test)")
    split.add_argument("--out", required=True)
    return p.parse_args()


def split(source: str, out: Path, share: float) -> None:
    import json

    from motif_megatron.data.readers import Document, input_files, iter_documents

    lines = [
        json.dumps({"id": d.id, "text": d.text}, ensure_ascii=False) + "\n"
        for path in input_files(source)
        for d in iter_documents(path)
        if isinstance(d, Document)
    ]
    cut = len(lines) - min(len(lines), max(10, round(len(lines) * share)))
    half = cut + (len(lines) - cut) // 2
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", lines[:cut]), ("dev", lines[cut:half]), ("test", lines[half:])):
        (out / f"{name}.jsonl").write_text("".join(part), encoding="utf-8")
    print(f"{cut} training, {half - cut} dev and {len(lines) - half} test documents in {out}")


@run_cli
def main() -> None:
    args = parse_args()
    if args.command == "tokenizer":
        from motif_megatron.tokenizer.bundled import unpack

        print(f"unpacked the Llama-3 tokenizer to {unpack('llama3', args.out)}")
    elif args.command == "random-base":
        from motif_megatron.model.presets import random_hf_model

        path = random_hf_model(args.out, args.preset, args.tokenizer, seed=args.seed)
        print(f"wrote a random {args.preset} Llama to {path}")
    else:
        split(args.input, Path(args.out), args.share)


if __name__ == "__main__":
    main()
