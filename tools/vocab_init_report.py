#!/usr/bin/env python
"""Compare vocabulary initialisations: KL on old inputs and initial loss with the new tokenizer.

  python tools/vocab_init_report.py --load BASE_CKPT --tokenizer tok/llama3-ko --text ko_heldout.jsonl \
      --out reports/vocab_init

Writes ``vocab_init.{json,md,png}``. The base checkpoint must carry its tokenizer (``tokenizer/``).
"""

import argparse
from itertools import islice

from motif_megatron.errors import quiet_library_warnings, run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--load", required=True, help="base checkpoint root (with tokenizer/)")
    p.add_argument("--tokenizer", required=True, help="expanded tokenizer (with new_tokens.json)")
    p.add_argument("--text", required=True, help="held-out text (JSONL/Parquet/folder)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max-docs", type=int, default=50, help="documents to score")
    p.add_argument("--seq-length", type=int, default=128, help="tokens per scored window")
    p.add_argument("--methods", nargs="+", help="subset of init methods (default: all six)")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    from motif_megatron.data.readers import Document, iter_documents
    from motif_megatron.growth.request import INITS
    from motif_megatron.growth.vocab_report import init_report

    docs = islice((d for d in iter_documents(args.text) if isinstance(d, Document)), args.max_docs)
    report = init_report(
        args.load,
        args.tokenizer,
        [d.text for d in docs],
        args.out,
        tuple(args.methods or INITS),
        args.seq_length,
    )
    for method, row in report["methods"].items():
        print(
            f"{method}: KL {row['kl_old_inputs']:.4g}, initial loss/token {row['loss_per_token']:.3f}"
        )


if __name__ == "__main__":
    main()
