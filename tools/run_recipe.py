#!/usr/bin/env python
"""Run a declarative recipe: the project's commands as steps, ablation arms, resume by hash.

  python tools/run_recipe.py examples/recipes/demo.yaml --out outputs/demo
  python tools/run_recipe.py examples/recipes/motif-102b.yaml --out runs/motif --dry-run
  python tools/run_recipe.py RECIPE.yaml --out DIR --slurm     # then: bash DIR/slurm/submit.sh
  python tools/run_recipe.py RECIPE.yaml --out DIR --set base=models/my-llama --set iters=100
  python tools/run_recipe.py RECIPE.yaml --out DIR --force evaluate --from finalize

Each step runs in ``DIR/steps/<name>-<hash>`` and is skipped when a finished step with the same
hash (its command, its dependencies' hashes, the contents of its inputs, the project's code
version) exists: a failed recipe resumes at the failed step, and arms share every step they agree
on. One runner at a time works in DIR. See motif_megatron/recipe/spec.py for the file format.
"""

import argparse
import contextlib
from pathlib import Path

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML")
    p.add_argument("--out", help="output folder (steps/, arms/, slurm/)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="replace a setting of the recipe (repeatable; one that an arm or the sweep sets is "
        "refused)",
    )
    p.add_argument(
        "--slurm", action="store_true", help="write one sbatch script per step and submit.sh"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --slurm: submit the steps and wait for them to end; exit 0 only when every "
        "step completed",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="run STEP again although it is done, and every step that reads it (repeatable; "
        "its folder is emptied first)",
    )
    p.add_argument(
        "--from", dest="start", metavar="STEP", help="run STEP and every step after it again"
    )
    p.add_argument(
        "--run-step",
        metavar="FOLDER",
        help="run the step prepared in FOLDER and write its marker (what the Slurm scripts call)",
    )
    p.add_argument(
        "--mark-done",
        metavar="FOLDER",
        help="write the marker of the step prepared in FOLDER, which ran for --seconds "
        "(what the Slurm scripts of steps with ranks call after their launch)",
    )
    p.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if not (args.run_step or args.mark_done) and not (args.recipe and args.out):
        p.error("RECIPE and --out are required")
    return args


def slurm(recipe, out: Path, rerun, wait: bool) -> None:
    """Write the step scripts; with ``wait``, submit them and return once every step ended."""
    from motif_megatron.errors import UserError
    from motif_megatron.recipe.runner import run, submit_and_wait, write_slurm

    submit = write_slurm(recipe, out, rerun)
    if not wait:
        print(f"wrote the step scripts and {submit}: run `bash {submit}` to submit them")
        return
    failed = submit_and_wait(submit)
    if failed:
        raise UserError(
            f"{len(failed)} steps did not complete: {', '.join(failed)} (their slurm-*.out logs "
            "are in their folders); run the recipe again to resume"
        )
    run(recipe, out)  # every step is done: the arms' folders and the report


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.recipe.runner import Rerun, locked, mark_done, run, run_step
    from motif_megatron.recipe.spec import Recipe

    if args.run_step:
        run_step(Path(args.run_step))
        return
    if args.mark_done:
        mark_done(Path(args.mark_done), args.seconds)
        return
    recipe = Recipe.load(args.recipe, dict(item.partition("=")[::2] for item in args.set))
    out, rerun = Path(args.out), Rerun(frozenset(args.force), args.start)
    if args.slurm:
        with locked(out):
            slurm(recipe, out, rerun, args.wait)
        return
    with locked(out) if not args.dry_run else contextlib.nullcontext():
        run(recipe, out, dry_run=args.dry_run, rerun=rerun)
    if recipe.report and not args.dry_run:
        print((out / "ablation.md").read_text().strip())


if __name__ == "__main__":
    main()
