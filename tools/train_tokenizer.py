#!/usr/bin/env python
"""Train a byte-level BPE tokenizer on a sample of a corpus (for vocabulary expansion).

  python tools/train_tokenizer.py --input ko_kept.jsonl --vocab-size 40000 --out tok/ko \
      --base examples/llama3_tokenizer --sample-chars 200000000

Uses the base tokenizer's pre-tokenizer (Llama-3's when --base is absent). Deterministic for a
given --seed.
"""

import argparse

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--input",
        required=True,
        help="a JSONL (.gz/.zst) or Parquet file, a quoted glob or a folder of them (streamed)",
    )
    p.add_argument(
        "--vocab-size", type=int, required=True, help="vocabulary size of the new tokenizer"
    )
    p.add_argument("--out", required=True, help="output HF tokenizer directory")
    p.add_argument("--base", help="base HF tokenizer directory whose pre-tokenizer to reuse")
    p.add_argument("--text-key", default="text", help="field holding the text")
    p.add_argument(
        "--sample-docs", type=int, help="train on a seeded sample of at most this many documents"
    )
    p.add_argument(
        "--sample-chars", type=int, help="train on a seeded sample of about this many characters"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    return p.parse_args()


def _counted(texts, stats: dict):
    for text in texts:
        stats["documents"] += 1
        stats["characters"] += len(text)
        yield text


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.data.readers import corpus_texts
    from motif_megatron.tokenizer.train import sample_texts, save, train_bpe

    texts = corpus_texts(args.input, args.text_key)
    if args.sample_docs is None and args.sample_chars is None:  # every document, streamed
        stats = {"documents": 0, "characters": 0}
        sample = _counted(texts, stats)
    else:
        sample = sample_texts(texts, args.sample_docs, args.sample_chars, args.seed)
        stats = {"documents": len(sample), "characters": sum(map(len, sample))}
    tokenizer = train_bpe(sample, args.vocab_size, args.base)
    save(
        tokenizer,
        args.out,
        {
            "input": args.input,
            **stats,
            "vocab_size": args.vocab_size,
            "seed": args.seed,
            "base": args.base,
        },
    )
    print(
        f"wrote {args.out}: {tokenizer.get_vocab_size()} tokens from {stats['documents']} documents"
    )


if __name__ == "__main__":
    main()
