"""The corpus report: JSON for machines, Markdown and a PNG for people.

It is the merge of the blocks' datatrove stats (every task of every stage) and of the removed and
rejected records the blocks wrote, which must agree: a count the stats and the records disagree
on, or ``input != kept + filtered + rejected``, is a bug and fails the run.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.stats import MetricStats

from motif_megatron.data.minhash import lsh_probability
from motif_megatron.memory import peak_rss_mb, reset_peak_rss
from motif_megatron.reports import write_report


def stage_stats(logs: Path, stage: str) -> dict[str, dict[str, MetricStats]]:
    """The stats of every task of ``stage`` added up: block name (datatrove saves
    ``"<type>: <name>"``) -> metric -> :class:`MetricStats` (``total``, ``n``, ``mean``, ``max``)."""
    merged: dict[str, dict[str, MetricStats]] = {}
    for path in sorted((logs / stage / "stats").glob("*.json")):
        for block in json.loads(path.read_text()):
            metrics = merged.setdefault(block["name"].split(": ", 1)[-1], {})
            for key, value in block["stats"].items():
                stat = MetricStats.from_dict(value)
                metrics[key] = metrics[key] + stat if key in metrics else stat
    return merged


def _total(stats: dict[str, dict[str, MetricStats]], block: str, metric: str) -> float:
    found = stats.get(block, {}).get(metric)
    return found.total if found else 0


def _concatenate(files: list[Path], out: str, keys: tuple[str, ...], seen=None) -> int:
    """Stream ``files``' records (only ``keys``) to ``out`` (a path or an fsspec URL) in order,
    each full record first to ``seen`` (which may amend it); returns how many."""
    count = 0
    with fsspec.open(out, "w", encoding="utf-8") as sink:
        for path in files:
            with open(path) as f:
                for line in f:
                    record = json.loads(line)
                    count += 1
                    if seen is not None:
                        seen(record)
                    sink.write(json.dumps({k: record[k] for k in keys}, ensure_ascii=False) + "\n")
    return count


class FileLines:
    """Numbers a reject's line file-wide: a task reading a piece of a file counts from the
    piece's start (it seeks there), and the pieces' line counts say where each starts."""

    def __init__(self, folder: Path) -> None:
        pieces: dict[str, list[tuple[int, int]]] = {}
        for path in sorted(folder.glob("*.json")):
            for piece in json.loads(path.read_text()):
                pieces.setdefault(piece["source"], []).append((piece["start"], piece["lines"]))
        self.before: dict[tuple[str, int], int] = {}
        for source, found in pieces.items():
            total = 0
            for start, lines in sorted(found):
                self.before[source, start] = total
                total += lines

    def __call__(self, record: dict) -> None:
        record["line"] += self.before.get((record["source"], record["start"]), 0)


class Tally:
    """Removed documents counted per reason and characters per block, with the first
    ``examples`` snippets of each reason: memory grows with the reasons, not the documents."""

    def __init__(self, examples: int = 2) -> None:
        self.by_reason: Counter = Counter()
        self.chars: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.keep = examples

    def __call__(self, record: dict) -> None:
        key = f"{record['filter']}/{record['reason']}"
        self.by_reason[key] += 1
        self.chars[record["filter"]] += record["chars"]
        kept = self.examples.setdefault(key, [])
        if len(kept) < self.keep:
            kept.append(record["text"].replace("\n", " "))


def _removed_files(work: Path, blocks: list[str]) -> list[Path]:
    """Block by block in pipeline order, task by task."""
    files = (work / "removed").glob("removed_*.jsonl")
    found = [(p.stem.removeprefix("removed_").rsplit("_", 1), p) for p in files]
    return [p for (block, rank), p in sorted(found, key=lambda x: (blocks.index(x[0][0]), x[0][1]))]


def _throughput(stats: dict[str, dict], input_docs: float, input_bytes: float) -> dict:
    meter = stats["meter"]
    seconds, peak = meter["seconds"], meter["peak_rss_mb"]
    return {
        "tasks": seconds.n,
        "task_seconds_max": seconds.max,
        "docs_per_s_per_task": input_docs / max(seconds.total, 1e-9),
        "mb_per_s_per_task": input_bytes / 1e6 / max(seconds.total, 1e-9),
        "peak_rss_mb_max": peak.max,
    }


class Report(PipelineStep):
    """The last stage (one task): the report of the whole run, from the files the stages left."""

    type = "📋 - REPORT"
    name = "report"

    def __init__(
        self, out: str, work: Path, logs: Path, stages: dict[str, str], blocks: list[str], config
    ) -> None:
        """``out``: a path or an fsspec URL; ``stages``: the stages before this one, name ->
        ``document`` or ``global``; ``blocks``: the names under which the stages wrote removed
        records."""
        super().__init__()
        self.out, self.work, self.logs = str(out), Path(work), Path(logs)
        self.stages, self.config, self.blocks = stages, config, blocks

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:
        from motif_megatron.data.blocks import read_bounds

        reset_peak_rss()
        started = time.perf_counter()
        out, work, config = self.out, self.work, self.config
        stats = {stage: stage_stats(self.logs, stage) for stage in self.stages}
        names = list(self.stages)
        first, last = stats[names[0]], stats[names[-1]]
        tally = Tally()
        removed = _concatenate(
            _removed_files(work, self.blocks),
            f"{out}/removed.jsonl",
            ("id", "filter", "reason"),
            tally,
        )
        rejects = sorted(work.glob("rejects_*.jsonl"))
        keys = ("source", "line", "offset", "reason")
        _concatenate(rejects, f"{out}/rejects.jsonl", keys, FileLines(work / "lines"))
        dropped = sum(_total(s, b, "dropped") for s in stats.values() for b in s if b != "report")
        input_docs = _total(first, "corpus", "input")
        rejected = _total(first, "corpus", "rejected")
        kept = _total(last, JsonlWriter.name, "total")
        if dropped != removed or input_docs != kept + removed + rejected:
            raise RuntimeError(
                f"accounting bug: {input_docs} in, {kept} kept + {removed} removed "
                f"({dropped} by the stats) + {rejected} rejected"
            )
        ppl = None
        if config.kenlm_model:
            low, high = read_bounds(work / "ppl")
            ppl = {"low": low, "high": high}
        report = {
            "input": int(input_docs),
            "kept": int(kept),
            "filtered": removed,
            "rejected": int(rejected),
            "language": config.language,
            "input_chars": int(_total(first, "corpus", "input_chars")),
            "kept_chars": int(_total(last, JsonlWriter.name, "doc_len")),
            "by_filter": dict(sorted(tally.by_reason.items())),
            "chars_by_filter": dict(sorted(tally.chars.items())),
            "perplexity": ppl,
            "minhash": _minhash(stats, config) if config.minhash else None,
            "lsh": _lsh(config) if config.minhash else None,
            "throughput": {
                stage: _throughput(s, input_docs, _total(first, "corpus", "input_bytes"))
                for stage, s in stats.items()
                if self.stages[stage] == "document"
            },
            "examples": tally.examples,
        }
        report["stages"] = [_cost(name, self.stages[name], stats[name]) for name in names] + [
            {
                "name": "report",
                "kind": "global",
                "tasks": 1,
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": peak_rss_mb(),
            }
        ]
        write(out, report, work / "ppl" if ppl else None, self.blocks)


def _cost(name: str, kind: str, stats: dict[str, dict[str, MetricStats]]) -> dict:
    """A stage's tasks, their seconds added up and the largest peak RSS of one task."""
    seconds, peak = stats["meter"]["seconds"], stats["meter"]["peak_rss_mb"]
    return {
        "name": name,
        "kind": kind,
        "tasks": seconds.n,
        "seconds": seconds.total,
        "peak_rss_mb": peak.max,
    }


def _minhash(stats: dict[str, dict[str, dict]], config) -> dict:
    sizes = stats["minhash-cluster"].get("🎯 MinHash stage 3", {}).get("cluster_size")
    return {
        "clusters": sizes.n if sizes else 0,
        "mean_cluster_size": sizes.mean if sizes else 0.0,
        "max_cluster_size": sizes.max if sizes else 0,
        "bands_rows": list(config.minhash_config.bands()),
    }


def _lsh(config) -> dict:
    """The banding and its S-curve's value at the threshold (what share of the pairs there a
    run catches)."""
    m = config.minhash_config
    bands, rows = m.bands()
    p = float(lsh_probability(m.threshold, bands, rows))
    return {
        "bands": bands,
        "rows": rows,
        "threshold": m.threshold,
        "p_at_threshold": p,
        "recall_target": m.recall,
    }


def _draw(plt, report: dict, ppl_folder: Path | None, blocks: list[str]):
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.5))
    reasons = report["by_filter"]
    ax = axes[0]
    ax.barh(list(reasons) or ["(none)"], list(reasons.values()) or [0], color="tab:red")
    ax.set_title(f"removed documents by filter (kept {report['kept']} of {report['input']})")
    ax.invert_yaxis()
    ax = axes[1]
    if ppl_folder is not None:
        from functools import reduce

        from motif_megatron.data.thresholds import WIDTH, ScoreSummary

        paths = sorted(ppl_folder.glob("*.ppl.npz"))
        merged = reduce(ScoreSummary.merge, map(ScoreSummary.load, paths), ScoreSummary())
        used = np.flatnonzero(merged.count)
        edges = np.arange(used.min(), used.max() + 2) * WIDTH / np.log(10) if used.size else [0, 1]
        counts = merged.count[used.min() : used.max() + 1] if used.size else [0]
        ax.stairs(counts, edges, fill=True, color="tab:blue")
        for bound, name in (
            (report["perplexity"]["low"], "low"),
            (report["perplexity"]["high"], "high"),
        ):
            if bound:
                ax.axvline(
                    np.log10(bound), color="tab:red", linestyle="--", label=f"{name} {bound:.0f}"
                )
        ax.set_xlabel("log10 perplexity (merged task summaries)")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "perplexity stage skipped\n(no --kenlm-model)", ha="center", va="center")
    ax.set_title("KenLM perplexity of filtered survivors")
    ax = axes[2]
    left, names, remaining = report["input_chars"], ["input"], [report["input_chars"]]
    for block in blocks:
        if block in report["chars_by_filter"]:
            left -= report["chars_by_filter"][block]
            names.append(f"after {block}")
            remaining.append(left)
    ax.bar(names, np.asarray(remaining) / 1e6, color="tab:green")
    ax.set_ylabel("million characters")
    ax.tick_params(axis="x", rotation=30)
    ax.set_title("characters kept after each block")
    _draw_lsh(axes[3], report["lsh"])
    return fig


def _draw_lsh(ax, lsh: dict | None) -> None:
    """The S-curve: the chance a pair is caught against its Jaccard similarity."""
    if lsh is None:
        ax.text(0.5, 0.5, "MinHash stage skipped", ha="center", va="center")
        return
    s = np.linspace(0, 1, 201)
    ax.plot(s, lsh_probability(s, lsh["bands"], lsh["rows"]), color="tab:purple")
    ax.axvline(lsh["threshold"], color="tab:red", linestyle="--")
    ax.axhline(lsh["p_at_threshold"], color="tab:gray", linestyle=":")
    ax.set_xlabel("Jaccard similarity of a pair")
    ax.set_ylabel("probability of sharing a band")
    ax.set_title(
        f"MinHash LSH {lsh['bands']} bands x {lsh['rows']} rows: "
        f"{lsh['p_at_threshold']:.0%} at {lsh['threshold']}"
    )


def write(out: str, report: dict, ppl_folder: Path | None, blocks: list[str]) -> None:
    lines = [
        "# Corpus report",
        "",
        f"input {report['input']} = kept {report['kept']} + filtered {report['filtered']} "
        f"+ rejected {report['rejected']}",
        "",
        f"characters: {report['input_chars']:,} in, {report['kept_chars']:,} kept "
        f"({report['kept_chars'] / max(report['input_chars'], 1):.1%}); documents kept "
        f"{report['kept'] / max(report['input'], 1):.1%}",
        "",
        "| filter/reason | documents | example |",
        "|---|---|---|",
    ]
    for key, count in report["by_filter"].items():
        example = (report["examples"].get(key) or [""])[0].replace("|", "\\|")[:120]
        lines.append(f"| {key} | {count} | {example} |")
    if report.get("perplexity"):
        p = report["perplexity"]
        lines += ["", f"perplexity bounds: low {p['low']}, high {p['high']}"]
    if lsh := report.get("lsh"):
        lines += [
            "",
            f"MinHash LSH: {lsh['bands']} bands x {lsh['rows']} rows, a pair at Jaccard "
            f"{lsh['threshold']} is caught with probability {lsh['p_at_threshold']:.3f} "
            f"(target {lsh['recall_target']})",
        ]
    lines += [
        "",
        "| stage | kind | tasks | task-seconds | peak RSS of a task (MB) |",
        "|---|---|---|---|---|",
    ]
    for st in report["stages"]:
        lines.append(
            f"| {st['name']} | {st['kind']} | {st['tasks']} | {st['seconds']:.1f} | "
            f"{st['peak_rss_mb']:.0f} |"
        )
    lines += ["", "| stage | tasks | docs/s per task | MB/s per task | peak RSS per task (MB) |"]
    lines += ["|---|---|---|---|---|"]
    for stage, t in report["throughput"].items():
        lines.append(
            f"| {stage} | {t['tasks']} | {t['docs_per_s_per_task']:.0f} | "
            f"{t['mb_per_s_per_task']:.2f} | {t['peak_rss_mb_max']:.0f} |"
        )
    write_report(out, "report", report, lines, lambda plt: _draw(plt, report, ppl_folder, blocks))
