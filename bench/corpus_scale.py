#!/usr/bin/env python
"""Corpus pipeline memory and throughput as the corpus grows: 1x against Nx, same run.

The Korean corpus is replicated with per-copy edits (a copy number in every document and 2% of
its characters changed: copies of one document are often near-duplicates of each other, as in a
crawl, so the dedup stage has work that grows with the corpus) up to ``--base-mb`` for 1x and
``--factor`` times that, and ``tools/preprocess_corpus.py`` runs on each with the same
``--tasks`` (so each task's share grows with the corpus: the stricter test of streaming).

Each stage's peak RSS is its largest task's own peak (``report.json``'s ``stages``: the kernel's
high-water mark, reset as each task starts, so a stage that runs in a reused process is measured
alone); the whole run's peak is the largest sum over the process tree, sampled every 50 ms. The
target (issue 31) is every stage's peak at Nx within 1.3x of its peak at 1x; the MinHash cluster
stage's memory grows with the near-duplicates it links, and its growth per duplicate is printed.
The kept documents are then tokenised (``preprocess_data.py --executor local``, same tasks): the
``tokenise`` row. Last, the disk each intermediate (``work/``, kept with ``--keep-work``) and
output takes per byte of input, for sizing a run (README: at scale).

  .venv/bin/python bench/corpus_scale.py [--base-mb 40] [--factor 8] [--workers 2] [--tasks 4]
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "examples/data/corpus/ko-libreoffice-help.jsonl.xz"


def write_corpus(path: Path, megabytes: float, docs: list[str]) -> int:
    """Copies of ``docs``, each edited, until ``megabytes`` are written; returns the bytes."""
    rng, written, copy = random.Random(0), 0, 0
    with open(path, "w") as out:
        while written < megabytes * 1e6:
            for i, text in enumerate(docs):
                chars = list(text)
                for k in rng.sample(range(len(chars)), len(chars) // 50):
                    chars[k] = chr(0xAC00 + rng.randrange(11172))
                line = json.dumps({"id": f"{copy}-{i}", "text": f"[{copy}] " + "".join(chars)})
                written += out.write(line + "\n")
            copy += 1
    return written


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MB) summed over the process tree."""
    start, peak = time.perf_counter(), 0
    proc = psutil.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while proc.poll() is None:
        try:
            tree = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr.read().decode()[-2000:]}")
    return time.perf_counter() - start, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--corpus", default=str(CORPUS), help="JSONL (or .jsonl.xz) corpus to replicate"
    )
    parser.add_argument("--base-mb", type=float, default=40.0, help="size of the 1x input")
    parser.add_argument("--factor", type=int, default=8, help="the large input is this x 1x")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4, help="the same at 1x and Nx")
    args = parser.parse_args()
    raw = Path(args.corpus).read_bytes()
    lines = (lzma.decompress(raw) if args.corpus.endswith(".xz") else raw).decode().splitlines()
    docs = [json.loads(line)["text"] for line in lines if line.strip()]
    runs, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, args.factor):
            data = Path(tmp) / f"ko_{factor}x.jsonl"
            size = write_corpus(data, args.base_mb * factor, docs)
            cmd = [sys.executable, "tools/preprocess_corpus.py", "--input", str(data)]
            cmd += ["--output", str(Path(tmp) / f"out_{factor}x"), "--workers", str(args.workers)]
            cmd += ["--tasks", str(args.tasks), "--keep-work"]
            seconds, peak = run_measured(cmd)
            report = json.loads((Path(tmp) / f"out_{factor}x" / "report.json").read_text())
            report["stages"].append(tokenise(Path(tmp), factor, args.tasks, args.workers))
            runs.append(report)
            print(
                f"{factor}x: {size / 1e6:.0f} MB, {report['input']} docs -> {report['kept']} "
                f"kept in {seconds:.0f} s ({size / 1e6 / seconds:.1f} MB/s, "
                f"{report['input'] / seconds:.0f} docs/s), whole-run peak RSS {peak:.0f} MB"
            )
            peaks.append(peak)
            disk = footprint(Path(tmp) / f"out_{factor}x", size)
    compare(runs, peaks, args.factor)
    print(f"disk at {args.factor}x, per byte of input: " + ", ".join(disk))


def tokenise(tmp: Path, factor: int, tasks: int, workers: int) -> dict:
    """The kept documents into Megatron shards on the local executor: the tokenising stage's
    tasks, task-seconds and the largest task's peak RSS (its meter's stats)."""
    from motif_megatron.data.report import stage_stats
    from motif_megatron.tokenizer.bundled import unpack

    tokenizer = unpack("llama3", tmp / "tokenizer")
    prefix = tmp / f"tokens_{factor}x"
    cmd = [sys.executable, "tools/preprocess_data.py", "--input", str(tmp / f"out_{factor}x/kept")]
    cmd += ["--output-prefix", str(prefix), "--tokenizer-model", str(tokenizer), "--append-eod"]
    cmd += ["--executor", "local", "--tasks", str(tasks), "--workers", str(workers)]
    run_measured(cmd)
    meter = stage_stats(Path(f"{prefix}_text_document.logs"), "tokenize")["meter"]
    return {
        "name": "tokenise",
        "kind": "document",
        "tasks": meter["seconds"].n,
        "seconds": meter["seconds"].total,
        "peak_rss_mb": meter["peak_rss_mb"].max,
    }


def footprint(out: Path, input_bytes: int) -> list[str]:
    """Each output and intermediate folder's bytes per byte of input."""
    parts = [p for p in sorted((out / "work").iterdir()) if p.is_dir()]
    parts += [out / "kept", out / "logs"]
    sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in parts}
    sizes["removed+rejects"] = sum(f.stat().st_size for f in out.glob("re*.jsonl"))
    total = sum(sizes.values())
    return [f"{k} {v / input_bytes:.3f}" for k, v in sizes.items()] + [
        f"all {total / input_bytes:.2f}"
    ]


def duplicates(report: dict) -> int:
    return report["by_filter"].get("minhash/near_duplicate", 0)


def compare(runs: list[dict], peaks: list[float], factor: int) -> None:
    """Per stage: peak RSS at 1x and Nx and their ratio against the 1.3 target."""
    small, large = ({s["name"]: s for s in r["stages"]} for r in runs)
    print(
        f"| stage | kind | tasks | peak 1x (MB) | peak {factor}x (MB) | ratio | seconds 1x | "
        f"seconds {factor}x |"
    )
    print("|---" * 8 + "|")
    worst = 0.0
    for name, a in small.items():
        b = large[name]
        ratio = b["peak_rss_mb"] / a["peak_rss_mb"]
        worst = max(worst, ratio)
        print(
            f"| {name} | {a['kind']} | {a['tasks']} | {a['peak_rss_mb']:.0f} | "
            f"{b['peak_rss_mb']:.0f} | {ratio:.2f} | {a['seconds']:.1f} | {b['seconds']:.1f} |"
        )
    per_task = [r["input"] / small["filter"]["tasks"] for r in runs]
    growth = {
        name: (large[name]["peak_rss_mb"] - a["peak_rss_mb"]) * 2**20 / (per_task[1] - per_task[0])
        for name, a in small.items()
        if a["kind"] == "document"
    }
    print(
        "document stages, peak RSS per added document of a task (bytes): "
        + ", ".join(f"{name} {max(b, 0):.0f}" for name, b in growth.items())
    )
    extra = duplicates(runs[1]) - duplicates(runs[0])
    if "minhash-cluster" in small and extra > 0:
        cluster = large["minhash-cluster"]["peak_rss_mb"] - small["minhash-cluster"]["peak_rss_mb"]
        grown = cluster * 2**20
        print(
            f"minhash-cluster: {duplicates(runs[0])} -> {duplicates(runs[1])} near-duplicates, "
            f"{max(grown, 0) / extra:.0f} bytes of peak RSS per added duplicate"
        )
    print(f"whole-run peak RSS {factor}x / 1x = {peaks[1] / peaks[0]:.2f}")
    print(
        f"largest per-stage peak RSS ratio {factor}x / 1x = {worst:.2f} (target <= 1.3: "
        f"{'met' if worst <= 1.3 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
