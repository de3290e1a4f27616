"""Evaluate one or several checkpoints: perplexity per language (against one reference
tokenizer, so tokenizers compare), token ratio and lm-eval tasks on local benchmark files, into
``evaluation.{json,md,png}``."""

from __future__ import annotations

import json
from importlib.metadata import version
from pathlib import Path

from motif_megatron.errors import UserError
from motif_megatron.eval import benchmarks
from motif_megatron.reports import write_report
from motif_megatron.tokenizer.metrics import token_ratio


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder} holds no tokenizer.json")
    return AutoTokenizer.from_pretrained(str(folder))


def evaluate(
    checkpoints: dict[str, str],
    texts: dict[str, list[str]],
    out: str | Path,
    reference_tokenizer: str | Path | None = None,
    seq_length: int = 256,
    tp: int = 1,
    pp: int = 1,
    tasks: benchmarks.TaskSpec | None = None,
) -> dict:
    """``{"reference_tokenizer", "checkpoints": {label: {lang: {...}, "token_ratio": {lang},
    "tasks": {task: {metric: value}}}}}``; ``texts`` or ``tasks`` may be empty."""
    from motif_megatron import parallel
    from motif_megatron.checkpoint import dist as ckpt

    if not checkpoints:
        raise UserError("give at least one checkpoint (--load LABEL=CKPT)")
    if not texts and not tasks:
        raise UserError("nothing to evaluate: give held-out text (--text) or lm-eval --tasks")
    if tasks:
        benchmarks.check_files(tasks)
    first = next(iter(checkpoints.values()))
    reference_dir = Path(reference_tokenizer or ckpt.root_of(first) / "tokenizer")
    reference = _tokenizer(reference_dir)
    parallel.initialize(parallel.ParallelConfig(tp, pp))
    results, samples, report_meta = {}, {}, {}
    for label, load in checkpoints.items():
        row: dict = {"load": str(load)}
        if texts:
            row |= _perplexities(load, texts, reference, seq_length, tp, pp)
        if tasks:
            model_args = {"load": str(Path(load).resolve()), "tp": tp, "pp": pp}
            run = benchmarks.run(
                "motif", model_args | {"max_length": seq_length}, tasks, log_samples=True
            ) or {"tasks": {}, "samples": {}}  # ranks that lm-eval does not report on
            row["tasks"] = run.pop("tasks")
            samples[label] = run.pop("samples")
            report_meta = run
        results[label] = row
    report = {
        "reference_tokenizer": str(reference_dir),
        "seq_length": seq_length,
        "checkpoints": results,
    }
    if tasks:
        report["lm_eval"] = report_meta | {"lm_eval_version": version("lm_eval")}
    if parallel.rank() == 0:
        write(report, Path(out), list(texts))
        write_samples(samples, Path(out) / "samples")
    return report


def _perplexities(
    load: str, texts: dict[str, list[str]], reference, seq_length: int, tp: int, pp: int
) -> dict:
    """``{lang: {ppl, token_ppl, bits_per_char, tokens, reference_tokens}, "token_ratio"}``."""
    import torch

    from motif_megatron.checkpoint import dist as ckpt
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.eval.perplexity import perplexity
    from motif_megatron.model.builder import BuildOptions

    tokenizer = _tokenizer(ckpt.root_of(load) / "tokenizer")
    model, args = build_from_checkpoint(
        load, BuildOptions(tp=tp, pp=pp, params_dtype=torch.float32)
    )
    row: dict = {"token_ratio": {}}
    for lang, docs in texts.items():
        p = perplexity(model, docs, tokenizer, reference, args.vocab_size, seq_length)
        row[lang] = {
            "ppl": p.ppl,
            "token_ppl": p.token_ppl,
            "bits_per_char": p.bits_per_char,
            "tokens": p.tokens,
            "reference_tokens": p.reference_tokens,
        }
        row["token_ratio"][lang] = token_ratio(p.tokens, p.reference_tokens)
    return row


def write(report: dict, out: Path, langs: list[str]) -> None:
    """``evaluation.json``, ``.md`` (a perplexity table, a task table) and ``.png``."""
    rows = report["checkpoints"]
    lines = ["# Evaluation", ""]
    if langs:
        lines += _perplexity_table(report, langs)
    scores = task_scores(rows)
    if scores:
        lines += _task_table(report, scores)
    draw = lambda plt: _draw(plt, rows, langs, scores)  # noqa: E731
    write_report(out, "evaluation", report, lines, draw, dpi=110)


def _draw(plt, rows: dict, langs: list[str], scores: dict[str, dict[str, float]]):
    """Perplexity per language on top (log scale), each task's first metric below."""
    first: dict[str, str] = {}  # task -> "task metric" of its first metric
    for name in scores:
        first.setdefault(name.split(" ")[0], name)
    primary = {name: scores[name] for name in first.values()}
    heights = [3.8] * bool(langs) + [0.12 * len(primary) * len(rows) + 1.5] * bool(primary)
    fig = plt.figure(figsize=(max(4.5 * len(langs), 10), sum(heights)))
    grid = fig.add_gridspec(len(heights), max(len(langs), 1), height_ratios=heights)
    for i, lang in enumerate(langs):
        ax = fig.add_subplot(grid[0, i])
        ax.bar(list(rows), [rows[k][lang]["ppl"] for k in rows], color="tab:blue")
        ax.set_title(f"{lang} perplexity (lower is better)")
        ax.tick_params(axis="x", rotation=20)
        ax.set_yscale("log")
    if primary:
        ax, height = fig.add_subplot(grid[-1, :]), 0.8 / len(rows)
        for i, label in enumerate(rows):
            values = [primary[name].get(label, float("nan")) for name in primary]
            ax.barh([j + i * height for j in range(len(primary))], values, height, label=label)
        ax.set_yticks(
            [j + 0.4 - height / 2 for j in range(len(primary))],
            [name.removeprefix("local_") for name in primary],
        )
        ax.invert_yaxis()
        ax.set_title("lm-eval, first metric of each task (higher is better)")
        ax.legend(fontsize=8)
    return fig


def write_samples(samples: dict[str, dict[str, list[dict]]], out: Path) -> None:
    """``samples/LABEL/TASK.jsonl``: each document's target and filtered responses."""
    for label, tasks in samples.items():
        (out / label).mkdir(parents=True, exist_ok=True)
        for task, rows in tasks.items():
            lines = (json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
            (out / label / f"{task}.jsonl").write_text("".join(lines))


def task_scores(rows: dict) -> dict[str, dict[str, float]]:
    """``{"task metric": {checkpoint: value}}``: every metric lm-eval reported, in task order."""
    scores: dict[str, dict[str, float]] = {}
    for label, row in rows.items():
        for task, values in row.get("tasks", {}).items():
            for metric, value in values.items():
                scores.setdefault(f"{task} {metric}", {})[label] = value
    return scores


def _perplexity_table(report: dict, langs: list[str]) -> list[str]:
    lines = [
        f"Perplexity per token of the reference tokenizer (`{report['reference_tokenizer']}`), so "
        "checkpoints with different tokenizers compare; bits per character likewise; token ratio = "
        "tokens spent / reference tokens.",
        "",
        "| checkpoint | "
        + " | ".join(f"{lang} ppl | {lang} bits/char | {lang} token ratio" for lang in langs)
        + " |",
        "|" + "---|" * (1 + 3 * len(langs)),
    ]
    for label, row in report["checkpoints"].items():
        cells = [
            f"{row[lang]['ppl']:.2f} | {row[lang]['bits_per_char']:.3f} | "
            f"{row['token_ratio'][lang]:.3f}"
            for lang in langs
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _task_table(report: dict, scores: dict[str, dict[str, float]]) -> list[str]:
    meta = report["lm_eval"]
    return [
        f"lm-eval {meta['lm_eval_version']} on the files in `{meta['benchmark_dir']}` "
        "(`eval/tasks/`); documents per task in `evaluation.json`, each document's responses "
        "in `samples/`.",
        "",
        *task_table(scores, list(report["checkpoints"])),
        "",
    ]


def task_table(scores: dict[str, dict[str, float]], labels: list[str]) -> list[str]:
    """Markdown rows: one per task and metric, one column per checkpoint."""
    lines = ["| task | metric | " + " | ".join(labels) + " |", "|" + "---|" * (2 + len(labels))]
    for name, values in scores.items():
        task, metric = name.split(" ", 1)
        cells = [f"{values[k]:.4f}" if k in values else "-" for k in labels]
        lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return lines
