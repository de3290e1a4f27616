"""The ablation report over a recipe's arms: ``DIR/ablation.{json,md,png}``.

Each arm's evaluation step (``report.step`` in the recipe, ``tools/evaluate.py`` output) gives the
Korean and English perplexity per reference token and the token ratio of the checkpoint labelled
``report.checkpoint``; wall time is the sum of the arm's own steps. An arm dominates the baseline
arm when neither perplexity is worse and one is better; the non-dominated arms (the Pareto front
of Korean against English perplexity) are marked in the table and the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

REPORT_KEYS = {"step", "checkpoint", "korean", "english", "baseline"}


def _row(arm: str, jobs, report: dict) -> dict | None:
    by_name = {j.name: j for j in jobs}
    path = by_name[report["step"]].folder / "evaluation.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())["checkpoints"][report.get("checkpoint", "final")]
    korean, english = report.get("korean", "ko"), report.get("english", "en")
    seconds = sum(
        json.loads((j.folder / "step.json").read_text())["seconds"]
        for j in jobs
        if (j.folder / "step.json").is_file()
    )
    return {
        "name": arm,
        "korean_ppl": row[korean]["ppl"],
        "english_ppl": row[english]["ppl"],
        "token_ratio": row.get("token_ratio", {}).get(korean),
        "wall_seconds": round(seconds, 1),
        "tasks": row.get("tasks", {}),
    }


def _better(a: dict, b: dict) -> bool:
    """``a`` is no worse than ``b`` on both perplexities and better on one."""
    no_worse = a["korean_ppl"] <= b["korean_ppl"] and a["english_ppl"] <= b["english_ppl"]
    return no_worse and (a["korean_ppl"], a["english_ppl"]) != (b["korean_ppl"], b["english_ppl"])


def build(plans: dict, report: dict) -> dict:
    rows = [r for arm, jobs in plans.items() if (r := _row(arm, jobs, report))]
    baseline = next((r for r in rows if r["name"] == report.get("baseline")), None)
    for r in rows:
        r["dominates_baseline"] = baseline is not None and _better(r, baseline)
        r["non_dominated"] = not any(_better(o, r) for o in rows)
    return {"baseline": report.get("baseline"), "arms": rows}


def _plot(out: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for r in result["arms"]:
        style = (
            {"color": "tab:red", "marker": "*", "s": 160}
            if r["non_dominated"]
            else {"color": "tab:gray"}
        )
        ax.scatter(r["korean_ppl"], r["english_ppl"], **style)
        ax.annotate(
            r["name"],
            (r["korean_ppl"], r["english_ppl"]),
            textcoords="offset points",
            xytext=(5, 5),
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Korean perplexity per reference token (lower is better)")
    ax.set_ylabel("English perplexity per reference token (lower is better)")
    ax.set_title("arms: red stars are not dominated by any other arm")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=100)
    plt.close(fig)


def write(out: Path, plans: dict, report: dict) -> dict:
    result = build(plans, report)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Ablation",
        "",
        "| arm | Korean ppl | English ppl | token ratio | wall s | dominates baseline | front |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["arms"]:
        ratio = f"{r['token_ratio']:.3f}" if r["token_ratio"] is not None else "-"
        lines.append(
            f"| {r['name']} | {r['korean_ppl']:.2f} | {r['english_ppl']:.2f} | {ratio} | "
            f"{r['wall_seconds']:.0f} | {'yes' if r['dominates_baseline'] else 'no'} | "
            f"{'*' if r['non_dominated'] else ''} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    _plot(out, result)
    return result
