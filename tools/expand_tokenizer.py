#!/usr/bin/env python
"""Add a new tokenizer's frequent Korean tokens to a base byte-level BPE tokenizer (EEVE style).

  python tools/expand_tokenizer.py --base llama3_tok --new tok/ko --corpus ko_kept.jsonl \
      --min-count 25000 --out tok/llama3-ko

Writes an HF tokenizer directory (AutoTokenizer loads it) and ``new_tokens.json``: for every added
token its id, text, corpus count and its pieces under the base tokenizer (used to initialise the
new embedding rows). Old ids, special ids and English tokenisation are unchanged.
"""

import argparse
import time
from pathlib import Path

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--base",
        required=True,
        help="base tokenizer: HF directory (tokenizer.json) or SentencePiece tokenizer.model",
    )
    p.add_argument("--new", required=True, help="tokenizer trained by tools/train_tokenizer.py")
    p.add_argument(
        "--corpus",
        required=True,
        help="corpus for the frequency count (JSONL/Parquet file, quoted glob or folder; streamed)",
    )
    p.add_argument(
        "--sample-docs", type=int, help="count on a seeded sample of at most this many documents"
    )
    p.add_argument(
        "--sample-chars", type=int, help="count on a seeded sample of about this many characters"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--min-count", type=int, default=25000, help="keep tokens produced at least this often"
    )
    p.add_argument("--out", required=True, help="output HF tokenizer directory")
    p.add_argument(
        "--max-new-tokens", type=int, help="cap on selected tokens (most frequent first)"
    )
    p.add_argument(
        "--min-doc-freq",
        type=int,
        default=3,
        help="named-entity heuristic: drop tokens seen in fewer documents",
    )
    p.add_argument("--stop-list", help="file of tokens/words never to add, one per line")
    p.add_argument("--text-key", default="text", help="field holding the text")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.data.readers import corpus_texts
    from motif_megatron.tokenizer.expand import ExpansionConfig, expand, expand_sentencepiece
    from motif_megatron.tokenizer.train import sample_texts

    start = time.time()
    texts = corpus_texts(args.corpus, args.text_key)
    if args.sample_docs is not None or args.sample_chars is not None:
        texts = sample_texts(texts, args.sample_docs, args.sample_chars, args.seed)
    stop = (
        set(Path(args.stop_list).read_text(encoding="utf-8").split()) if args.stop_list else set()
    )
    config = ExpansionConfig(
        min_count=args.min_count,
        max_new_tokens=args.max_new_tokens,
        min_doc_freq=args.min_doc_freq,
        stop_list=stop,
    )
    base = Path(args.base)
    sp_model = base if base.suffix == ".model" else base / "tokenizer.model"
    if not (base / "tokenizer.json").is_file() and sp_model.is_file():  # Llama-2 style base
        summary = expand_sentencepiece(sp_model, args.new, texts, args.out, config)
    else:
        summary = expand(args.base, args.new, texts, args.out, config)
    print(
        f"added {summary['added']} tokens ({summary['selected']} selected, "
        f"{summary['intermediates']} merge intermediates) at ids {summary['first_new_id']}.."
        f"{summary['vocab_size'] - 1}; excluded {summary['excluded']}; {time.time() - start:.1f}s"
    )


if __name__ == "__main__":
    main()
