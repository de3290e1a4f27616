#!/usr/bin/env python
"""Filter and deduplicate a corpus: NFC, language, length, numeric runs, repetition, KenLM, dedup.

  python tools/preprocess_corpus.py --input 'ko/*.jsonl.gz' --output out/ko --kenlm-model lm/ko.bin \
      --tasks 64 --workers 16 [--executor local|slurm|ray]

Datatrove stages (see motif_megatron/data/pipeline.py) on its local, Slurm or Ray executor. Writes
``OUT/kept/*.jsonl``, ``OUT/removed.jsonl`` (``id``, ``filter``, ``reason``), ``OUT/rejects.jsonl``
(``source``, ``line``, ``reason``: malformed input) and ``OUT/report.{json,md,png}``, where
``input = kept + filtered + rejected``. ``OUT`` may be any fsspec URL (``s3://bucket/ko``); the
intermediates then go to ``--work-dir`` (``WORK/work``, removed after a complete run, and
``WORK/logs``; both under ``OUT`` by default). Every stage has a ``--no-...`` switch; a killed run
resumes from its finished tasks (``--logging-dir``, default ``WORK/logs``); a changed configuration
in the same output folder is refused.
"""

import argparse
import sys

from motif_megatron.data.filters import MIN_SCRIPT_RATIO, QUALITY_FILTERS
from motif_megatron.errors import UserError, run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--input",
        required=True,
        help="a JSONL (.gz/.zst) or Parquet file, a glob of them (quoted), a folder of them, or a "
        "folder of text files",
    )
    p.add_argument(
        "--output",
        required=True,
        help="output folder, or any fsspec URL (s3://bucket/ko: needs s3fs, and --work-dir)",
    )
    p.add_argument("--text-key", default="text", help="JSON/Parquet field holding the text")
    p.add_argument(
        "--id-key", default="id", help="field holding the document id (else source:line)"
    )
    x = p.add_argument_group("execution (does not change the result)")
    x.add_argument("--executor", default="local", choices=["local", "slurm", "ray"])
    x.add_argument(
        "--tasks",
        type=int,
        default=1,
        help="input-ordered shares of the corpus: the unit of parallelism and resume (part of "
        "the configuration: keep it when resuming)",
    )
    x.add_argument(
        "--workers",
        type=int,
        default=1,
        help="tasks run at once (local processes, Ray tasks; on Slurm the array's limit, none at 1)",
    )
    x.add_argument(
        "--work-dir",
        help="where WORK/work (every stage's intermediates) and WORK/logs go, on a filesystem "
        "every task sees (default: --output; needed when --output is a URL)",
    )
    x.add_argument("--logging-dir", help="task logs, stats and completion markers (WORK/logs)")
    x.add_argument(
        "--keep-work",
        action="store_true",
        help="keep WORK/work after a complete run",
    )
    x.add_argument(
        "--ray-address", help="a running Ray cluster (default: RAY_ADDRESS or a new one)"
    )
    x.add_argument("--slurm-partition", help="Slurm partition (default: the cluster's default)")
    x.add_argument("--slurm-time", default="24:00:00", help="time limit of each Slurm task")
    x.add_argument(
        "--cpus-per-task", type=int, default=1, help="CPUs of a document task (Slurm, Ray)"
    )
    x.add_argument(
        "--mem-per-cpu-gb",
        "--slurm-mem-per-cpu-gb",
        type=int,
        default=2,
        help="memory per CPU of a document task, GB (Slurm, Ray)",
    )
    x.add_argument(
        "--global-cpus",
        type=int,
        default=1,
        help="CPUs of a global-stage task (exact-find, minhash-buckets/-cluster, report)",
    )
    x.add_argument(
        "--global-mem-gb",
        type=int,
        help="memory of a global-stage task, GB (Slurm, Ray; default 2 + 0.1 per GB of input "
        "text: the MinHash cluster stage grows with the near-duplicates)",
    )
    p.add_argument("--seed", type=int, default=1, help="MinHash permutation seed")
    g = p.add_argument_group("stages (each can be switched off)")
    g.add_argument("--no-normalize", action="store_true", help="skip Unicode NFC normalisation")
    g.add_argument(
        "--language",
        default="auto",
        choices=["auto", "ko", "en", "none"],
        help="script filter: Hangul (ko) or Latin (en) letter ratio; auto picks the majority "
        "script of the first 1000 documents",
    )
    g.add_argument(
        "--min-script-ratio",
        type=float,
        default=MIN_SCRIPT_RATIO,
        help="minimum share of the language's letters (the language filter's own default)",
    )
    g.add_argument("--no-length", action="store_true", help="skip the length filter")
    g.add_argument("--min-chars", type=int, default=50, help="shortest document kept")
    g.add_argument("--max-chars", type=int, default=1_000_000, help="longest document kept")
    g.add_argument("--no-numeric", action="store_true", help="skip the numeric-sequence filter")
    g.add_argument(
        "--no-repetition", action="store_true", help="skip the Gopher repetition filters"
    )
    g.add_argument(
        "--quality-filters",
        nargs="+",
        default=[],
        choices=QUALITY_FILTERS,
        help="datatrove's quality filters with the language's settings (Korean: FineWeb-2's "
        "kor_Hang thresholds, Kiwi word splitting; needs the quality extra)",
    )
    g.add_argument("--ftfy", action="store_true", help="repair mojibake first (datatrove's FTFY)")
    g.add_argument("--no-exact-dedup", action="store_true", help="skip exact-duplicate removal")
    g.add_argument("--no-minhash", action="store_true", help="skip MinHash near-duplicate removal")
    g.add_argument(
        "--minhash-threshold", type=float, default=0.8, help="Jaccard similarity threshold"
    )
    g.add_argument(
        "--minhash-recall",
        type=float,
        default=0.9,
        help="least probability that a pair at the threshold is caught: picks the bands x rows "
        "(the S-curve and its value at the threshold are in the report)",
    )
    g.add_argument("--minhash-perm", type=int, default=128, help="MinHash permutations")
    g.add_argument("--minhash-ngram", type=int, default=5, help="character n-gram shingle size")
    k = p.add_argument_group("KenLM perplexity (skipped without --kenlm-model)")
    k.add_argument("--kenlm-model", help="model from tools/train_kenlm.py (.arpa or .bin)")
    k.add_argument("--no-perplexity", action="store_true", help="skip the perplexity stage")
    k.add_argument(
        "--ppl-method", default="trimmed-mean", choices=["trimmed-mean", "percentile", "fixed"]
    )
    k.add_argument("--ppl-trim", type=float, default=0.1, help="fraction trimmed at each end")
    k.add_argument(
        "--ppl-k", type=float, default=2.0, help="kept band: trimmed mean +- k std (log space)"
    )
    k.add_argument(
        "--ppl-percentiles", type=float, nargs=2, default=[5.0, 95.0], metavar=("LOW", "HIGH")
    )
    k.add_argument("--ppl-min", type=float, help="fixed lower bound (--ppl-method fixed)")
    k.add_argument("--ppl-max", type=float, help="fixed upper bound (--ppl-method fixed)")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.data.executors import Resources, SlurmOptions
    from motif_megatron.data.minhash import MinHashConfig
    from motif_megatron.data.pipeline import CorpusConfig, run
    from motif_megatron.data.thresholds import PerplexityThresholds

    kenlm_model = None if args.no_perplexity else args.kenlm_model
    if kenlm_model is None and not args.no_perplexity:
        print("notice: no --kenlm-model given, the perplexity stage is skipped", file=sys.stderr)
    config = CorpusConfig(
        text_key=args.text_key,
        id_key=args.id_key,
        normalize=not args.no_normalize,
        language=None if args.language == "none" else args.language,
        min_script_ratio=args.min_script_ratio,
        length=not args.no_length,
        min_chars=args.min_chars,
        max_chars=args.max_chars,
        numeric=not args.no_numeric,
        repetition=not args.no_repetition,
        quality=tuple(args.quality_filters),
        ftfy=args.ftfy,
        exact_dedup=not args.no_exact_dedup,
        minhash=not args.no_minhash,
        minhash_config=MinHashConfig(
            num_perm=args.minhash_perm,
            ngram=args.minhash_ngram,
            threshold=args.minhash_threshold,
            seed=args.seed,
            recall=args.minhash_recall,
        ),
        kenlm_model=kenlm_model,
        thresholds=PerplexityThresholds(
            method=args.ppl_method,
            trim=args.ppl_trim,
            k=args.ppl_k,
            low_percentile=args.ppl_percentiles[0],
            high_percentile=args.ppl_percentiles[1],
            low=args.ppl_min,
            high=args.ppl_max,
        ),
        tasks=args.tasks,
    )
    counts = (args.tasks, args.workers, args.cpus_per_task, args.mem_per_cpu_gb, args.global_cpus)
    if min(counts) < 1 or (args.global_mem_gb is not None and args.global_mem_gb < 1):
        raise UserError("--tasks, --workers, CPUs and memory must be at least 1")
    resources = Resources(
        args.cpus_per_task, args.mem_per_cpu_gb, args.global_cpus, args.global_mem_gb
    )
    report = run(
        args.input,
        args.output,
        config,
        executor=args.executor,
        workers=args.workers,
        logging_dir=args.logging_dir,
        resources=resources,
        keep_work=args.keep_work,
        work_dir=args.work_dir,
        slurm=SlurmOptions(args.slurm_partition, args.slurm_time),
        ray_address=args.ray_address,
    )
    print(
        f"input {report['input']} = kept {report['kept']} + filtered {report['filtered']} "
        f"+ rejected {report['rejected']}; characters kept "
        f"{report['kept_chars'] / max(report['input_chars'], 1):.1%}; report in {args.output}/report.md"
    )


if __name__ == "__main__":
    main()
