"""The corpus pipeline: normalise, filter, score, deduplicate; every document accounted for.

Pass 1 (parallel over partitions, resumable per partition): NFC normalisation, the per-document
filters in order (language, length, numeric, repetition), KenLM perplexity scores, an exact-text
hash and a MinHash signature for each survivor. Pass 2 (global, in input order): perplexity
thresholds from the whole score distribution (the merge of each partition's score summary),
exact dedup (first occurrence wins), MinHash near-dedup (one document per cluster). Pass 3
writes ``kept/``, ``removed.jsonl``, ``rejects.jsonl`` and the report. ``input == kept + filtered + rejected`` always holds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from itertools import islice
from pathlib import Path

import numpy as np
from tqdm import tqdm

from motif_megatron.data import minhash as mh
from motif_megatron.data.filters.base import Filter
from motif_megatron.data.filters.repetition import RepetitionFilter
from motif_megatron.data.filters.text import (
    HangulRatioFilter,
    LatinRatioFilter,
    LengthFilter,
    NumericSequenceFilter,
)
from motif_megatron.data.readers import Document, Reject, iter_documents
from motif_megatron.data.thresholds import PerplexityThresholds, ScoreSummary
from motif_megatron.errors import UserError


@dataclass
class CorpusConfig:
    """What the pipeline runs; every stage can be switched off."""

    text_key: str = "text"
    id_key: str = "id"
    normalize: bool = True
    language: str | None = "auto"
    """``ko`` (Hangul ratio), ``en`` (Latin ratio), ``auto`` (the corpus's majority script, decided
    once from its first documents) or None."""
    min_script_ratio: float = 0.1
    length: bool = True
    min_chars: int = 50
    max_chars: int = 1_000_000
    numeric: bool = True
    repetition: bool = True
    exact_dedup: bool = True
    minhash: bool = True
    minhash_config: mh.MinHashConfig = field(default_factory=mh.MinHashConfig)
    kenlm_model: str | None = None
    thresholds: PerplexityThresholds = field(default_factory=PerplexityThresholds)
    max_doc_chars: int = 5_000_000
    """Larger documents are rejected (``huge_document``) rather than risk a worker's memory."""
    partition_docs: int = 500
    workers: int = 1
    shard_docs: int = 100_000


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
    return filters


def detect_language(input_path: str | Path, config: CorpusConfig, sample: int = 1000) -> str:
    """``ko`` when most of the first ``sample`` documents are Korean by script, else ``en``."""
    docs = [
        d
        for d in islice(iter_documents(input_path, config.text_key, config.id_key), sample)
        if isinstance(d, Document)
    ]
    korean = sum(HangulRatioFilter.ratio(d.text) >= config.min_script_ratio for d in docs)
    return "ko" if docs and korean * 2 >= len(docs) else "en"


def _partition_paths(work: Path, index: int) -> dict[str, Path]:
    stem = work / f"part_{index:05d}"
    return {
        k: stem.with_suffix(f".{k}")
        for k in (
            "docs.jsonl",
            "removed.jsonl",
            "rejects.jsonl",
            "sig.npy",
            "ppl.npz",
            "stats.json",
            "done",
        )
    }


def _process_partition(args: tuple[int, list, CorpusConfig, Path]) -> int:
    """Pass 1 for one partition; writes its files and a completion marker last."""
    index, records, config, work = args
    paths = _partition_paths(work, index)
    if paths["done"].is_file():
        return index
    filters = build_filters(config)
    scorer = None
    if config.kenlm_model:
        from motif_megatron.data.kenlm import KenLMScorer

        scorer = KenLMScorer(config.kenlm_model)
    survivors, texts = [], []
    stats = Counter()
    with open(paths["removed.jsonl"], "w") as removed, open(paths["rejects.jsonl"], "w") as rejects:
        for record in records:
            stats["input"] += 1
            if isinstance(record, Reject):
                rejects.write(json.dumps({"line": record.line, "reason": record.reason}) + "\n")
                stats["rejected"] += 1
                continue
            text = record.text
            stats["input_chars"] += len(text)
            if len(text) > config.max_doc_chars:
                rejects.write(json.dumps({"line": record.line, "reason": "huge_document"}) + "\n")
                stats["rejected"] += 1
                continue
            if config.normalize:
                text = unicodedata.normalize("NFC", text)
            reason = None
            for f in filters:
                reason = f.check(text)
                if reason:
                    removed.write(
                        json.dumps(
                            {
                                "id": record.id,
                                "line": record.line,
                                "filter": f.name,
                                "reason": reason,
                                "chars": len(text),
                                "text": text[:300],
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                    stats[f"{f.name}/{reason}"] += 1
                    stats[f"{f.name}_chars"] += len(text)
                    break
            if reason:
                continue
            entry = {
                "id": record.id,
                "line": record.line,
                "text": text,
                "sha1": hashlib.sha1(mh.normalise(text).encode()).hexdigest(),
            }
            if scorer is not None:
                entry["perplexity"] = scorer.perplexity(text)
            survivors.append(entry)
            texts.append(text)
    with open(paths["docs.jsonl"], "w") as out:
        for entry in survivors:
            out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    if config.minhash:
        np.save(paths["sig.npy"], mh.signatures(texts, config.minhash_config))
    if scorer is not None:  # pass 2 merges these, not every score, into the bounds
        summary = ScoreSummary()
        summary.add([entry["perplexity"] for entry in survivors])
        summary.save(paths["ppl.npz"])
    paths["stats.json"].write_text(json.dumps(stats))
    paths["done"].write_text("")
    return index


def _partitions(records, size: int):
    it = iter(records)
    while chunk := list(islice(it, size)):
        yield chunk


def run(
    input_path: str | Path, output_dir: str | Path, config: CorpusConfig, progress: bool = True
) -> dict:
    """Run the whole pipeline; returns the report (also written to ``report.json``)."""
    from motif_megatron.data import report as report_mod

    out = Path(output_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if config.language == "auto":
        config = replace(config, language=detect_language(input_path, config))
    (work / "config.json").write_text(json.dumps(asdict(config), default=str))
    build_filters(config)  # fail on bad settings before any work
    if config.kenlm_model:
        from motif_megatron.data.kenlm import KenLMScorer

        KenLMScorer(config.kenlm_model)

    # pass 1
    records = iter_documents(input_path, config.text_key, config.id_key)
    jobs = (
        (i, chunk, config, work)
        for i, chunk in enumerate(_partitions(records, config.partition_docs))
    )
    count = 0
    bar = tqdm(desc="filter", unit="part", disable=not progress)
    if config.workers > 1:
        with multiprocessing.get_context("fork").Pool(config.workers) as pool:
            for _ in pool.imap(_process_partition, jobs):
                count += 1
                bar.update(1)
    else:
        for job in jobs:
            _process_partition(job)
            count += 1
            bar.update(1)
    bar.close()

    # pass 2: global decisions over survivors, in input order
    parts = [_partition_paths(work, i) for i in range(count)]
    docs = []
    for p in parts:
        with open(p["docs.jsonl"]) as f:
            docs.extend(json.loads(line) for line in f)
    global_removed: dict[int, tuple[str, str]] = {}
    ppl_info = None
    if config.kenlm_model:
        ppl = np.array([d["perplexity"] for d in docs], dtype=np.float64)
        summaries = (ScoreSummary.load(p["ppl.npz"]) for p in parts)
        low, high = config.thresholds.bounds_from(reduce(ScoreSummary.merge, summaries))
        ppl_info = {"low": low, "high": high, "values": ppl.tolist()}
        for i, value in enumerate(ppl):
            if high is not None and value > high:
                global_removed[i] = ("perplexity", "ppl_high")
            elif low is not None and value < low:
                global_removed[i] = ("perplexity", "ppl_low")
    if config.exact_dedup:
        seen: set[str] = set()
        for i, d in enumerate(docs):
            if i in global_removed:
                continue
            if d["sha1"] in seen:
                global_removed[i] = ("exact_dedup", "duplicate_text")
            seen.add(d["sha1"])
    cluster_sizes: list[int] = []
    if config.minhash and docs:
        alive = [i for i in range(len(docs)) if i not in global_removed]
        sig = np.concatenate([np.load(p["sig.npy"]) for p in parts])[alive]
        np.save(work / "alive_sig.npy", sig)
        texts = [docs[i]["text"] for i in alive] if config.minhash_config.verify else None
        uf = mh.clusters([work / "alive_sig.npy"], len(alive), config.minhash_config, texts)
        roots = Counter(uf.find(k) for k in range(len(alive)))
        cluster_sizes = sorted((n for n in roots.values() if n > 1), reverse=True)
        for k, i in enumerate(alive):
            if uf.find(k) != k:
                global_removed[i] = ("minhash", "near_duplicate")

    # pass 3: outputs
    kept_dir = out / "kept"
    if kept_dir.exists():
        shutil.rmtree(kept_dir)
    kept_dir.mkdir()
    stats: Counter = Counter()
    for p in parts:
        stats.update(json.loads(p["stats.json"].read_text()))
    kept = kept_chars = 0
    shard, shard_file = -1, None
    global_examples: dict[str, list[str]] = {}
    with open(out / "removed.jsonl", "w") as removed:
        for p in parts:
            with open(p["removed.jsonl"]) as f:
                for line in f:
                    entry = json.loads(line)
                    removed.write(
                        json.dumps(
                            {k: entry[k] for k in ("id", "filter", "reason")}, ensure_ascii=False
                        )
                        + "\n"
                    )
        for i, d in enumerate(docs):
            if i in global_removed:
                name, reason = global_removed[i]
                removed.write(
                    json.dumps(
                        {"id": d["id"], "filter": name, "reason": reason}, ensure_ascii=False
                    )
                    + "\n"
                )
                stats[f"{name}/{reason}"] += 1
                stats[f"{name}_chars"] += len(d["text"])
                samples = global_examples.setdefault(f"{name}/{reason}", [])
                if len(samples) < 2:
                    samples.append(d["text"][:200].replace("\n", " "))
                continue
            if kept % config.shard_docs == 0:
                if shard_file:
                    shard_file.close()
                shard += 1
                shard_file = open(kept_dir / f"kept_{shard:05d}.jsonl", "w")  # noqa: SIM115
            shard_file.write(
                json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n"
            )
            kept += 1
            kept_chars += len(d["text"])
    if shard_file:
        shard_file.close()
    with open(out / "rejects.jsonl", "w") as rejects:
        for p in parts:
            rejects.write(p["rejects.jsonl"].read_text())
    filtered = sum(v for k, v in stats.items() if "/" in k)
    rejected = stats["rejected"]
    if stats["input"] != kept + filtered + rejected:
        raise RuntimeError(f"accounting bug: {stats['input']} in, {kept}+{filtered}+{rejected} out")
    report = {
        "input": stats["input"],
        "kept": kept,
        "filtered": filtered,
        "rejected": rejected,
        "language": config.language,
        "input_chars": stats["input_chars"],
        "kept_chars": kept_chars,
        "by_filter": {k: v for k, v in sorted(stats.items()) if "/" in k},
        "chars_by_filter": {
            k.removesuffix("_chars"): v
            for k, v in sorted(stats.items())
            if k.endswith("_chars") and k != "input_chars"
        },
        "minhash": {
            "clusters": len(cluster_sizes),
            "cluster_sizes": cluster_sizes[:100],
            "bands_rows": list(config.minhash_config.bands()),
        }
        if config.minhash
        else None,
        "perplexity": {"low": ppl_info["low"], "high": ppl_info["high"]} if ppl_info else None,
    }
    report_mod.write(out, report, parts, ppl_info, cluster_sizes, global_examples)
    return report
