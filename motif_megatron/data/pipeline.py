"""The corpus pipeline as datatrove stages: normalise, filter, score, deduplicate; every document
accounted for, on any executor (local processes, Slurm, Ray).

The corpus is cut into ``tasks`` input-ordered shares. Document stages run one task per share,
each reading the previous stage's survivors of the same task from ``work/``; global stages sit
between them and hold no documents:

1. ``filter``: read (bad lines to rejects), NFC, language, length, numeric, repetition, KenLM
   scores with one mergeable score summary per task;
2. ``perplexity``: both tails dropped at the bounds of the merged summaries of all tasks;
3. ``exact-find`` then ``exact-dedup``: datatrove's exact dedup on the normalised text (the
   earliest task, then the earliest document, wins);
4. ``minhash-buckets``, ``minhash-cluster``, then ``minhash``: datatrove's MinHash stages on our
   character-n-gram signatures (one document per cluster is kept), writing ``kept/``;
5. ``report``: ``removed.jsonl``, ``rejects.jsonl`` and ``report.{json,md,png}`` from the blocks'
   stats and records, where ``input == kept + filtered + rejected`` always holds.

Each stage logs to ``<logging-dir>/<stage>`` and resumes by datatrove's completion markers; the
configuration is saved with the output, and a different one in the same folder is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path

from datatrove.data import Document as DtDocument
from datatrove.io import get_datafolder
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
)
from datatrove.pipeline.formatters import FTFYFormatter
from datatrove.utils.hashing import HashConfig

from motif_megatron.data import minhash as mh
from motif_megatron.data.blocks import (
    CorpusReader,
    MinhashSignatures,
    Normalize,
    PerplexityBounds,
    PerplexityFilter,
    PerplexityScorer,
    RemovedWriter,
    TaskReader,
    kept_writer,
    metered,
    work_writer,
)
from motif_megatron.data.executors import Resources, Stage, execute, global_memory_gb
from motif_megatron.data.filters import MIN_SCRIPT_RATIO
from motif_megatron.data.filters.base import Filter
from motif_megatron.data.filters.quality import quality_filters
from motif_megatron.data.filters.repetition import RepetitionFilter
from motif_megatron.data.filters.text import (
    HangulRatioFilter,
    LatinRatioFilter,
    LengthFilter,
    NumericSequenceFilter,
)
from motif_megatron.data.readers import (
    Document,
    Unit,
    input_files,
    input_root,
    input_units,
    text_bytes,
)
from motif_megatron.data.report import Report
from motif_megatron.data.thresholds import PerplexityThresholds
from motif_megatron.errors import UserError


@dataclass
class CorpusConfig:
    """What the pipeline computes (every stage can be switched off); how it is executed is not
    part of it, so the same output can be resumed on another executor."""

    text_key: str = "text"
    id_key: str = "id"
    normalize: bool = True
    language: str | None = "auto"
    """``ko`` (Hangul ratio), ``en`` (Latin ratio), ``auto`` (the corpus's majority script, decided
    once from its first documents) or None."""
    min_script_ratio: float = MIN_SCRIPT_RATIO
    length: bool = True
    min_chars: int = 50
    max_chars: int = 1_000_000
    numeric: bool = True
    repetition: bool = True
    quality: tuple[str, ...] = ()
    """datatrove's quality filters to run (``gopher``, ``c4``, ``fineweb``) with the language's
    settings (:mod:`motif_megatron.data.filters.quality`)."""
    ftfy: bool = False
    """datatrove's FTFY repair of mojibake before anything else looks at the text."""
    exact_dedup: bool = True
    minhash: bool = True
    minhash_config: mh.MinHashConfig = field(default_factory=mh.MinHashConfig)
    kenlm_model: str | None = None
    thresholds: PerplexityThresholds = field(default_factory=PerplexityThresholds)
    max_doc_chars: int = 5_000_000
    """Larger documents are rejected (``huge_document``) rather than risk a worker's memory."""
    tasks: int = 1
    """Input-ordered shares of the corpus: the unit of parallelism and of resume."""


def build_filters(config: CorpusConfig) -> list[Filter]:
    filters: list[Filter] = []
    if config.language == "ko":
        filters.append(HangulRatioFilter(config.min_script_ratio))
    elif config.language == "en":
        filters.append(LatinRatioFilter(config.min_script_ratio))
    elif config.language is not None:
        raise UserError(f"--language {config.language!r}: use ko, en or none")
    if config.length:
        filters.append(LengthFilter(config.min_chars, config.max_chars))
    if config.numeric:
        filters.append(NumericSequenceFilter())
    if config.repetition:
        filters.append(RepetitionFilter())
    return filters + quality_filters(list(config.quality), config.language)


def detect_language(units: list[Unit], config: CorpusConfig, sample: int = 1000) -> str:
    """``ko`` when most of the first ``sample`` documents are Korean by script, else ``en``."""
    records = (r for u in units for r in u.documents(config.text_key, config.id_key))
    docs = [r for r in islice(records, sample) if isinstance(r, Document)]
    korean = sum(HangulRatioFilter.ratio(d.text) >= config.min_script_ratio for d in docs)
    return "ko" if docs and korean * 2 >= len(docs) else "en"


def normalised_text(doc: DtDocument) -> str:
    """What exact dedup compares: the text as MinHash shingles it (case and spacing folded)."""
    return mh.normalise(doc.text)


def input_order(doc: DtDocument) -> int:
    """Exact dedup keeps the highest priority: earlier tasks first (the earliest document of a
    task wins by datatrove's own order)."""
    return max(65535 - doc.metadata["task"], 1)


def datatrove_minhash(config: mh.MinHashConfig) -> MinhashConfig:
    """Our banding in datatrove's terms: one bucket per band of ``rows`` 32-bit hashes."""
    bands, rows = config.bands()
    return MinhashConfig(
        n_grams=config.ngram,
        num_buckets=bands,
        hashes_per_bucket=rows,
        seed=config.seed,
        hash_config=HashConfig(precision=32, hash_fc="sha1"),
    )


def stages(
    config: CorpusConfig, units: list[Unit], out: str, work: Path, logs: Path
) -> list[Stage]:
    """The stages for ``config`` in order (document stages of ``config.tasks`` tasks between
    global ones): intermediates in ``work``, results in ``out`` (a path or an fsspec URL)."""
    n = config.tasks
    removed = str(work / "removed")
    filters = build_filters(config)
    for f in filters:
        f.exclusion_writer = RemovedWriter(removed, f.name)
    head = [CorpusReader(units, config.text_key, config.id_key, config.max_doc_chars, str(work))]
    head += [FTFYFormatter()] if config.ftfy else []
    head += [Normalize()] if config.normalize else []
    head += filters
    if config.kenlm_model:
        head.append(PerplexityScorer(config.kenlm_model, str(work / "ppl")))
    # (name, document steps, terminal signature step or None); between[k] runs after segment k
    segments: list[list] = [["filter", head, None]]
    between: list[list[Stage]] = []
    if config.kenlm_model:
        folder = str(work / "ppl")
        segments.append(["perplexity", [PerplexityFilter(folder, removed)], None])
        bounds = PerplexityBounds(folder, config.thresholds)
        between.append([Stage("perplexity-bounds", metered([bounds]), 1, "global")])
    if config.exact_dedup:
        exact = ExactDedupConfig(normalised_text, input_order, HashConfig(64, "sha1"))
        sigs, dups = str(work / "exact/sigs"), str(work / "exact/dups")
        segments[-1][2] = ExactDedupSignature(sigs, exact)
        find = ExactFindDedups(sigs, dups, exact)
        between.append([Stage("exact-find", metered([find]), 1, "global")])
        drop = RemovedWriter(removed, "exact_dedup", "duplicate_text")
        segments.append(["exact-dedup", [ExactDedupFilter(dups, exact, drop)], None])
    if config.minhash:
        dt = datatrove_minhash(config.minhash_config)
        sigs, buckets, clusters = (str(work / f"minhash/{k}") for k in ("sigs", "buckets", "ids"))
        segments[-1][2] = MinhashSignatures(sigs, config.minhash_config)
        between.append(
            [
                Stage(
                    "minhash-buckets",
                    metered([MinhashDedupBuckets(sigs, buckets, config=dt)]),
                    dt.num_buckets,
                    "global",
                ),
                Stage(
                    "minhash-cluster",
                    metered([MinhashDedupCluster(buckets, clusters, config=dt)]),
                    1,
                    "global",
                ),
            ]
        )
        drop = RemovedWriter(removed, "minhash", "near_duplicate")
        segments.append(["minhash", [MinhashDedupFilter(clusters, exclusion_writer=drop)], None])
    result: list[Stage] = []
    for k, (name, steps, signatures) in enumerate(segments):
        source = [] if k == 0 else [TaskReader(str(work / segments[k - 1][0]))]
        last = k == len(segments) - 1
        sink = kept_writer(f"{out}/kept") if last else work_writer(str(work / name))
        tail = [signatures] if signatures else []  # terminal: after the survivors are written
        result.append(Stage(name, metered([*source, *steps, sink, *tail]), n))
        result += [] if last else between[k]
    blocks = [f.name for f in filters] + ["perplexity", "exact_dedup", "minhash"]
    report = Report(out, work, logs, {s.name: s.kind for s in result}, blocks, config)
    result.append(Stage("report", [report], 1, "global"))
    return result


def _check_config(out: str, saved: dict) -> None:
    """Refuse to mix results of two configurations in one output folder."""
    folder = get_datafolder(out)
    if folder.isfile("config.json"):
        with folder.open("config.json") as f:
            old = json.load(f)
        changed = sorted(k for k in old.keys() | saved.keys() if old.get(k) != saved.get(k))
        if changed:
            raise UserError(
                f"{out} holds a run with a different configuration ({', '.join(changed)} "
                "changed): use a new --output, or delete it to start over"
            )
    with folder.open("config.json", "w") as f:
        f.write(json.dumps(saved, indent=2, default=str) + "\n")


def folders(output: str | Path, work_dir=None, logging_dir=None) -> tuple[str, Path, Path]:
    """``(out, work, logs)``: the results go to ``output`` (a path or any fsspec URL, written
    through datatrove's storage layer); what the tasks read back (``work/``, ``logs/``) lives
    under ``work_dir`` on a filesystem every task sees (default: ``output`` when it is local)."""
    out = str(output)
    if work_dir is None:
        if "://" in out and not out.startswith("file://"):
            raise UserError(f"--output {out} is remote: give --work-dir, a folder all tasks share")
        work_dir = out.removeprefix("file://")
    work_dir = Path(work_dir)
    return out, work_dir / "work", Path(logging_dir) if logging_dir else work_dir / "logs"


def plan(
    input_spec: str | Path,
    output: str | Path,
    config: CorpusConfig,
    work_dir=None,
    logging_dir=None,
) -> list[Stage]:
    """Check the inputs and the settings, save the configuration and build the stages."""
    out, work, logs = folders(output, work_dir, logging_dir)
    files = input_files(input_spec)
    units = input_units(files, config.tasks, input_root(input_spec))
    if config.language == "auto":
        config = replace(config, language=detect_language(units, config))
    build_filters(config)  # fail on bad settings before any work
    if config.minhash:
        config.minhash_config.bands()
    if config.kenlm_model:
        from motif_megatron.data.kenlm import KenLMScorer

        KenLMScorer(config.kenlm_model)
    saved = asdict(config) | {"input": [str(f.resolve()) for f in files]}
    _check_config(out, json.loads(json.dumps(saved, default=str)))
    return stages(config, units, out, work, logs)


def run(
    input_spec: str | Path,
    output: str | Path,
    config: CorpusConfig,
    executor: str = "local",
    workers: int = 1,
    logging_dir: str | Path | None = None,
    resources: Resources | None = None,
    keep_work: bool = False,
    work_dir: str | Path | None = None,
    **executor_options,
) -> dict:
    """Run every stage on ``executor``; returns the report (also in ``report.json``). Global
    stages get memory for the corpus's size unless ``resources`` says otherwise. ``work/`` (the
    stages' intermediates, as large as the corpus) goes once the run is complete, unless
    ``keep_work``. ``output`` may be an fsspec URL (``s3://...``), with a shared ``work_dir``."""
    out, work, logs = folders(output, work_dir, logging_dir)
    resources = resources or Resources()
    if resources.global_mem_gb is None:
        size = text_bytes(input_files(input_spec))
        resources = replace(resources, global_mem_gb=global_memory_gb(size))
    stages = plan(input_spec, output, config, work_dir, logging_dir)
    execute(stages, executor, workers, logs, resources, **executor_options)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    with get_datafolder(out).open("report.json") as f:
        return json.load(f)
