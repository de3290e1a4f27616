"""The ablation report over a recipe's arms: ``DIR/ablation.{json,md,png}``.

Each arm's evaluation step (``report.step`` in the recipe, ``tools/evaluate.py`` output) gives the
Korean and English perplexity per reference token and the token ratio of the checkpoint labelled
``report.checkpoint``; wall time is the sum of the arm's own steps, tokens trained the last
``tokens`` of the ``report.train`` step's ``metrics.jsonl``. An arm dominates the baseline arm when
neither perplexity is worse and one is better; the non-dominated arms (the Pareto front of Korean
against English perplexity) are marked in the table and the plot. With ``report.recipe`` (an arm)
``DIR/report.json`` holds that arm's final ``evaluation`` and its ``steps`` (each one's nodes,
Slurm allocations and seconds, from its marker); with a ``report.baseline`` arm also the base
(label ``report.base``), baseline and recipe figures side by side and whether the recipe reaches
its goal: Korean at most half the baseline's, English no worse; and the token ratios of the
``report.tokenizers`` steps (``tools/tokenizer_report.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

from motif_megatron.reports import write_report

REPORT_KEYS = {
    "step",
    "checkpoint",
    "korean",
    "english",
    "baseline",
    "recipe",
    "base",
    "train",
    "tokenizers",
}


def _evaluation(jobs, report: dict) -> dict | None:
    path = {j.name: j for j in jobs}[report["step"]].folder / "evaluation.json"
    return json.loads(path.read_text())["checkpoints"] if path.is_file() else None


def _tokens(jobs, report: dict) -> int | None:
    by_name = {j.name: j for j in jobs}
    if report.get("train") not in by_name:
        return None
    path = by_name[report["train"]].folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return next((r["tokens"] for r in reversed(records) if "tokens" in r), None)


def _row(arm: str, jobs, report: dict) -> dict | None:
    evaluation = _evaluation(jobs, report)
    if evaluation is None:
        return None
    row = evaluation[report.get("checkpoint", "final")]
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
        "tokens": _tokens(jobs, report),
        "wall_seconds": round(seconds, 1),
        "tasks": row.get("tasks", {}),
    }


def _better(a: dict, b: dict) -> bool:
    """``a`` is no worse than ``b`` on both perplexities and better on one."""
    no_worse = a["korean_ppl"] <= b["korean_ppl"] and a["english_ppl"] <= b["english_ppl"]
    return no_worse and (a["korean_ppl"], a["english_ppl"]) != (b["korean_ppl"], b["english_ppl"])


def build(plans: dict, report: dict, chosen: dict | None = None) -> dict:
    rows = [r for arm, jobs in plans.items() if (r := _row(arm, jobs, report))]
    baseline = next((r for r in rows if r["name"] == report.get("baseline")), None)
    for r in rows:
        r["dominates_baseline"] = baseline is not None and _better(r, baseline)
        r["non_dominated"] = not any(_better(o, r) for o in rows)
        if chosen and r["name"] in chosen:
            r["sweep"] = chosen[r["name"]]
    return {"baseline": report.get("baseline"), "arms": rows}


def _token_ratios(jobs, steps: list[str]) -> dict[str, dict[str, float]]:
    """Per tokenizer report step, the token ratio per language."""
    by_name, ratios = {j.name: j for j in jobs}, {}
    for name in steps:
        path = by_name[name].folder / "tokenizer_report.json"
        languages = json.loads(path.read_text())["languages"]
        ratios[name] = {lang: r["token_ratio"] for lang, r in languages.items()}
    return ratios


def _steps(jobs) -> list[dict]:
    """Each finished step of an arm as its marker records it."""
    steps = []
    for job in jobs:
        marker = job.folder / "step.json"
        if marker.is_file():
            record = json.loads(marker.read_text())
            keys = ("nodes", "allocations", "seconds")
            steps.append({"name": job.name} | {k: record.get(k) for k in keys})
    return steps


def summary(plans: dict, report: dict, result: dict) -> dict | None:
    """The recipe arm's evaluation and steps, and against the base and the baseline when
    there is one (``report.json``); None before the recipe arm is evaluated."""
    rows = {r["name"]: r for r in result["arms"]}
    recipe, baseline = rows.get(report.get("recipe")), rows.get(report.get("baseline"))
    if recipe is None:
        return None
    own = {
        "recipe": recipe["name"],
        "evaluation": {k: recipe[k] for k in ("korean_ppl", "english_ppl")},
        "steps": _steps(plans[recipe["name"]]),
    }
    if baseline is None:
        return own
    korean, english = report.get("korean", "ko"), report.get("english", "en")
    base = _evaluation(plans[recipe["name"]], report)[report.get("base", "base")]
    return own | {
        "korean_ppl_base": base[korean]["ppl"],
        "english_ppl_base": base[english]["ppl"],
        "korean_ppl_baseline": baseline["korean_ppl"],
        "english_ppl_baseline": baseline["english_ppl"],
        "korean_ppl_final": recipe["korean_ppl"],
        "english_ppl_final": recipe["english_ppl"],
        "token_ratio": recipe["token_ratio"],
        "baseline": baseline["name"],
        "korean_vs_baseline": recipe["korean_ppl"] / baseline["korean_ppl"],
        "english_vs_baseline": recipe["english_ppl"] / baseline["english_ppl"],
        "goal_met": recipe["korean_ppl"] <= 0.5 * baseline["korean_ppl"]
        and recipe["english_ppl"] <= baseline["english_ppl"],
        "tokenizers": _token_ratios(plans[recipe["name"]], report.get("tokenizers", [])),
        "arms": result["arms"],
    }


def _draw(plt, result: dict):
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
    base = next((r for r in result["arms"] if r["name"] == result["baseline"]), None)
    if base is not None:  # arms in the shaded corner dominate the baseline
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        x, y = base["korean_ppl"], base["english_ppl"]
        ax.fill_between([x0, x], y0, y, color="tab:green", alpha=0.1, label="dominates baseline")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.legend(loc="upper right")
    ax.set_xlabel("Korean perplexity per reference token (lower is better)")
    ax.set_ylabel("English perplexity per reference token (lower is better)")
    ax.set_title("arms: red stars are not dominated by any other arm")
    return fig


def _markdown(result: dict, recipe: dict | None) -> list[str]:
    lines = [
        "# Ablation",
        "",
        "| arm | Korean ppl | English ppl | token ratio | tokens | sweep | wall s | "
        "dominates baseline | front |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["arms"]:
        ratio = f"{r['token_ratio']:.3f}" if r["token_ratio"] is not None else "-"
        sweep = r.get("sweep") or {"scores": {}}
        sweep = ", ".join(
            f"{v}: {score:.3f}{' (kept)' if v == str(sweep['kept']) else ''}"
            for v, score in sweep["scores"].items()
        )
        lines.append(
            f"| {r['name']} | {r['korean_ppl']:.2f} | {r['english_ppl']:.2f} | {ratio} | "
            f"{r['tokens'] if r['tokens'] is not None else '-'} | {sweep or '-'} | "
            f"{r['wall_seconds']:.0f} | {'yes' if r['dominates_baseline'] else 'no'} | "
            f"{'*' if r['non_dominated'] else ''} |"
        )
    if recipe and "baseline" in recipe:
        lines += [
            "",
            f"Recipe arm `{recipe['recipe']}` against baseline `{recipe['baseline']}`: Korean "
            f"{recipe['korean_vs_baseline']:.2f}x, English {recipe['english_vs_baseline']:.2f}x "
            f"the baseline's perplexity; goal (Korean <= 0.5x, English <= 1x): "
            f"{'met' if recipe['goal_met'] else 'NOT met'}.",
        ]
    return lines


def write(out: Path, plans: dict, report: dict, chosen: dict | None = None) -> dict:
    result = build(plans, report, chosen)
    recipe = summary(plans, report, result)
    if recipe is not None:
        (out / "report.json").write_text(json.dumps(recipe, indent=2) + "\n")
    write_report(out, "ablation", result, _markdown(result, recipe), lambda plt: _draw(plt, result))
    return result
