#!/usr/bin/env python
"""Train a KenLM n-gram model (KenLM's own lmplz) on clean reference text, CCNet style.

  python tools/train_kenlm.py --input reference.jsonl --out lm/ko --order 5

Writes ``OUT.bin`` (or ``.arpa``), ``OUT.sp.model`` (the SentencePiece model used to tokenise) and
``OUT.json``; give ``OUT.bin`` to ``preprocess_corpus.py --kenlm-model``. Needs KenLM's ``lmplz``,
built once by ``make kenlm`` (``tools/build_kenlm.py``).
"""

import argparse
from itertools import islice

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--input", required=True, help="reference corpus: JSONL (.gz/.zst), Parquet or text folder"
    )
    p.add_argument("--out", required=True, help="output prefix")
    p.add_argument("--text-key", default="text", help="field holding the text")
    p.add_argument("--order", type=int, default=5, help="n-gram order")
    p.add_argument(
        "--vocab-size", type=int, default=8000, help="SentencePiece vocabulary (upper bound)"
    )
    p.add_argument("--max-docs", type=int, help="use at most this many documents")
    p.add_argument("--memory", default="20%", help="lmplz -S memory budget")
    p.add_argument(
        "--arpa", action="store_true", help="keep the ARPA text model, skip build_binary"
    )
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.data.kenlm import train
    from motif_megatron.data.readers import Document, iter_documents

    docs = islice(iter_documents(args.input, args.text_key), args.max_docs)
    texts = [d.text for d in docs if isinstance(d, Document)]
    model = train(texts, args.out, args.order, args.vocab_size, args.memory, binary=not args.arpa)
    print(f"wrote KenLM model {model} from {len(texts)} documents")


if __name__ == "__main__":
    main()
