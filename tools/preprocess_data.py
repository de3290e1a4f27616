#!/usr/bin/env python
"""Tokenise a corpus into Megatron indexed shards (``P_text_document.bin/.idx``).

  python tools/preprocess_data.py --input ko.jsonl --output-prefix data/ko \
      --tokenizer-model tokenizer_dir --json-keys text --append-eod --workers 2
  python tools/preprocess_data.py --input 'out/ko/kept/*.jsonl' --output-prefix data/ko ...
  python tools/preprocess_data.py --input ko.jsonl --tasks 64 --executor slurm --workers 64 ...

Document i holds exactly the tokenizer's ids for line i's text (no BOS) followed by EOD. Malformed
lines are skipped and listed in ``P_text_document.rejects.jsonl``; a summary lands in
``P_text_document.json``. A killed run resumes from its last finished partition. A folder or glob
of files (or ``--tasks N``) gives one shard per task, ``P_00000_text_document`` ..., and
``P_text_document.blend``: the ``--data-path`` value weighting them by tokens (``--merge``: one
merged ``P_text_document`` instead). Tasks run on datatrove's local, Slurm or Ray executor
(``--executor``), ``--workers`` at once; a shard made with another tokenizer or ``--append-eod``
setting is refused, never reused.
"""

import argparse
import os

from motif_megatron.errors import UserError, run_cli


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a JSONL (.gz/.zst) or Parquet file, a quoted glob or a folder of them, or a text folder",
    )
    parser.add_argument(
        "--tasks",
        type=int,
        help="input-ordered shares, one shard each (default: one per input file)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="merge the tasks' shards into one (Megatron's merge)"
    )
    parser.add_argument("--output-prefix", required=True, help="output path prefix")
    parser.add_argument(
        "--tokenizer-model",
        required=True,
        help="HF tokenizer directory / tokenizer.json, or a SentencePiece .model",
    )
    parser.add_argument(
        "--json-keys", nargs="+", default=["text"], help="fields to tokenise, one shard each"
    )
    parser.add_argument(
        "--append-eod", action="store_true", help="append the EOD token to each document"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="one task in this process: its encoder threads; on an executor: tasks at once "
        "(local processes, Ray tasks; on Slurm the array's limit, none at 1)",
    )
    x = parser.add_argument_group("executors (one task per share of the input)")
    x.add_argument(
        "--executor",
        choices=["local", "slurm", "ray"],
        help="datatrove executor for the tasks (default: this process for one task, else local)",
    )
    x.add_argument(
        "--cpus-per-task", type=int, default=1, help="encoder threads of a task on an executor"
    )
    x.add_argument("--mem-per-cpu-gb", type=int, default=2, help="memory per CPU (Slurm, Ray)")
    x.add_argument("--logging-dir", help="task logs and completion markers (P_KEY_document.logs)")
    x.add_argument("--slurm-partition", help="Slurm partition (default: the cluster's default)")
    x.add_argument("--slurm-time", default="24:00:00", help="time limit of each Slurm task")
    x.add_argument(
        "--ray-address", help="a running Ray cluster (default: RAY_ADDRESS or a new one)"
    )
    parser.add_argument(
        "--partition-docs",
        type=int,
        default=20000,
        help="documents per partition (the unit of resume)",
    )
    parser.add_argument("--max-docs", type=int, help="stop after this many input lines")
    parser.add_argument(
        "--backend",
        choices=["auto", "gigatoken", "reference"],
        default="auto",
        help="gigatoken (fast, identical ids) or the reference HF/SentencePiece encoder",
    )
    return parser.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    # the Rust encoders size their thread pools from these at first use
    os.environ["RAYON_NUM_THREADS"] = str(args.workers)
    os.environ["GIGATOKEN_NUM_THREADS"] = str(args.workers)
    from motif_megatron.data.executors import Resources, SlurmOptions
    from motif_megatron.data.tokenize import tokenize_corpus

    if min(args.tasks or 1, args.workers, args.cpus_per_task, args.mem_per_cpu_gb) < 1:
        raise UserError("--tasks, --workers, --cpus-per-task and --mem-per-cpu-gb must be >= 1")
    for key in args.json_keys:
        stats = tokenize_corpus(
            args.input,
            args.output_prefix,
            args.tokenizer_model,
            key,
            args.append_eod,
            args.partition_docs,
            args.max_docs,
            args.backend,
            tasks=args.tasks,
            merge=args.merge,
            executor=args.executor,
            workers=args.workers,
            threads=args.cpus_per_task,
            logging_dir=args.logging_dir and f"{args.logging_dir}/{key}",
            resources=Resources(args.cpus_per_task, args.mem_per_cpu_gb),
            slurm=SlurmOptions(args.slurm_partition, args.slurm_time),
            ray_address=args.ray_address,
        )
        print(
            f"{args.output_prefix}_{key}_document: {stats.documents} documents, "
            f"{stats.tokens} tokens, {stats.rejected} rejected lines, {stats.seconds:.2f}s"
        )


if __name__ == "__main__":
    main()
