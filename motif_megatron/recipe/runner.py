"""Run a recipe's arms: each step once per distinct hash, finished steps skipped, or Slurm scripts.

A step runs in ``DIR/steps/<name>-<hash>``; its marker ``step.json`` (hash, command, seconds) is
written only after the command succeeds, so a failed or interrupted recipe resumes at that step,
and a recipe extended with new steps or arms runs only what is new.
"""

from __future__ import annotations

import hashlib
import json
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


def jobs(recipe: Recipe, arm: str, out: Path) -> list[Job]:
    """The arm's steps in order, each with its hash (dependencies enter by their hashes)."""
    digests: dict[str, str] = {}
    result = []
    for planned in recipe.plan(arm):
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


def run(recipe: Recipe, out: Path, dry_run: bool = False) -> dict[str, list[Job]]:
    """Every arm's steps in order; returns the jobs per arm (``DIR/arms/<arm>.json`` too)."""
    plans = {arm: jobs(recipe, arm, out) for arm in recipe.arm_names()}
    ran: set[str] = set()
    for arm, arm_jobs in plans.items():
        folders = _folders(arm_jobs)
        for job in arm_jobs:
            if job.done():
                print(f"[{arm}] {job.name}: done ({job.folder})")
            elif job.digest in ran:
                print(f"[{arm}] {job.name}: shared with an earlier arm ({job.folder})")
            elif dry_run:
                print(f"[{arm}] {job.name}: {shlex.join(job.argv(folders))}")
            else:
                execute(job, folders, arm)
            ran.add(job.digest)
        if not dry_run:
            (out / "arms").mkdir(parents=True, exist_ok=True)
            (out / "arms" / f"{arm}.json").write_text(json.dumps(folders, indent=2) + "\n")
    if recipe.report and not dry_run:
        from motif_megatron.recipe import ablation

        ablation.write(out, plans, recipe.report)
    return plans


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
    for arm, arm_jobs in ((a, jobs(recipe, a, out)) for a in recipe.arm_names()):
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
