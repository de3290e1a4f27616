#!/usr/bin/env python
"""Perplexity (per reference token, bits per character) and token ratio of one or several
checkpoints on held-out text, per language, and lm-eval tasks on local benchmark files:
evaluation.{json,md,png} and samples/LABEL/TASK.jsonl (each document's responses).

  python tools/evaluate.py --load base=ckpt/base --load final=ckpt/final \
      --text ko=heldout_ko.jsonl --text en=heldout_en.jsonl \
      --tasks local_korean,local_english --benchmark-dir data/benchmarks --out reports/eval
  python tools/evaluate.py --list-tasks     # local task names and the files each one reads
"""

import argparse
from itertools import islice

from motif_megatron.errors import UserError, quiet_library_warnings, run_cli
from motif_megatron.eval import benchmarks


def pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in values:
        if "=" not in spec:
            raise UserError(f"{flag} {spec}: expected NAME=PATH")
        name, path = spec.split("=", 1)
        out[name] = path
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--load", action="append", default=[], metavar="LABEL=CKPT", help="checkpoint (repeatable)"
    )
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="LANG=FILE",
        help="held-out JSONL/Parquet/folder for perplexity (repeatable)",
    )
    p.add_argument(
        "--tasks",
        help="comma-separated lm-eval tasks or groups, e.g. local_korean,local_english "
        "(see --list-tasks)",
    )
    p.add_argument(
        "--benchmark-dir",
        help=f"folder of benchmark files (default: ${benchmarks.ENV}, else {benchmarks.DEFAULT_DIR})",
    )
    p.add_argument("--limit", type=int, help="lm-eval: at most this many documents per task")
    p.add_argument("--num-fewshot", type=int, help="lm-eval: few-shot examples (task default)")
    p.add_argument(
        "--list-tasks", action="store_true", help="print the local tasks and their files, then exit"
    )
    p.add_argument("--out", help="output folder")
    p.add_argument(
        "--reference-tokenizer",
        help="tokenizer whose token count normalises perplexity (default: the first checkpoint's)",
    )
    p.add_argument("--max-docs", type=int, default=100, help="documents per language")
    p.add_argument("--seq-length", type=int, default=256, help="tokens per scored window")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size (run under torchrun)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (run under torchrun)")
    args = p.parse_args()
    if not args.list_tasks and not (args.load and args.out):
        p.error("--load and --out are required")
    return args


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    if args.list_tasks:
        for task, files in benchmarks.required_files(benchmarks.local_names()).items():
            print(f"{task}: {', '.join(files)}")
        print(f"task YAMLs: {benchmarks.TASKS_DIR}")
        return
    from motif_megatron import parallel
    from motif_megatron.data.readers import Document, iter_documents
    from motif_megatron.eval.evaluate import evaluate

    texts = {
        lang: [
            d.text
            for d in islice(
                (d for d in iter_documents(path) if isinstance(d, Document)), args.max_docs
            )
        ]
        for lang, path in pairs(args.text, "--text").items()
    }
    try:
        report = evaluate(
            pairs(args.load, "--load"),
            texts,
            args.out,
            args.reference_tokenizer,
            args.seq_length,
            args.tp,
            args.pp,
            benchmarks.TaskSpec(
                args.tasks.split(","), args.benchmark_dir, args.limit, args.num_fewshot
            )
            if args.tasks
            else None,
        )
    finally:
        parallel.shutdown()
    for label, row in report["checkpoints"].items():
        parts = [f"{lang} ppl {row[lang]['ppl']:.2f}" for lang in texts]
        parts += [
            f"{task} {metric} {value:.4f}"
            for task, values in row.get("tasks", {}).items()
            for metric, value in list(values.items())[:1]
        ]
        parallel.print_rank0(f"{label}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
