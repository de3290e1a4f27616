#!/usr/bin/env python
"""Expansion time of the 128k Llama-3 tokenizer with ~10k new tokens, and encode throughput of the
expanded tokenizer relative to the base on the same Korean and English text (same run).

  .venv/bin/python bench/tokenizer_expansion.py [--corpus ../shared/data/ko/libreoffice-help-ko.jsonl]
"""

from __future__ import annotations

import argparse
import json
import lzma
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from motif_megatron.tokenizer.bundled import unpack
from motif_megatron.tokenizer.expand import ExpansionConfig, expand
from motif_megatron.tokenizer.train import train_bpe

ROOT = Path(__file__).resolve().parents[1]


def bundled(name: str) -> list[str]:
    raw = lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes()).decode()
    return [json.loads(line)["text"] for line in raw.split("\n") if line]


def best_encode(tok: Tokenizer, texts: list[str], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tok.encode_batch(texts, add_special_tokens=False)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", help="Korean JSONL (default: the bundled sample)")
    parser.add_argument("--new-tokens", type=int, default=10000)
    args = parser.parse_args()
    ko = (
        [json.loads(line)["text"] for line in Path(args.corpus).read_text().split("\n") if line]
        if args.corpus
        else bundled("ko-libreoffice-help")
    )
    en = bundled("en-python-docs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_dir = unpack("llama3", tmp / "base")
        start = time.perf_counter()
        new = train_bpe(ko, 128256 + 4 * args.new_tokens, base_dir)
        trained = time.perf_counter() - start
        new_dir = tmp / "new"
        new_dir.mkdir()
        new.save(str(new_dir / "tokenizer.json"))
        start = time.perf_counter()
        summary = expand(
            base_dir,
            new_dir,
            ko,
            tmp / "expanded",
            ExpansionConfig(min_count=2, min_doc_freq=1, max_new_tokens=args.new_tokens),
        )
        expansion = time.perf_counter() - start
        base = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        expanded = Tokenizer.from_file(str(tmp / "expanded/tokenizer.json"))
        print(
            f"trained a {new.get_vocab_size()}-token BPE in {trained:.1f}s; expansion added "
            f"{summary['added']} tokens ({summary['selected']} selected) in {expansion:.1f}s "
            f"(target < 60s)"
        )
        for name, texts in (("ko", ko), ("en", en)):
            b, e = best_encode(base, texts), best_encode(expanded, texts)
            print(
                f"{name}: encode throughput expanded/base {b / e:.2f}x "
                f"({sum(map(len, texts)) / e / 1e6:.1f} M chars/s expanded)"
            )


if __name__ == "__main__":
    main()
