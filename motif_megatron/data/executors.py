"""Run the corpus stages on datatrove's executors: local processes, a Slurm cluster or Ray.

Every stage logs to ``<logs>/<stage>`` (task logs, stats, completion markers), so a rerun skips
finished tasks whatever executor ran them. Locally and on Ray the stages run one after another
from this process; on Slurm they are submitted at once as job arrays chained by ``afterok``
dependencies, and this process waits for the last one.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from motif_megatron.errors import UserError

EXECUTORS = ("local", "slurm", "ray")


GLOBAL_BASE_GB = 2.0
GLOBAL_GB_PER_INPUT_GB = 0.1
"""A global stage's memory: the MinHash cluster stage holds ~230 bytes per near-duplicate
(``bench/corpus_scale.py``), at most every document of ~2.5 KB: 0.1 GB per GB of input text."""


def global_memory_gb(input_bytes: int) -> int:
    """Default memory of a global-stage task for ``input_bytes`` of (uncompressed) text."""
    return math.ceil(GLOBAL_BASE_GB + GLOBAL_GB_PER_INPUT_GB * input_bytes / 1e9)


@dataclass
class Stage:
    """A pipeline of datatrove steps run as ``tasks`` tasks."""

    name: str
    pipeline: list
    tasks: int
    kind: str = "document"
    """``document`` stages run ``tasks`` shares of the corpus; ``global`` ones merge every task's
    output (more memory, one or a few tasks)."""


@dataclass
class Resources:
    """What one task asks of Slurm or Ray: document tasks stream a share of the corpus, global
    tasks merge every share's output and get their own CPUs and memory."""

    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    global_cpus: int = 1
    global_mem_gb: int | None = None
    """None: :func:`global_memory_gb` of the corpus."""

    def of(self, stage: Stage) -> dict:
        """``cpus_per_task`` and ``mem_per_cpu_gb`` (whole GB: Slurm's unit) for ``stage``."""
        if stage.kind == "global":
            cpus, memory = self.global_cpus, self.global_mem_gb or GLOBAL_BASE_GB
            return {"cpus_per_task": cpus, "mem_per_cpu_gb": math.ceil(memory / cpus)}
        return {"cpus_per_task": self.cpus_per_task, "mem_per_cpu_gb": self.mem_per_cpu_gb}


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str = "24:00:00"
    poll_seconds: float = 2.0


def execute(
    stages,
    executor: str,
    workers: int,
    logs: Path,
    resources: Resources | None = None,
    slurm: SlurmOptions | None = None,
    ray_address: str | None = None,
    start_method: str = "forkserver",
) -> None:
    """Run ``stages`` (see :func:`motif_megatron.data.pipeline.stages`) on ``executor``;
    ``start_method`` starts the local executor's worker processes (``fork`` skips their imports,
    for a host process that holds no threads)."""
    resources = resources or Resources()
    if executor == "local":
        _local(stages, workers, logs, start_method)
    elif executor == "ray":
        _ray(stages, workers, logs, ray_address, resources)
    elif executor == "slurm":
        _slurm(stages, workers, logs, slurm or SlurmOptions(), resources)
    else:
        raise UserError(f"--executor {executor!r}: use one of {', '.join(EXECUTORS)}")


def _in_order(executor_class, stages, workers: int, logs: Path, options=None) -> None:
    """Each stage on ``executor_class`` after the one before it has finished; ``options(stage)``
    adds the executor's own arguments."""
    for stage in stages:
        executor_class(
            stage.pipeline,
            tasks=stage.tasks,
            workers=min(workers, stage.tasks),
            logging_dir=str(logs / stage.name),
            **(options(stage) if options else {}),
        ).run()


def _local(stages, workers: int, logs: Path, start_method: str) -> None:
    from datatrove.executor import LocalPipelineExecutor

    _in_order(
        LocalPipelineExecutor, stages, workers, logs, lambda _: {"start_method": start_method}
    )


def _ray(stages, workers: int, logs: Path, address: str | None, resources: Resources) -> None:
    try:
        import ray
        from datatrove.executor.ray import RayPipelineExecutor
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install ray") from None
    # RAY_ADDRESS or a given address joins a running cluster; else a local one is started
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    _in_order(RayPipelineExecutor, stages, workers, logs, resources.of)


def _partition(asked: str | None) -> str:
    """``asked`` if the cluster has it, else the cluster's default partition."""
    try:
        found = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("--executor slurm: no Slurm here (sinfo not found)") from None
    partitions = found.stdout.split()
    default = [p for p in partitions if p.endswith("*")] or partitions
    if found.returncode or not default:
        raise UserError(f"--executor slurm: no partition found ({found.stderr.strip()})")
    names = [p.rstrip("*") for p in partitions]
    if asked is not None and asked not in names:
        raise UserError(f"--slurm-partition {asked}: the cluster has {', '.join(names)}")
    return asked or default[0].rstrip("*")


def _slurm(stages, workers: int, logs: Path, options: SlurmOptions, resources: Resources) -> None:
    from datatrove.executor.slurm import SlurmPipelineExecutor

    partition = _partition(options.partition)
    previous, jobs = None, []
    for stage in stages:
        previous = SlurmPipelineExecutor(
            stage.pipeline,
            tasks=stage.tasks,
            workers=workers if workers > 1 else -1,
            time=options.time,
            partition=partition,
            **resources.of(stage),
            job_name=f"corpus-{stage.name}",
            venv_path=str(Path(sys.prefix) / "bin" / "activate"),
            logging_dir=str(logs / stage.name),
            slurm_logs_folder=str(logs / stage.name / "slurm"),
            depends=previous,
            mail_type="NONE",
        )
        jobs.append(previous)
    try:
        previous.run()  # submits the chain of dependencies
    except subprocess.CalledProcessError as exc:
        raise UserError(f"--executor slurm: sbatch refused a stage ({exc.output or exc})") from None
    _wait(jobs, logs / stages[-1].name, stages[-1].tasks, options.poll_seconds)


def _complete(logs: Path, tasks: int) -> bool:
    """Whether every task of the stage logging to ``logs`` has its completion marker."""
    return all((logs / "completions" / f"{rank:05d}").is_file() for rank in range(tasks))


def _wait(jobs, last_logs: Path, tasks: int, poll: float) -> None:
    """Until the last stage is complete; a job that failed (its dependents never start) stops
    the wait with the stage to look at."""
    ids = {str(j.job_id): j.job_name for j in jobs if j.job_id not in (None, -1)}
    while not _complete(last_logs, tasks):
        queue = subprocess.run(
            ["squeue", "-h", "-o", "%A %r", "-j", ",".join(ids)], capture_output=True, text=True
        )
        if queue.returncode:  # a busy controller: ask again, a failed job shows as gone
            time.sleep(poll)
            continue
        states = dict(line.split(" ", 1) for line in queue.stdout.splitlines() if " " in line)
        stuck = [
            ids.get(job.split("_")[0]) for job, why in states.items() if "DependencyNever" in why
        ]
        if stuck or not states:
            time.sleep(poll)  # the last marker may land just after the job leaves the queue
            if _complete(last_logs, tasks):
                return
            subprocess.run(["scancel", *ids])
            raise UserError(
                f"a Slurm stage failed before {stuck[0] if stuck else 'the end'}: see the task "
                f"logs under {last_logs.parent}/<stage>/logs"
            )
        time.sleep(poll)
