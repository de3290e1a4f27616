#!/usr/bin/env python
"""Tokenise a corpus into Megatron indexed shards (``P_text_document.bin/.idx``).

  python tools/preprocess_data.py --input ko.jsonl --output-prefix data/ko \
      --tokenizer-model tokenizer_dir --json-keys text --append-eod --workers 2
  python tools/preprocess_data.py --input 'out/ko/kept/*.jsonl' --output-prefix data/ko ...

Document i holds exactly the tokenizer's ids for line i's text (no BOS) followed by EOD. Malformed
lines are skipped and listed in ``P_text_document.rejects.jsonl``; a summary lands in
``P_text_document.json``. A killed run resumes from its last finished partition. A folder or glob
of files (or ``--tasks N``) gives one shard per task, ``P_00000_text_document`` ..., and
``P_text_document.blend``: the ``--data-path`` value weighting them by tokens (``--merge``: one
merged ``P_text_document`` instead).
"""

import argparse
import os

from motif_megatron.errors import UserError, run_cli


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a JSONL (.gz/.zst) or Parquet file, a quoted glob or a folder of them, or a text folder",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        help="input-ordered shares, one shard each (default: one per input file)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge the tasks' shards into one (Megatron's merge)"
    )
    parser.add_argument("--output-prefix", required=True, help="output path prefix")
    parser.add_argument(
        "--tokenizer-model",
        required=True,
        help="HF tokenizer directory / tokenizer.json, or a SentencePiece .model",
    )
    parser.add_argument(
        "--json-keys", nargs="+", default=["text"], help="fields to tokenise, one shard each"
    )
    parser.add_argument(
        "--append-eod", action="store_true", help="append the EOD token to each document"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="encoder threads")
    parser.add_argument(
        "--partition-docs",
        type=int,
        default=20000,
        help="documents per partition (the unit of resume)",
    )
    parser.add_argument("--max-docs", type=int, help="stop after this many input lines")
    parser.add_argument(
        "--backend",
        choices=["auto", "gigatoken", "reference"],
        default="auto",
        help="gigatoken (fast, identical ids) or the reference HF/SentencePiece encoder",
    )
    return parser.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    # the Rust encoders size their thread pools from these at first use
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    os.environ["GIGATOKEN_NUM_THREADS"] = str(args.workers)
    from motif_megatron.data.tokenize import tokenize_corpus

    if args.tasks is not None and args.tasks < 1:
        raise UserError("--tasks must be at least 1")
    for key in args.json_keys:
        stats = tokenize_corpus(
            args.input,
            args.output_prefix,
            args.tokenizer_model,
            key,
            args.append_eod,
            args.partition_docs,
            args.max_docs,
            args.backend,
            tasks=args.tasks,
            merge=args.merge,
        )
        print(
            f"{args.output_prefix}_{key}_document: {stats.documents} documents, "
            f"{stats.tokens} tokens, {stats.rejected} rejected lines, {stats.seconds:.2f}s"
        )


if __name__ == "__main__":
    main()
