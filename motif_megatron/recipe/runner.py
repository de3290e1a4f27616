"""Run a recipe's arms: each step once per distinct hash, finished steps skipped, or Slurm scripts.

A step runs in ``DIR/steps/<name>-<hash>``; its marker ``step.json`` (hash, command, code
version, nodes, allocations, seconds) is written only after the command succeeds, so a failed or
interrupted recipe resumes at that step, and a recipe extended with new steps or arms runs only
what is new. The hash covers the command, the dependencies' hashes, the launcher, the contents of
the declared inputs and the project's code version (git commit and whether tracked files differ
from it, else the package version): new code reruns every step. ``--force`` and ``--from`` rerun
finished steps; one runner at a time holds ``DIR`` (a lock file). A sweep's candidates run
first (``DIR/sweep.json`` records every score and the value kept per arm); each arm then runs with
its kept value, so the candidate's steps are reused and only what follows the select step runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import motif_megatron
from motif_megatron.errors import UserError
from motif_megatron.recipe.resources import Resources
from motif_megatron.recipe.spec import Planned, Recipe, fingerprint, render

MARKER = "step.json"
JOB = "job.json"
"""What a step runs (hash, argv), written before it starts: the Slurm scripts run it from there."""
LOCK = ".run_recipe.lock"
STARTS = "allocations.txt"
"""When each Slurm allocation of a step with ranks started (a requeued step has several)."""
SUBMITTED = "slurm_job.txt"
"""The Slurm job of a submitted step (``submit.sh`` writes it)."""


@functools.cache
def code_version() -> dict:
    """The project's version as a step's identity sees it: this checkout's git commit and
    whether tracked files differ from it, else the installed package's version."""
    root = Path(motif_megatron.__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if (root / ".git").exists() and head.returncode == 0:
        dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--"], capture_output=True)
        return {"commit": head.stdout.strip(), "dirty": dirty.returncode != 0}
    return {"package": motif_megatron.__version__}


@dataclass(frozen=True)
class Job:
    """A planned step with its identity and folder."""

    planned: Planned
    digest: str
    folder: Path

    @property
    def name(self) -> str:
        return self.planned.step.name

    def done(self) -> bool:
        marker = self.folder / MARKER
        return marker.is_file() and json.loads(marker.read_text())["hash"] == self.digest

    def launch(self, folders: dict[str, str]) -> dict | None:
        """The ``launch`` of the plan this step takes its layout from (None without one)."""
        source = self.planned.step.layout
        if source is None:
            return None
        path = Path(folders[source]) / "plan.json"
        if not path.is_file():
            raise UserError(f"step {self.name}: its layout comes from {path}, not written yet")
        launch = json.loads(path.read_text()).get("launch")
        if launch is None:
            raise UserError(f"step {self.name}: {path} recommends no layout (none fits)")
        return launch

    def resources(self, folders: dict[str, str]) -> Resources:
        """The step's resources, with its plan's nodes and ranks per node when it has one."""
        own, launch = self.planned.step.resources, self.launch(folders)
        if launch is None:
            return own
        kind = "gpus_per_node" if own.gpus_per_node else "tasks_per_node"
        return replace(own, nodes=launch["nodes"], **{kind: launch["ranks_per_node"]})

    def asks(self, folders: dict[str, str]) -> str:
        """What a step with ranks asks for (``32 nodes x 8 GPUs: ``); empty for a process."""
        r = self.resources(folders)
        unit = "GPUs" if r.gpus_per_node else "ranks"
        nodes = f"{r.nodes} node{'s' if r.nodes > 1 else ''}"
        return f"{nodes} x {r.ranks_per_node} {unit}: " if r.ranks else ""

    def args(self, folders: dict[str, str]) -> list[str]:
        """The step's command (a ``.py`` script first for a step with ranks), with its plan's
        layout flags."""
        launch = self.launch(folders)
        flags = shlex.split(launch["flags"]) if launch else []
        return render(self.planned.command, folders, str(self.folder)) + flags

    def argv(self, folders: dict[str, str]) -> list[str]:
        """How this machine runs it: every rank of every node under one torchrun."""
        args, ranks = self.args(folders), self.resources(folders).ranks
        if ranks:
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            return [torchrun, f"--nproc_per_node={ranks}", *args]
        return [sys.executable, *args] if args and args[0].endswith(".py") else args


def jobs(
    recipe: Recipe,
    arm: str,
    out: Path,
    overrides: dict | None = None,
    targets: list[str] | None = None,
) -> list[Job]:
    """The arm's steps in order, each with its hash (dependencies enter by their hashes)."""
    digests: dict[str, str] = {}
    result = []
    for planned in recipe.plan(arm, overrides, targets):
        identity = {
            "name": planned.step.name,
            "run": render(
                planned.command, {d: f"<{d}:{digests[d]}>" for d in planned.deps}, "<out>"
            ),
            "ranks": planned.step.resources.ranks,
            "inputs": [fingerprint(Path(i)) for i in planned.inputs],
            "code": code_version(),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        digests[planned.step.name] = digest
        result.append(Job(planned, digest, out / "steps" / f"{planned.step.name}-{digest}"))
    return result


def _folders(arm_jobs: list[Job]) -> dict[str, str]:
    return {j.name: str(j.folder) for j in arm_jobs}


def prepare(job: Job, folders: dict[str, str], again: bool) -> list[str]:
    """The step's folder with its ``job.json`` (emptied first when it runs ``again``; the
    allocations of an earlier submission forgotten)."""
    if again and job.folder.exists():
        shutil.rmtree(job.folder)
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / STARTS).unlink(missing_ok=True)
    argv = job.argv(folders)
    (job.folder / JOB).write_text(json.dumps({"hash": job.digest, "argv": argv}, indent=2))
    return argv


def run_step(folder: Path) -> None:
    """Run the step prepared in ``folder`` (output to ``log.txt`` and stdout) and write its
    marker; here or in a Slurm job, where the marker names the job's nodes and allocations."""
    job = json.loads((folder / JOB).read_text())
    start = time.time()
    with open(folder / "log.txt", "ab") as log:
        proc = subprocess.Popen(job["argv"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if proc.wait():
            raise UserError(
                f"step {folder.name.rsplit('-', 1)[0]} failed (exit {proc.returncode}): see "
                f"{folder / 'log.txt'}; rerun the recipe to resume from it"
            )
    mark_done(folder, time.time() - start)


def mark_done(folder: Path, seconds: float) -> None:
    """Write the step's marker: it ran to its end (in a Slurm job: on which nodes, in how many
    allocations), ``seconds`` from its first start (requeue waits included)."""
    marker = {
        **json.loads((folder / JOB).read_text()),
        "code": code_version(),
        "nodes": os.environ.get("SLURM_JOB_NODELIST", socket.gethostname()),
        "allocations": int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1,
        "seconds": round(seconds, 3),
    }
    (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def execute(job: Job, folders: dict[str, str], arm: str, again: bool = False) -> None:
    argv = prepare(job, folders, again)
    print(f"[{arm}] {job.name}: {shlex.join(argv)}", flush=True)
    run_step(job.folder)


@dataclass(frozen=True)
class Rerun:
    """Finished steps to run again: ``force`` (and every step that reads them), and every step
    from ``start`` on."""

    force: frozenset[str] = frozenset()
    start: str | None = None

    def check(self, recipe: Recipe) -> None:
        for name in (*self.force, *([self.start] if self.start else [])):
            if name not in recipe.steps:
                raise UserError(f"--force/--from {name}: not a step of {recipe.name}")

    def names(self, arm_jobs: list[Job]) -> set[str]:
        """The steps of an arm (in run order) to run again."""
        order = [j.name for j in arm_jobs]
        again = set(self.force)
        if self.start in order:
            again |= set(order[order.index(self.start) :])
        for job in arm_jobs:
            if again & set(job.planned.deps):
                again.add(job.name)
        return again


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold ``out`` for this runner: a second one on the same folder stops in one line."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise UserError(
                f"{out} is in use by another run_recipe.py ({handle.read().strip()}): wait for it "
                "to end, or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}\n")
        handle.flush()
        yield


def _preview(job: Job, folders: dict[str, str], label: str) -> None:
    """A ``dry_run`` step in a dry run: run it, and on failure say so and go on (its inputs,
    such as a model not yet downloaded, may not exist before the real run)."""
    try:
        execute(job, folders, label)
    except UserError:
        lines = (job.folder / "log.txt").read_text(errors="replace").strip().splitlines()
        print(f"[{label}] {job.name}: preview failed, going on: {lines[-1] if lines else ''}")


def _dry_line(job: Job, folders: dict[str, str]) -> str:
    """What a dry run prints of a step that would run: its resources and command, or why its
    plan's layout is not known."""
    try:
        return job.asks(folders) + shlex.join(job.argv(folders))
    except UserError as exc:
        return f"{exc} (the plan step's preview failed)"


def _run_arm(label: str, arm_jobs: list[Job], ran: set[str], dry_run: bool, rerun: Rerun) -> None:
    folders, again = _folders(arm_jobs), rerun.names(arm_jobs)
    for job in arm_jobs:
        if job.digest in ran:
            print(f"[{label}] {job.name}: shared with an earlier arm ({job.folder})")
        elif job.done() and job.name not in again:
            print(f"[{label}] {job.name}: done ({job.folder})")
        elif dry_run and job.planned.step.dry_run:
            _preview(job, folders, label)
        elif dry_run:
            print(f"[{label}] {job.name}: {_dry_line(job, folders)}")
        else:
            execute(job, folders, label, again=job.name in again)
        ran.add(job.digest)


def candidates(recipe: Recipe, out: Path) -> dict[str, dict[str, list[Job]]]:
    """Per arm and sweep value (as text), the jobs up to the sweep's select step."""
    sweep = recipe.sweep
    return {
        arm: {
            str(v): jobs(recipe, arm, out, {sweep["setting"]: v}, [sweep["select"]])
            for v in sweep["values"]
        }
        for arm in recipe.arm_names()
    }


def score(job: Job, metric: str) -> float | None:
    """The last ``metric`` in the step's ``metrics.jsonl`` (NaN counts as +inf); None before
    the step has run."""
    path = job.folder / "metrics.jsonl"
    if not job.done():
        return None
    if not path.is_file():
        raise UserError(f"sweep: {path} not found (the select step writes {{out}}/metrics.jsonl)")
    values = [r[metric] for r in map(json.loads, path.read_text().splitlines()) if metric in r]
    if not values:
        raise UserError(f"sweep: {path} has no {metric!r} (does the step evaluate?)")
    return math.inf if math.isnan(values[-1]) else values[-1]


def choose(recipe: Recipe, out: Path, arm_candidates: dict) -> dict[str, dict] | None:
    """Per arm, every value's score and the kept value (``DIR/sweep.json``); None while a
    candidate has not run."""
    metric = str(recipe.sweep.get("metric", "eval_loss"))
    result = {}
    for arm, by_value in arm_candidates.items():
        scores = {v: score(js[-1], metric) for v, js in by_value.items()}
        if None in scores.values():
            return None
        kept = min(scores, key=scores.get)
        value = recipe.sweep["values"][list(by_value).index(kept)]
        result[arm] = {"setting": recipe.sweep["setting"], "scores": scores, "kept": value}
    (out / "sweep.json").write_text(json.dumps({"metric": metric, "arms": result}, indent=2) + "\n")
    return result


def repeats(recipe: Recipe, out: Path, kept: dict[str, dict]) -> dict[str, dict[str, list[Job]]]:
    """Per arm the seeds repeat, per seed value after the first, its jobs up to the report's
    step at the arm's kept sweep value, with the seeds' own ``settings`` (such as leaving out
    what only the headline run's report reads)."""
    setting, own = recipe.seeds.get("setting"), recipe.seeds.get("settings", {})
    return {
        arm: {
            str(v): jobs(
                recipe, arm, out, kept.get(arm, {}) | own | {setting: v}, [recipe.report["step"]]
            )
            for v in recipe.seeds["values"][1:]
        }
        for arm in recipe.seed_arms()
    }


def _seeds(recipe: Recipe, plans: dict, kept: dict, seeded: dict) -> dict | None:
    """Per arm, each seed's jobs, the arm's own run first (None without ``seeds``)."""
    if not recipe.seeds:
        return None
    setting = recipe.seeds["setting"]
    return {
        arm: {str(recipe.settings_of(arm, kept.get(arm))[setting]): arm_jobs} | seeded.get(arm, {})
        for arm, arm_jobs in plans.items()
    }


def _kept(recipe: Recipe, chosen: dict | None) -> dict[str, dict]:
    if not chosen:
        return {}
    return {arm: {recipe.sweep["setting"]: c["kept"]} for arm, c in chosen.items()}


def run(
    recipe: Recipe, out: Path, dry_run: bool = False, rerun: Rerun = Rerun()
) -> dict[str, list[Job]]:
    """Every arm's steps in order (after the sweep's candidates, if any); returns the jobs per
    arm (``DIR/arms/<arm>.json`` too)."""
    rerun.check(recipe)
    ran: set[str] = set()
    chosen = None
    if recipe.sweep:
        out.mkdir(parents=True, exist_ok=True)
        arm_candidates = candidates(recipe, out)
        for arm, by_value in arm_candidates.items():
            for value, arm_jobs in by_value.items():
                label = f"{arm} {recipe.sweep['setting']}={value}"
                _run_arm(label, arm_jobs, ran, dry_run, rerun)
        chosen = None if dry_run else choose(recipe, out, arm_candidates)
    kept = _kept(recipe, chosen)
    plans = {arm: jobs(recipe, arm, out, kept.get(arm)) for arm in recipe.arm_names()}
    for arm, arm_jobs in plans.items():
        if dry_run and recipe.sweep:
            again = ""
            if arm in recipe.seed_arms():
                values = ", ".join(str(v) for v in recipe.seeds["values"][1:])
                again = f", then again at {recipe.seeds['setting']} {values}"
            print(
                f"[{arm}] then the steps after {recipe.sweep['select']} with the kept value{again}"
            )
            continue
        _run_arm(arm, arm_jobs, ran, dry_run, rerun)
        folders = _folders(arm_jobs)
        if not dry_run:
            (out / "arms").mkdir(parents=True, exist_ok=True)
            (out / "arms" / f"{arm}.json").write_text(json.dumps(folders, indent=2) + "\n")
    seeded = {} if dry_run and recipe.sweep else repeats(recipe, out, kept)
    for arm, by_seed in seeded.items():
        for value, arm_jobs in by_seed.items():
            _run_arm(f"{arm} {recipe.seeds['setting']}={value}", arm_jobs, ran, dry_run, rerun)
    if recipe.report and not dry_run:
        from motif_megatron.recipe import ablation

        ablation.write(out, plans, recipe.report, chosen, _seeds(recipe, plans, kept, seeded))
    return plans


def _slurm_units(recipe: Recipe, out: Path) -> list[tuple[str, list[Job]]]:
    """The arms to submit: a sweep's candidates until they have all run, then the arms with
    their kept values (and the seeds' repeats)."""
    kept = {}
    if recipe.sweep:
        arm_candidates = candidates(recipe, out)
        chosen = choose(recipe, out, arm_candidates)
        if chosen is None:
            print(
                "the sweep's candidates come first: run --slurm again once they have finished "
                "to submit the arms with their kept values"
            )
            setting = recipe.sweep["setting"]
            return [
                (f"{arm} {setting}={value}", arm_jobs)
                for arm, by_value in arm_candidates.items()
                for value, arm_jobs in by_value.items()
            ]
        kept = _kept(recipe, chosen)
    units = [(arm, jobs(recipe, arm, out, kept.get(arm))) for arm in recipe.arm_names()]
    setting = recipe.seeds.get("setting")
    return units + [
        (f"{arm} {setting}={value}", arm_jobs)
        for arm, by_seed in repeats(recipe, out, kept).items()
        for value, arm_jobs in by_seed.items()
    ]


ROOT = Path(__file__).resolve().parents[2]
STOP_SIGNAL = "B:USR1@300"
"""``--signal`` of a step with ranks unless the recipe's ``slurm`` options set one: SIGUSR1 to
the batch shell five minutes before the time limit (launch.sh passes it to the ranks)."""


def step_script(recipe: Recipe, job: Job, folders: dict[str, str]) -> str:
    """The sbatch script of one step: its resources, then a step with ranks through
    ``examples/slurm/launch.sh`` (srun per rank, signals, requeue on a stop; the folder is its
    ``SAVE``), any other step through :func:`run_step`; both end by writing the marker. It
    runs in the folder the runner ran in, as the step's command would here."""
    resources = job.resources(folders)
    options = {"job-name": f"{recipe.name}-{job.name}", "output": f"{job.folder}/slurm-%j.out"}
    options |= {k.replace("_", "-"): v for k, v in recipe.slurm.items()} | resources.sbatch()
    runner = [sys.executable, str(ROOT / "tools/run_recipe.py")]
    if resources.ranks:
        options = {"open-mode": "append", "requeue": None, "signal": STOP_SIGNAL} | options
        env = f"export PYTHON={shlex.quote(sys.executable)} SAVE={shlex.quote(str(job.folder))}"
        starts = shlex.quote(str(job.folder / STARTS))
        body = [
            env,
            f"date +%s >> {starts}",  # one line per allocation: the step's time counts from the first
            f"source {shlex.quote(str(ROOT / 'examples/slurm/launch.sh'))}",
            f"launch {shlex.join(job.args(folders))}",
            shlex.join([*runner, "--mark-done", str(job.folder)])
            + f' --seconds "$(($(date +%s) - $(head -n 1 {starts})))"',
        ]
    else:
        body = [shlex.join([*runner, "--run-step", str(job.folder)])]
    header = [f"#SBATCH --{k}" + ("" if v is None else f"={v}") for k, v in options.items()]
    lines = ["#!/usr/bin/env bash", *header, "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}"]
    return "\n".join([*lines, *body]) + "\n"


def queued_job(folder: Path) -> str | None:
    """The step's Slurm job while Slurm still holds it (pending, running, requeued), else None."""
    path = folder / SUBMITTED
    if not path.is_file():
        return None
    job = path.read_text().strip()
    shown = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True)
    return job if shown.returncode == 0 and shown.stdout.strip() else None


def write_slurm(recipe: Recipe, out: Path, rerun: Rerun = Rerun()) -> Path:
    """One sbatch script per step not yet done (shared steps once, :func:`step_script`) and
    ``submit.sh``, which submits them in order, each after the jobs of its dependencies
    (``afterok``: a requeued step's dependents wait for its real end). A step whose job is still
    queued is not submitted again: its dependents wait for that job. A ``dry_run`` step (a plan)
    runs here first: the steps that take their layout from it are sized by it."""
    rerun.check(recipe)
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "#!/usr/bin/env bash",
        "# submits the recipe's steps, each after its dependencies",
        "set -euo pipefail",
    ]
    submitted: dict[str, str] = {}
    for arm, arm_jobs in _slurm_units(recipe, out):
        folders, by_name = _folders(arm_jobs), {j.name: j for j in arm_jobs}
        again = rerun.names(arm_jobs)
        for job in arm_jobs:
            if (job.done() and job.name not in again) or job.digest in submitted:
                continue
            if job.planned.step.dry_run:
                execute(job, folders, arm, again=job.name in again)
                continue
            var, folder_q = f"job_{len(submitted)}", shlex.quote(str(job.folder))
            held = None if job.name in again else queued_job(job.folder)
            if held:
                lines.append(f"{var}={held}  # {arm}/{job.name} is still queued")
            else:
                prepare(job, folders, job.name in again)  # Slurm opens --output before the job
                script = folder / f"{job.name}-{job.digest}.sbatch"
                script.write_text(step_script(recipe, job, folders))
                deps = [
                    submitted[by_name[d].digest]
                    for d in job.planned.deps
                    if by_name[d].digest in submitted
                ]
                after = f"--dependency=afterok:{':'.join(f'${v}' for v in deps)} " if deps else ""
                lines.append(f"{var}=$(sbatch --parsable {after}{shlex.quote(str(script))})")
                lines.append(f'echo "${var}" > {folder_q}/{SUBMITTED}')
            lines.append(f'printf "%s\\t%s\\t%s\\n" "{arm}/{job.name}" "${var}" {folder_q}')
            submitted[job.digest] = var
    submit = folder / "submit.sh"
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit


def submit_and_wait(submit: Path, poll: float = 5.0) -> list[str]:
    """Run ``submit.sh`` and wait until none of its jobs is queued or running any more (a
    requeued job comes back as pending); returns the steps that did not complete (no marker),
    as ``arm/step``."""
    printed = subprocess.run(["bash", str(submit)], capture_output=True, text=True)
    if printed.returncode:
        raise UserError(f"{submit} failed: {printed.stderr.strip().splitlines()[-1:]}")
    print(printed.stdout, end="", flush=True)
    submitted = [line.split("\t") for line in printed.stdout.splitlines() if "\t" in line]
    ids = ",".join(job for _, job, _ in submitted)
    while ids:
        queued = subprocess.run(["squeue", "-h", "-j", ids, "-o", "%i"], capture_output=True)
        if queued.returncode == 0 and not queued.stdout.strip():
            break
        time.sleep(poll)
    return [step for step, _, folder in submitted if not (Path(folder) / MARKER).is_file()]
