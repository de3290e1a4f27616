"""Run a recipe's arms: each step once per distinct hash, finished steps skipped, or Slurm scripts.

A step runs in ``DIR/steps/<name>-<hash>``; its marker ``step.json`` (hash, command, seconds) is
written only after the command succeeds, so a failed or interrupted recipe resumes at that step,
and a recipe extended with new steps or arms runs only what is new. A sweep's candidates run
first (``DIR/sweep.json`` records every score and the value kept per arm); each arm then runs with
its kept value, so the candidate's steps are reused and only what follows the select step runs.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from motif_megatron.errors import UserError
from motif_megatron.recipe.spec import Planned, Recipe, fingerprint, render

MARKER = "step.json"


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

    def argv(self, folders: dict[str, str]) -> list[str]:
        args = render(self.planned.command, folders, str(self.folder))
        if self.planned.step.torchrun:
            torchrun = str(Path(sys.executable).with_name("torchrun"))
            return [torchrun, f"--nproc_per_node={self.planned.step.torchrun}", *args]
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
            "torchrun": planned.step.torchrun,
            "inputs": [fingerprint(Path(i)) for i in planned.inputs],
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        digests[planned.step.name] = digest
        result.append(Job(planned, digest, out / "steps" / f"{planned.step.name}-{digest}"))
    return result


def _folders(arm_jobs: list[Job]) -> dict[str, str]:
    return {j.name: str(j.folder) for j in arm_jobs}


def execute(job: Job, folders: dict[str, str], arm: str) -> None:
    job.folder.mkdir(parents=True, exist_ok=True)
    argv = job.argv(folders)
    print(f"[{arm}] {job.name}: {shlex.join(argv)}", flush=True)
    start = time.time()
    with open(job.folder / "log.txt", "ab") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for line in proc.stdout:
            log.write(line)
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if proc.wait():
            raise UserError(
                f"step {job.name} failed (exit {proc.returncode}): see {job.folder / 'log.txt'}; "
                "rerun the recipe to resume from it"
            )
    marker = {"hash": job.digest, "argv": argv, "seconds": round(time.time() - start, 3)}
    (job.folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def _preview(job: Job, folders: dict[str, str], label: str) -> None:
    """A ``dry_run`` step in a dry run: run it, and on failure say so and go on (its inputs,
    such as a model not yet downloaded, may not exist before the real run)."""
    try:
        execute(job, folders, label)
    except UserError:
        lines = (job.folder / "log.txt").read_text(errors="replace").strip().splitlines()
        print(f"[{label}] {job.name}: preview failed, going on: {lines[-1] if lines else ''}")


def _run_arm(label: str, arm_jobs: list[Job], ran: set[str], dry_run: bool) -> None:
    folders = _folders(arm_jobs)
    for job in arm_jobs:
        if job.done():
            print(f"[{label}] {job.name}: done ({job.folder})")
        elif job.digest in ran:
            print(f"[{label}] {job.name}: shared with an earlier arm ({job.folder})")
        elif dry_run and job.planned.step.dry_run:
            _preview(job, folders, label)
        elif dry_run:
            print(f"[{label}] {job.name}: {shlex.join(job.argv(folders))}")
        else:
            execute(job, folders, label)
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


def _kept(recipe: Recipe, chosen: dict | None) -> dict[str, dict]:
    if not chosen:
        return {}
    return {arm: {recipe.sweep["setting"]: c["kept"]} for arm, c in chosen.items()}


def run(recipe: Recipe, out: Path, dry_run: bool = False) -> dict[str, list[Job]]:
    """Every arm's steps in order (after the sweep's candidates, if any); returns the jobs per
    arm (``DIR/arms/<arm>.json`` too)."""
    ran: set[str] = set()
    chosen = None
    if recipe.sweep:
        out.mkdir(parents=True, exist_ok=True)
        arm_candidates = candidates(recipe, out)
        for arm, by_value in arm_candidates.items():
            for value, arm_jobs in by_value.items():
                _run_arm(f"{arm} {recipe.sweep['setting']}={value}", arm_jobs, ran, dry_run)
        chosen = None if dry_run else choose(recipe, out, arm_candidates)
    kept = _kept(recipe, chosen)
    plans = {arm: jobs(recipe, arm, out, kept.get(arm)) for arm in recipe.arm_names()}
    for arm, arm_jobs in plans.items():
        if dry_run and recipe.sweep:
            print(f"[{arm}] then the steps after {recipe.sweep['select']} with the kept value")
            continue
        _run_arm(arm, arm_jobs, ran, dry_run)
        folders = _folders(arm_jobs)
        if not dry_run:
            (out / "arms").mkdir(parents=True, exist_ok=True)
            (out / "arms" / f"{arm}.json").write_text(json.dumps(folders, indent=2) + "\n")
    if recipe.report and not dry_run:
        from motif_megatron.recipe import ablation

        ablation.write(out, plans, recipe.report, chosen)
    return plans


def _slurm_units(recipe: Recipe, out: Path) -> list[tuple[str, list[Job]]]:
    """The arms to submit: a sweep's candidates until they have all run, then the arms with
    their kept values."""
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
        return [(arm, jobs(recipe, arm, out, kept.get(arm))) for arm in recipe.arm_names()]
    return [(arm, jobs(recipe, arm, out)) for arm in recipe.arm_names()]


def write_slurm(recipe: Recipe, out: Path) -> Path:
    """One sbatch script per step not yet done (shared steps once) and ``submit.sh``, which
    submits them in order, each after the jobs of its dependencies (``afterok``)."""
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "#!/usr/bin/env bash",
        "# submits the recipe's steps, each after its dependencies",
        "set -euo pipefail",
    ]
    options = "".join(f"#SBATCH --{k.replace('_', '-')}={v}\n" for k, v in recipe.slurm.items())
    submitted: dict[str, str] = {}
    for arm, arm_jobs in _slurm_units(recipe, out):
        folders, by_name = _folders(arm_jobs), {j.name: j for j in arm_jobs}
        for job in arm_jobs:
            if job.done() or job.digest in submitted:
                continue
            argv = job.argv(folders)
            job.folder.mkdir(parents=True, exist_ok=True)  # Slurm opens --output before the job
            marker = json.dumps({"hash": job.digest, "argv": argv})
            script = folder / f"{job.name}-{job.digest}.sbatch"
            script.write_text(
                f"#!/usr/bin/env bash\n#SBATCH --job-name={recipe.name}-{job.name}\n"
                f"#SBATCH --output={job.folder}/slurm-%j.out\n{options}set -euo pipefail\n"
                f"{shlex.join(argv)}\n"
                f"echo {shlex.quote(marker)} > {shlex.quote(str(job.folder / MARKER))}\n"
            )
            deps = [
                submitted[by_name[d].digest]
                for d in job.planned.deps
                if by_name[d].digest in submitted
            ]
            after = f"--dependency=afterok:{':'.join(f'${v}' for v in deps)} " if deps else ""
            var = f"job_{len(submitted)}"
            lines.append(f"{var}=$(sbatch --parsable {after}{shlex.quote(str(script))})")
            lines.append(f'echo "{arm}/{job.name}: job ${var}"')
            submitted[job.digest] = var
    submit = folder / "submit.sh"
    submit.write_text("\n".join(lines) + "\n")
    submit.chmod(0o755)
    return submit
