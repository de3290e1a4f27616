#!/usr/bin/env python
"""tools/preprocess_data.py vs a Megatron-LM-style baseline, whole process, same corpus and tokenizer.

The baseline does what Megatron-LM's ``tools/preprocess_data.py`` does: a ``multiprocessing.Pool``
encoding one document at a time with the HF tokenizer, and ``IndexedDatasetBuilder.add_document``
per document. Both run as fresh processes (imports included). Ratio > 1 means ours is faster.

  .venv/bin/python bench/preprocess_data.py [--corpus ../shared/data/ko/libreoffice-help-ko.jsonl]
"""

from __future__ import annotations

import argparse
import lzma
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = r"""
import json, sys, multiprocessing
import numpy as np, torch
from transformers import AutoTokenizer
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

tok = None
def init(path):
    global tok
    tok = AutoTokenizer.from_pretrained(path)
def encode(line):
    ids = tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
    return ids + [tok.eos_token_id]

if __name__ == "__main__":
    src, tokdir, out, workers = sys.argv[1:5]
    with open(src) as f, multiprocessing.Pool(int(workers), init, (tokdir,)) as pool:
        builder = IndexedDatasetBuilder(out + ".bin", dtype=np.int32)
        for ids in pool.imap(encode, f, 32):
            builder.add_document(torch.tensor(ids), [len(ids)])
        builder.finalize(out + ".idx")
"""


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", action="append", help="JSONL corpora (default: the bundled ones)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from motif_megatron.tokenizer.bundled import unpack

        tokdir = unpack("llama3", tmp / "tok")
        corpora = [Path(c) for c in args.corpus or []]
        if not corpora:
            for name in ("ko-libreoffice-help", "en-python-docs"):
                path = tmp / f"{name}.jsonl"
                path.write_bytes(
                    lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes())
                )
                corpora.append(path)
        (tmp / "baseline.py").write_text(BASELINE)
        for corpus in corpora:
            ours = timed(
                [
                    sys.executable,
                    "tools/preprocess_data.py",
                    "--input",
                    str(corpus),
                    "--output-prefix",
                    str(tmp / "ours"),
                    "--tokenizer-model",
                    str(tokdir),
                    "--append-eod",
                    "--workers",
                    str(args.workers),
                ]
            )
            base = timed(
                [
                    sys.executable,
                    str(tmp / "baseline.py"),
                    str(corpus),
                    str(tokdir),
                    str(tmp / "base"),
                    str(args.workers),
                ]
            )
            same = (tmp / "ours_text_document.bin").read_bytes() == (tmp / "base.bin").read_bytes()
            print(
                f"{corpus.name}: ours {ours:.2f}s, Megatron-style baseline {base:.2f}s, "
                f"ratio {base / ours:.2f}x (target >= 2x), identical tokens: {same}"
            )


if __name__ == "__main__":
    main()
