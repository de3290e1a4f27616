"""lm-eval on local benchmark files: KoBEST, KMMLU, HAE-RAE, KorMedMCQA, and MMLU/HellaSwag for
English forgetting.

The task YAMLs in ``eval/tasks/`` read ``dataset_path: json`` with ``data_files`` relative to a
benchmark folder (nothing here can reach a hub), laid out as the hub datasets' configs and
splits: ``kobest/boolq/test.jsonl``, ``kmmlu/test/*.jsonl``, ... (``required_files`` lists them).
They are plain lm-eval tasks: ``lm_eval --include_path TASKS_DIR`` run from the benchmark folder
works too.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from motif_megatron.errors import UserError

TASKS_DIR = Path(__file__).with_name("tasks")
ENV = "MOTIF_BENCHMARKS"
DEFAULT_DIR = "data/benchmarks"


@dataclass
class TaskSpec:
    """Which lm-eval tasks (or groups) to run, on which benchmark folder."""

    names: list[str]
    root: str | Path | None = None
    limit: int | None = None
    num_fewshot: int | None = None

    @property
    def folder(self) -> Path:
        """``root``, else ``$MOTIF_BENCHMARKS``, else ``data/benchmarks``."""
        return Path(self.root or os.environ.get(ENV) or DEFAULT_DIR).resolve()


@functools.cache
def task_manager():
    """lm-eval's built-in tasks plus ours (indexing takes seconds, so once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def local_names() -> list[str]:
    """Task and group names defined in ``TASKS_DIR``."""
    return sorted(
        name
        for name, entry in task_manager().task_index.items()
        if entry.yaml_path is not None and Path(entry.yaml_path).parent == TASKS_DIR
    )


def leaf_tasks(names: list[str]) -> list[str]:
    """Groups expanded to their tasks; unknown names are an error that lists the local ones."""
    index = task_manager().task_index
    out: list[str] = []
    for name in names:
        entry = index.get(name)
        if entry is None:
            raise UserError(
                f"unknown lm-eval task {name!r}; local tasks: {', '.join(local_names())}"
            )
        children = (entry.cfg or {}).get("task") if entry.kind.name == "GROUP" else None
        out += leaf_tasks(list(children)) if children else [name]
    return list(dict.fromkeys(out))


def required_files(names: list[str]) -> dict[str, list[str]]:
    """``{task: [data_files patterns]}`` for the local tasks among ``names`` (hub tasks: none)."""
    out = {}
    for name in leaf_tasks(names):
        cfg = task_manager().task_index[name].cfg or {}
        if cfg.get("dataset_path") == "json":
            files = cfg.get("dataset_kwargs", {}).get("data_files", {})
            out[name] = [files] if isinstance(files, str) else list(files.values())
    return out


def check_files(spec: TaskSpec) -> None:
    """Fail before any model loads when a task's files are not in the benchmark folder."""
    missing = [
        pattern
        for patterns in required_files(spec.names).values()
        for pattern in patterns
        if not glob.glob(str(spec.folder / pattern))
    ]
    if missing:
        raise UserError(
            f"benchmark files missing under {spec.folder}: {', '.join(missing)} "
            f"(set --benchmark-dir or ${ENV}; see README 'Benchmarks for lm-eval')"
        )


def metrics(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's ``results`` as ``{task: {metric: value}}``; ``metric,filter`` keys lose a
    ``none`` filter, stderr, aliases and groups without an aggregate are dropped."""
    out = {}
    for task, row in results.items():
        clean = {}
        for key, value in row.items():
            metric, _, filt = key.partition(",")
            if filt and "_stderr" not in metric and isinstance(value, (int, float)):
                clean[metric if filt == "none" else f"{metric}[{filt}]"] = float(value)
        if clean:
            out[task] = clean
    return out


def run(
    model: str,
    model_args: dict[str, Any],
    spec: TaskSpec,
    seed: int = 1234,
    log_samples: bool = False,
) -> dict | None:
    """``{"tasks": {task: {metric: value}}, "versions", "n_samples", "benchmark_dir"}``, plus
    ``"samples": {task: [{"doc_id", "target", "resps"}]}`` (filtered responses) if asked.
    Under torchrun every rank runs the model, but lm-eval reports on local rank 0 only: the
    others get None.

    ``model`` is an lm-eval model name (``motif`` for a Megatron checkpoint, ``hf`` for an
    export). Relative ``data_files`` resolve against the working directory, so lm-eval runs
    inside the benchmark folder: paths in ``model_args`` must be absolute.
    """
    from lm_eval import simple_evaluate

    from motif_megatron.eval.lm_eval_model import register

    register()
    check_files(spec)
    with contextlib.chdir(spec.folder):
        out = simple_evaluate(
            model=model,
            model_args=model_args,
            tasks=spec.names,
            task_manager=task_manager(),
            limit=spec.limit,
            num_fewshot=spec.num_fewshot,
            batch_size=1,
            log_samples=log_samples,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    if out is None:
        return None
    result = {
        "benchmark_dir": str(spec.folder),
        "tasks": metrics(out["results"]),
        "versions": dict(out["versions"]),
        "n_samples": {k: v.get("effective") for k, v in out.get("n-samples", {}).items()},
    }
    if log_samples:
        result["samples"] = {
            task: [
                {"doc_id": s["doc_id"], "target": s["target"], "resps": s["filtered_resps"]}
                for s in rows
            ]
            for task, rows in out["samples"].items()
        }
    return result
