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
        help="replace a setting of the recipe (repeatable; arms still override it)",
    )
    p.add_argument(
        "--slurm", action="store_true", help="write one sbatch script per step and submit.sh"
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
    args = p.parse_args()
    if not args.run_step and not (args.recipe and args.out):
        p.error("RECIPE and --out are required")
    return args


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.recipe.runner import Rerun, locked, run, run_step, write_slurm
    from motif_megatron.recipe.spec import Recipe

    if args.run_step:
        run_step(Path(args.run_step))
        return
    recipe = Recipe.load(args.recipe, dict(item.partition("=")[::2] for item in args.set))
    out, rerun = Path(args.out), Rerun(frozenset(args.force), args.start)
    if args.slurm:
        with locked(out):
            submit = write_slurm(recipe, out, rerun)
        print(f"wrote the step scripts and {submit}: run `bash {submit}` to submit them")
        return
    with locked(out) if not args.dry_run else contextlib.nullcontext():
        run(recipe, out, dry_run=args.dry_run, rerun=rerun)
    if recipe.report and not args.dry_run:
        print((out / "ablation.md").read_text().strip())


if __name__ == "__main__":
    main()
