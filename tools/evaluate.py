#!/usr/bin/env python
"""Perplexity (per reference token, bits per character) and token ratio of one or several
checkpoints on held-out text, per language: evaluation.{json,md,png}.

  python tools/evaluate.py --load base=ckpt/base --load final=ckpt/final \
      --text ko=heldout_ko.jsonl --text en=heldout_en.jsonl --out reports/eval
"""

import argparse
from itertools import islice

from motif_megatron.errors import UserError, quiet_library_warnings, run_cli


def pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in values:
        if "=" not in spec:
            raise UserError(f"{flag} {spec}: expected NAME=PATH")
        name, path = spec.split("=", 1)
        out[name] = path
    return out


@run_cli
def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--load",
        action="append",
        required=True,
        metavar="LABEL=CKPT",
        help="checkpoint (repeatable)",
    )
    p.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="LANG=FILE",
        help="held-out JSONL/Parquet/folder (repeatable)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--reference-tokenizer",
        help="tokenizer whose token count normalises perplexity (default: the first checkpoint's)",
    )
    p.add_argument("--max-docs", type=int, default=100, help="documents per language")
    p.add_argument("--seq-length", type=int, default=256, help="tokens per scored window")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (run under torchrun)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (run under torchrun)")
    args = p.parse_args()
    quiet_library_warnings()
    from motif_megatron import parallel
    from motif_megatron.data.readers import Document, iter_documents
    from motif_megatron.eval.evaluate import evaluate

    texts = {
        lang: [
            d.text
            for d in islice(
                (d for d in iter_documents(path) if isinstance(d, Document)), args.max_docs
            )
        ]
        for lang, path in pairs(args.text, "--text").items()
    }
    try:
        report = evaluate(
            pairs(args.load, "--load"),
            texts,
            args.out,
            args.reference_tokenizer,
            args.seq_length,
            args.tp,
            args.pp,
        )
    finally:
        parallel.shutdown()
    for label, row in report["checkpoints"].items():
        parallel.print_rank0(
            label + ": " + ", ".join(f"{lang} ppl {row[lang]['ppl']:.2f}" for lang in texts)
        )


if __name__ == "__main__":
    main()
