"""The ablation report over a recipe's arms: ``DIR/ablation.{json,md,png}``.

Each arm's evaluation step (``report.step`` in the recipe, ``tools/evaluate.py`` output) gives the
perplexity per reference token, bits per character and token ratio of the checkpoint labelled
``report.checkpoint`` on each of its texts; ``report.korean`` and ``report.english`` name the
training domains' texts and ``report.domains`` maps every text to its language. With the recipe's
``seeds``, an arm's figures are the mean over its seeds, with their sample standard deviation (the
spread); one difference counts as real only when the two means lie further apart than the two
spreads added (``beyond_spread``). Wall time is the sum of the arm's own steps, tokens trained
the last ``tokens`` of the ``report.train`` step's ``metrics.jsonl``. An arm dominates the
baseline arm when neither training-domain perplexity is worse and one is better; the
non-dominated arms (the Pareto front of Korean against English perplexity) are marked.

With ``report.recipe`` (an arm) ``DIR/report.json`` holds that arm's ``evaluation``, its
``steps`` (each one's nodes, Slurm allocations and seconds) and every arm's ``checkpoint``; with a
``report.baseline`` arm also the base (label ``report.base``), per-domain figures of every arm
(``domains``, the test split; ``dev_domains`` from ``report.dev_step``), the token ratios of the
``report.tokenizers`` steps and whether the recipe reaches its goal on every test domain: at most
half the baseline's perplexity on the Korean training domain, no worse on the other Korean
domains and on every English domain.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from motif_megatron.reports import write_report

REPORT_KEYS = {
    "step",
    "dev_step",
    "checkpoint",
    "korean",
    "english",
    "domains",
    "baseline",
    "recipe",
    "base",
    "train",
    "tokenizers",
}


def _evaluation(jobs, step: str) -> dict | None:
    by_name = {j.name: j for j in jobs}
    path = by_name[step].folder / "evaluation.json" if step in by_name else None
    return json.loads(path.read_text()) if path and path.is_file() else None


def _tokens(jobs, report: dict) -> int | None:
    by_name = {j.name: j for j in jobs}
    if report.get("train") not in by_name:
        return None
    path = by_name[report["train"]].folder / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return next((r["tokens"] for r in reversed(records) if "tokens" in r), None)


def _domains(report: dict) -> dict[str, str]:
    korean, english = report.get("korean", "ko"), report.get("english", "en")
    return report.get("domains") or {korean: "ko", english: "en"}


def _stats(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else None
    return statistics.fmean(values), sd


def _per_domain(runs: list[tuple[str, dict]], names) -> dict[str, dict]:
    """Per domain, the mean and spread over ``runs`` (seed, evaluation row) of its perplexity."""
    result = {}
    for name in names:
        ppl, sd = _stats([row[name]["ppl"] for _, row in runs])
        bits = [row[name].get("bits_per_char") for _, row in runs]
        result[name] = {
            "ppl_mean": ppl,
            "ppl_sd": sd,
            "bits_per_char_mean": statistics.fmean(bits) if None not in bits else None,
            "seeds": [seed for seed, _ in runs],
            "ppl": [row[name]["ppl"] for _, row in runs],
        }
    return result


def _row(arm: str, jobs, report: dict, seeds: dict | None) -> dict | None:
    """An arm's figures over its runs: ``seeds`` maps each seed to its jobs, the headline run
    (``jobs``) first; None: the headline run alone."""
    label, seeds = report.get("checkpoint", "final"), seeds or {None: jobs}
    runs = [
        (seed, evaluation["checkpoints"][label])
        for seed, seed_jobs in seeds.items()
        if (evaluation := _evaluation(seed_jobs, report["step"]))
    ]
    headline = next(iter(seeds))
    if not runs or runs[0][0] != headline:
        return None  # the headline run is not evaluated yet
    domains = _per_domain(runs, _domains(report))
    korean, english = report.get("korean", "ko"), report.get("english", "en")
    seconds = sum(
        json.loads((j.folder / "step.json").read_text())["seconds"]
        for j in jobs
        if (j.folder / "step.json").is_file()
    )
    dev = _evaluation(jobs, report["dev_step"]) if report.get("dev_step") else None
    return {
        "name": arm,
        "korean_ppl": domains[korean]["ppl_mean"],
        "korean_ppl_sd": domains[korean]["ppl_sd"],
        "english_ppl": domains[english]["ppl_mean"],
        "english_ppl_sd": domains[english]["ppl_sd"],
        "seeds": [seed for seed, _ in runs],
        "token_ratio": runs[0][1].get("token_ratio", {}).get(korean),
        "tokens": _tokens(jobs, report),
        "wall_seconds": round(seconds, 1),
        "tasks": runs[0][1].get("tasks", {}),
        "checkpoint": _absolute(runs[0][1].get("load")),
        "domains": domains,
        "dev_domains": _per_domain([(headline, dev["checkpoints"][label])], _domains(report))
        if dev
        else None,
    }


def _absolute(path: str | None) -> str | None:
    """A path the steps were given relative to the runner's folder, usable from anywhere."""
    return str(Path(path).resolve()) if path else None


def _better(a: dict, b: dict) -> bool:
    """``a`` is no worse than ``b`` on both perplexities and better on one."""
    no_worse = a["korean_ppl"] <= b["korean_ppl"] and a["english_ppl"] <= b["english_ppl"]
    return no_worse and (a["korean_ppl"], a["english_ppl"]) != (b["korean_ppl"], b["english_ppl"])


def build(plans: dict, report: dict, chosen: dict | None = None, seeds: dict | None = None) -> dict:
    """``seeds``: per arm, each seed's jobs (the headline run's first)."""
    rows = [
        r for arm, jobs in plans.items() if (r := _row(arm, jobs, report, (seeds or {}).get(arm)))
    ]
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


def _by_domain(rows: list[dict], report: dict, key: str, split: str) -> dict:
    """``{NAME: {split, language, arms: {ARM: {ppl_mean, ppl_sd, bits_per_char_mean, seeds}}}}``."""
    keep = ("ppl_mean", "ppl_sd", "bits_per_char_mean", "seeds")
    return {
        name: {
            "split": split,
            "language": language,
            "arms": {r["name"]: {k: r[key][name][k] for k in keep} for r in rows if r[key]},
        }
        for name, language in _domains(report).items()
    }


def _goal(recipe: dict, baseline: dict, report: dict) -> dict:
    """Per test domain: the recipe's mean perplexity over the baseline's, the ratio it must
    reach (0.5 on the Korean training domain, 1 elsewhere), whether it does, and whether the
    difference lies beyond the two spreads."""
    result = {}
    for name in _domains(report):
        a, b = recipe["domains"][name], baseline["domains"][name]
        required = 0.5 if name == report.get("korean", "ko") else 1.0
        spread = (a["ppl_sd"] or 0.0) + (b["ppl_sd"] or 0.0)
        result[name] = {
            "vs_baseline": a["ppl_mean"] / b["ppl_mean"],
            "required": required,
            "met": a["ppl_mean"] <= required * b["ppl_mean"],
            "beyond_spread": abs(a["ppl_mean"] - b["ppl_mean"]) > spread,
        }
    return result


def summary(plans: dict, report: dict, result: dict) -> dict | None:
    """The recipe arm's evaluation and steps, and against the base and the baseline when
    there is one (``report.json``); None before the recipe arm is evaluated."""
    rows = {r["name"]: r for r in result["arms"]}
    recipe, baseline = rows.get(report.get("recipe")), rows.get(report.get("baseline"))
    if recipe is None:
        return None
    evaluation = _evaluation(plans[recipe["name"]], report["step"])
    own = {
        "recipe": recipe["name"],
        "evaluation": {k: recipe[k] for k in ("korean_ppl", "english_ppl")},
        "steps": _steps(plans[recipe["name"]]),
        "reference_tokenizer": _absolute(evaluation.get("reference_tokenizer")),
    }
    if baseline is None:
        return own | {"arms": result["arms"]}
    korean, english = report.get("korean", "ko"), report.get("english", "en")
    base = evaluation["checkpoints"][report.get("base", "base")]
    goal = _goal(recipe, baseline, report)
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
        "goal": goal,
        "goal_met": all(g["met"] for g in goal.values()),
        "tokenizers": _token_ratios(plans[recipe["name"]], report.get("tokenizers", [])),
        "domains": _by_domain(result["arms"], report, "domains", "test"),
        "dev_domains": _by_domain(result["arms"], report, "dev_domains", "dev")
        if report.get("dev_step")
        else None,
        "arms": result["arms"],
    }


def _draw(plt, result: dict, names: list[str]):
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(14, 5))
    for r in result["arms"]:
        style = {"color": "tab:red", "marker": "*", "ms": 12} if r["non_dominated"] else {}
        ax.errorbar(
            r["korean_ppl"],
            r["english_ppl"],
            xerr=r["korean_ppl_sd"] or 0,
            yerr=r["english_ppl_sd"] or 0,
            fmt=style.get("marker", "o"),
            color=style.get("color", "tab:gray"),
            ms=style.get("ms", 6),
            capsize=3,
        )
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
    ax.set_xlabel("Korean perplexity per reference token (training domain, lower is better)")
    ax.set_ylabel("English perplexity per reference token (training domain)")
    ax.set_title("arms (mean +- sd over seeds): red stars are not dominated")
    width = 0.8 / max(len(result["arms"]), 1)
    for i, r in enumerate(result["arms"]):
        means = [r["domains"][n]["ppl_mean"] for n in names]
        sds = [r["domains"][n]["ppl_sd"] or 0 for n in names]
        xs = [k + i * width for k in range(len(names))]
        bars.bar(xs, means, width, yerr=sds, capsize=2, label=r["name"])
    bars.set_xticks([k + 0.4 - width / 2 for k in range(len(names))], names)
    bars.set_yscale("log")
    bars.set_ylabel("perplexity per reference token (test split)")
    bars.set_title("every domain, each arm (error bars: sd over seeds)")
    bars.legend(fontsize=8)
    return fig


def _cell(stats: dict) -> str:
    sd = f" +- {stats['ppl_sd']:.0f}" if stats["ppl_sd"] is not None else ""
    bits = stats["bits_per_char_mean"]
    bits = f", {bits:.2f} bpc" if bits is not None else ""
    return f"{stats['ppl_mean']:.1f}{sd} (n={len(stats['seeds'])}{bits})"


def _markdown(result: dict, recipe: dict | None, names: list[str]) -> list[str]:
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
    lines += [
        "",
        "Perplexity per reference token on every test domain, mean +- sample sd over seeds "
        "(n), and bits per character (mean):",
        "",
        "| arm | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for r in result["arms"]:
        lines.append(f"| {r['name']} | " + " | ".join(_cell(r["domains"][n]) for n in names) + " |")
    if recipe and "goal" in recipe:
        lines += ["", f"Recipe arm `{recipe['recipe']}` against baseline `{recipe['baseline']}`:"]
        for name, g in recipe["goal"].items():
            verdict = "beyond the spread" if g["beyond_spread"] else "within the spread"
            lines.append(
                f"- {name}: {g['vs_baseline']:.2f}x the baseline's perplexity (needs <= "
                f"{g['required']}): {'met' if g['met'] else 'NOT met'}, {verdict}"
            )
        lines.append(f"- goal over every test domain: {'met' if recipe['goal_met'] else 'NOT met'}")
    return lines


def write(
    out: Path, plans: dict, report: dict, chosen: dict | None = None, seeds: dict | None = None
) -> dict:
    result = build(plans, report, chosen, seeds)
    recipe = summary(plans, report, result)
    if recipe is not None:
        (out / "report.json").write_text(json.dumps(recipe, indent=2) + "\n")
    names = list(_domains(report))
    write_report(
        out,
        "ablation",
        result,
        _markdown(result, recipe, names),
        lambda plt: _draw(plt, result, names),
    )
    return result
