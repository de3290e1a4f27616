#!/usr/bin/env python
"""tools/preprocess_data.py vs a Megatron-LM-style baseline, whole process, same corpus and tokenizer.

The baseline does what Megatron-LM's ``tools/preprocess_data.py`` does: a ``multiprocessing.Pool``
encoding one document at a time with the HF tokenizer, and ``IndexedDatasetBuilder.add_document``
per document. Ours runs twice: one task in its process (``--workers`` encoder threads), and
``--tasks W --workers W`` on datatrove's local executor (W processes of one thread each, merged).
All run as fresh processes (imports included). Ratio > 1 means ours is faster.

  .venv/bin/python bench/preprocess_data.py [--corpus ../shared/data/ko/libreoffice-help-ko.jsonl]
"""

from __future__ import annotations

import argparse
import lzma
import shutil
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
        w = str(args.workers)
        for corpus in corpora:
            command = [sys.executable, "tools/preprocess_data.py", "--input", str(corpus)]
            command += ["--tokenizer-model", str(tokdir), "--append-eod"]
            ours = timed([*command, "--output-prefix", str(tmp / "ours"), "--workers", w])
            tasks = ["--executor", "local", "--tasks", w, "--workers", w, "--merge"]
            executor = timed([*command, "--output-prefix", str(tmp / "exe"), *tasks])
            baseline = [str(tmp / "baseline.py"), str(corpus), str(tokdir), str(tmp / "base"), w]
            base = timed([sys.executable, *baseline])
            tokens = (tmp / "base.bin").read_bytes()
            same = all(
                (tmp / f"{name}_text_document.bin").read_bytes() == tokens
                for name in ("ours", "exe")
            )
            print(
                f"{corpus.name}: Megatron-style baseline {base:.2f}s; ours one task {ours:.2f}s "
                f"({base / ours:.2f}x), {w} tasks on the local executor {executor:.2f}s "
                f"({base / executor:.2f}x); identical tokens: {same}"
            )
            for name in ("ours", "exe"):
                for path in tmp.glob(f"{name}_*"):
                    shutil.rmtree(path) if path.is_dir() else path.unlink()


if __name__ == "__main__":
    main()
