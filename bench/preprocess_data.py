#!/usr/bin/env python
"""tools/preprocess_data.py vs Megatron-LM's, whole process, same corpus and tokenizer.

References, timed in the same run: Megatron-LM's own ``tools/preprocess_data.py`` from a checkout
(``--megatron-lm DIR``; its ``megatron.training`` imports triton, so ``pip install triton`` or put it
on ``PYTHONPATH``), and always a Megatron-LM-style script that needs nothing more (the same
``multiprocessing.Pool`` encoding one document at a time with the HF tokenizer and
``IndexedDatasetBuilder.add_document``, without Megatron-LM's ~4 s of ``megatron.training`` imports).
Ours runs twice: one task in its process (``--workers`` encoder threads), and ``--tasks W --workers
W --merge`` on datatrove's local executor (W processes of one thread each). Every run is a fresh
process (imports included), alternated, ``--repeats`` times; medians are reported. Ratio > 1 means
ours is faster. Every output is compared byte for byte with the first reference's.

  .venv/bin/python bench/preprocess_data.py --corpus ../shared/data/ko/libreoffice-help-ko.jsonl \
      --megatron-lm ~/Megatron-LM
"""

from __future__ import annotations

import argparse
import lzma
import os
import shutil
import statistics
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
        builder = IndexedDatasetBuilder(out + "_text_document.bin", dtype=np.int32)
        for ids in pool.imap(encode, f, 32):
            builder.add_document(torch.tensor(ids), [len(ids)])
        builder.finalize(out + "_text_document.idx")
"""


def timed(cmd: list[str], env: dict | None) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def commands(corpus: Path, tokdir: Path, script: Path, out: Path, args) -> dict:
    """NAME: (command line writing ``out/NAME_text_document.{bin,idx}``, environment or None)."""
    w = str(args.workers)
    ours = [sys.executable, "tools/preprocess_data.py", "--input", str(corpus)]
    ours += ["--tokenizer-model", str(tokdir), "--append-eod", "--output-prefix"]
    runs = {}
    if args.megatron_lm:
        mlm = Path(args.megatron_lm).resolve()
        path = os.pathsep.join(filter(None, [str(mlm), os.environ.get("PYTHONPATH")]))
        command = [sys.executable, str(mlm / "tools/preprocess_data.py"), "--input", str(corpus)]
        command += ["--output-prefix", str(out / "Megatron-LM"), "--tokenizer-type"]
        command += ["HuggingFaceTokenizer", "--tokenizer-model", str(tokdir), "--append-eod"]
        runs["Megatron-LM"] = ([*command, "--workers", w], os.environ | {"PYTHONPATH": path})
    style = str(out / "Megatron-LM-style")
    runs["Megatron-LM-style"] = (
        [sys.executable, str(script), str(corpus), str(tokdir), style, w],
        None,
    )
    runs["ours, one task"] = ([*ours, str(out / "ours, one task"), "--workers", w], None)
    executor = ["--executor", "local", "--tasks", w, "--workers", w, "--merge"]
    runs[f"ours, {w} tasks"] = ([*ours, str(out / f"ours, {w} tasks"), *executor], None)
    return runs


def bench(corpus: Path, tokdir: Path, script: Path, tmp: Path, args) -> None:
    """Time every contender ``args.repeats`` times, alternated, each run in a fresh folder."""
    seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        out = Path(tempfile.mkdtemp(dir=tmp))
        runs = commands(corpus, tokdir, script, out, args)
        for name, (cmd, env) in runs.items():
            seconds.setdefault(name, []).append(timed(cmd, env))
        outputs = {
            name: b"".join(
                Path(f"{out / name}_text_document{s}").read_bytes() for s in (".bin", ".idx")
            )
            for name in runs
        }
        first = next(iter(runs))
        if any(o != outputs[first] for o in outputs.values()):
            raise SystemExit(f"{corpus.name}: an output differs from {first}'s")
        shutil.rmtree(out)
    median = {name: statistics.median(s) for name, s in seconds.items()}
    print(f"{corpus.name} ({corpus.stat().st_size / 1e6:.1f} MB), medians of {args.repeats}:")
    references = [n for n in seconds if not n.startswith("ours")]
    for name, runs in seconds.items():
        ratios = [f"{median[r] / median[name]:.2f}x {r}" for r in references if r != name]
        spread = f"{min(runs):.2f}-{max(runs):.2f}s"
        line = f"  {name:18s} {median[name]:6.2f}s ({spread})"
        print(line + (", " + ", ".join(ratios) if name not in references else ""))
    print("  .bin and .idx byte-identical in every run")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", action="append", help="JSONL corpora (default: the bundled ones)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated")
    parser.add_argument("--megatron-lm", help="a Megatron-LM checkout: its preprocess_data.py too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from motif_megatron.tokenizer.bundled import unpack

        tokdir = unpack("llama3", tmp / "tok")
        corpora = [Path(c).resolve() for c in args.corpus or []]
        if not corpora:
            for name in ("ko-libreoffice-help", "en-python-docs"):
                path = tmp / f"{name}.jsonl"
                path.write_bytes(
                    lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes())
                )
                corpora.append(path)
        script = tmp / "baseline.py"
        script.write_text(BASELINE)
        for corpus in corpora:
            bench(corpus, tokdir, script, tmp, args)


if __name__ == "__main__":
    main()
