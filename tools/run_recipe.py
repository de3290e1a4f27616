#!/usr/bin/env python
"""Run a declarative recipe: the project's commands as steps, ablation arms, resume by hash.

  python tools/run_recipe.py examples/recipes/demo.yaml --out outputs/demo
  python tools/run_recipe.py examples/recipes/motif-102b.yaml --out runs/motif --dry-run
  python tools/run_recipe.py RECIPE.yaml --out DIR --slurm     # then: bash DIR/slurm/submit.sh
  python tools/run_recipe.py RECIPE.yaml --out DIR --set base=models/my-llama --set iters=100

Each step runs in ``DIR/steps/<name>-<hash>`` and is skipped when a finished step with the same
hash (its command, its dependencies' hashes, the contents of its inputs) exists: a failed recipe
resumes at the failed step, and arms share every step they agree on. See
motif_megatron/recipe/spec.py for the file format.
"""

import argparse
from pathlib import Path

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--out", required=True, help="output folder (steps/, arms/, slurm/)")
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
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.recipe.runner import run, write_slurm
    from motif_megatron.recipe.spec import Recipe

    recipe = Recipe.load(args.recipe, dict(item.partition("=")[::2] for item in args.set))
    out = Path(args.out)
    if args.slurm:
        submit = write_slurm(recipe, out)
        print(f"wrote the step scripts and {submit}: run `bash {submit}` to submit them")
        return
    run(recipe, out, dry_run=args.dry_run)
    if recipe.report and not args.dry_run:
        print((out / "ablation.md").read_text().strip())


if __name__ == "__main__":
    main()
