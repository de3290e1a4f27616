#!/usr/bin/env python
"""Plot loss curves from pretrain_motif.py metrics files.

python tools/plot_metrics.py run.jsonl --out loss.png
python tools/plot_metrics.py staged=a.jsonl baseline=b.jsonl --out compare.png --smooth 10
"""

import argparse
from pathlib import Path

from motif_megatron.errors import run_cli


@run_cli
def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("metrics", nargs="+", metavar="[LABEL=]FILE", help="metrics JSONL files")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window over iterations")
    args = p.parse_args()
    from motif_megatron.training.plots import plot_runs

    runs = {}
    for spec in args.metrics:
        label, _, path = spec.rpartition("=")
        runs[label or Path(path).stem] = path
    print(f"wrote {plot_runs(runs, args.out, args.smooth)}")


if __name__ == "__main__":
    main()
