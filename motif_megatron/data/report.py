"""The corpus report: JSON for machines, Markdown and a PNG for people."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _examples(parts: list[dict], per_reason: int = 2) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in parts:
        with open(p["removed.jsonl"]) as f:
            for line in f:
                entry = json.loads(line)
                key = f"{entry['filter']}/{entry['reason']}"
                if len(found.setdefault(key, [])) < per_reason:
                    found[key].append(entry["text"][:200].replace("\n", " "))
    return found


def _plot(out: Path, report: dict, ppl: dict | None, cluster_sizes: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    reasons = report["by_filter"]
    ax = axes[0]
    ax.barh(list(reasons) or ["(none)"], list(reasons.values()) or [0], color="tab:red")
    ax.set_title(f"removed documents by filter (kept {report['kept']} of {report['input']})")
    ax.invert_yaxis()
    ax = axes[1]
    if ppl and ppl["values"]:
        values = np.asarray(ppl["values"])
        ax.hist(np.log10(values), bins=50, color="tab:blue")
        for bound, name in ((ppl["low"], "low"), (ppl["high"], "high")):
            if bound:
                ax.axvline(
                    np.log10(bound), color="tab:red", linestyle="--", label=f"{name} {bound:.0f}"
                )
        ax.set_xlabel("log10 perplexity")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "perplexity stage skipped\n(no --kenlm-model)", ha="center", va="center")
    ax.set_title("KenLM perplexity of filtered survivors")
    ax = axes[2]
    if cluster_sizes:
        ax.hist(cluster_sizes, bins=range(2, max(cluster_sizes) + 2), color="tab:green")
        ax.set_xlabel("documents per near-duplicate cluster")
    ax.set_title(f"MinHash clusters: {len(cluster_sizes)}")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=100)
    plt.close(fig)


def write(
    out: Path,
    report: dict,
    parts: list[dict],
    ppl: dict | None,
    cluster_sizes: list[int],
    global_examples: dict[str, list[str]],
) -> None:
    report["examples"] = _examples(parts) | global_examples
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _plot(out, report, ppl, cluster_sizes)
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
    lines += ["", "![report](report.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
