"""The corpus pipeline's own datatrove blocks: what datatrove lacks or does differently.

Reading with an account of every bad line (:class:`CorpusReader`), NFC, KenLM perplexity with our
offline lmplz model (datatrove's helper downloads from a hub), perplexity bounds from the merged
score summaries of every task, character-5-gram MinHash signatures from our C++ kernel written in
datatrove's bucket format (its ``MinhashDedupBuckets``/``Cluster``/``Filter`` stages read them),
the writers of kept / removed / rejects, and a per-task meter of time, throughput and peak memory.
The per-document filters are blocks themselves (:class:`~motif_megatron.data.filters.base.Filter`).
"""

from __future__ import annotations

import json
import time
import unicodedata
from pathlib import Path

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.writers.jsonl import JsonlWriter

from motif_megatron.data import minhash as mh
from motif_megatron.data.readers import Reject, Unit, task_units
from motif_megatron.data.thresholds import PerplexityThresholds, ScoreSummary
from motif_megatron.memory import peak_rss_mb, reset_peak_rss

SNIPPET_CHARS = 200
"""Characters of each removed document kept in its record (for the report's examples)."""


def _rejects_adapter(self, doc: Document) -> dict:
    return {k: doc.metadata[k] for k in ("source", "line", "offset", "start", "reason")}


def rejects_writer(folder: str) -> JsonlWriter:
    return JsonlWriter(folder, "rejects_${rank}.jsonl", compression=None, adapter=_rejects_adapter)


def _removed_adapter(self, doc: Document) -> dict:
    return {
        "id": doc.id,
        "filter": self.block,
        "reason": doc.metadata.get("filter_reason", self.reason),
        "chars": len(doc.text),
        "text": doc.text[:SNIPPET_CHARS],
    }


class RemovedWriter(JsonlWriter):
    """``removed_<block>_<rank>.jsonl``: id, block, reason, characters and a snippet."""

    def __init__(self, folder: str, block: str, reason: str | None = None) -> None:
        name = f"removed_{block}_${{rank}}.jsonl"
        super().__init__(folder, name, compression=None, adapter=_removed_adapter)
        self.block, self.reason = block, reason


def _kept_adapter(self, doc: Document) -> dict:
    return {"id": doc.id, "text": doc.text}


def kept_writer(folder: str) -> JsonlWriter:
    return JsonlWriter(folder, "kept_${rank}.jsonl", compression=None, adapter=_kept_adapter)


def work_writer(folder: str) -> JsonlWriter:
    """A stage's survivors, one file per task (the next stage's task of the same rank reads it)."""
    return JsonlWriter(folder, "${rank}.jsonl.gz", compression="gzip")


class CorpusReader(PipelineStep):
    """Task ``rank``'s share of the corpus; every malformed line goes to ``rejects``."""

    type = "📖 - READER"
    name = "corpus"

    def __init__(
        self, units: list[Unit], text_key: str, id_key: str, max_doc_chars: int, rejects: str
    ) -> None:
        super().__init__()
        self.units, self.text_key, self.id_key = units, text_key, id_key
        self.max_doc_chars, self.work = max_doc_chars, rejects
        self.rejects = rejects_writer(rejects)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        lines = []  # per piece: the lines it holds, so the report numbers rejects file-wide
        with self.rejects as rejects:
            for unit in task_units(self.units, rank, world_size):
                count = 0
                for record in unit.documents(self.text_key, self.id_key):
                    count += 1
                    yield from self._one(record, unit, rank, rejects)
                source = unit.source or Path(unit.path).name
                lines.append({"source": source, "start": unit.start, "lines": count})
        folder = Path(self.work) / "lines"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rank:05d}.json").write_text(json.dumps(lines))

    def _one(self, record, unit: Unit, rank: int, rejects):
        self.stat_update("input")
        meta = {"source": record.source, "line": record.line, "task": rank}
        reason = record.reason if isinstance(record, Reject) else None
        if reason is None and len(record.text) > self.max_doc_chars:
            reason = "huge_document"  # rather than risk a worker's memory
        if reason:
            self.stat_update("rejected", f"rejected_{reason}")
            where = {"offset": record.offset, "start": unit.start, "reason": reason}
            rejects.write(
                Document("", f"{record.source}:{record.line}", metadata=meta | where), rank
            )
            return
        self.stat_update("input_chars", value=len(record.text))
        self.stat_update("input_bytes", value=len(record.text.encode()))
        yield Document(record.text, record.id, metadata=meta)


class TaskReader(PipelineStep):
    """The previous stage's survivors of this task (``<rank>.jsonl.gz``; none if it had none)."""

    type = "📖 - READER"
    name = "survivors"

    def __init__(self, folder: str) -> None:
        super().__init__()
        self.folder = get_datafolder(folder)

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.jsonl.gz"
        if not self.folder.isfile(name):
            return
        with self.folder.open(name, "rt", compression="gzip") as f:
            for line in f:
                record = json.loads(line)
                self.stat_update("documents")
                yield Document(record["text"], record["id"], metadata=record.get("metadata", {}))


class Normalize(PipelineStep):
    """Unicode NFC: composed Hangul syllables, so filters and dedup see one spelling."""

    type = "✂️ - FORMAT"
    name = "nfc"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        for doc in data:
            text = unicodedata.normalize("NFC", doc.text)
            if text != doc.text:
                self.stat_update("changed")
                doc.text = text
            yield doc


class PerplexityScorer(PipelineStep):
    """KenLM perplexity of each document into ``metadata["perplexity"]``, and this task's
    :class:`ScoreSummary` to ``<folder>/<rank>.ppl.npz`` (the bounds are the merge of them all)."""

    type = "📊 - SCORER"
    name = "kenlm"

    def __init__(self, model: str, folder: str) -> None:
        super().__init__()
        self.model, self.folder = model, folder

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        from motif_megatron.data.kenlm import KenLMScorer

        scorer, summary, values = KenLMScorer(self.model), ScoreSummary(), []
        for doc in data:
            with self.track_time():
                doc.metadata["perplexity"] = value = scorer.perplexity(doc.text)
            values.append(value)
            if len(values) == 4096:
                summary.add(values)
                values = []
            yield doc
        summary.add(values)
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        summary.save(Path(self.folder) / f"{rank:05d}.ppl.npz")


def perplexity_bounds(
    folder: str, thresholds: PerplexityThresholds
) -> tuple[float | None, float | None]:
    """The bounds of the whole corpus: the merge of every task's summary, one at a time."""
    merged = ScoreSummary()
    for path in sorted(Path(folder).glob("*.ppl.npz")):
        merged = ScoreSummary.merge(merged, ScoreSummary.load(path))
    return thresholds.bounds_from(merged)


class PerplexityBounds(PipelineStep):
    """The global step between scoring and filtering: the corpus-wide bounds, merged once into
    ``<folder>/bounds.json`` (each filter task reads that, not every task's summary)."""

    type = "📊 - SCORER"
    name = "perplexity bounds"

    def __init__(self, folder: str, thresholds: PerplexityThresholds) -> None:
        super().__init__()
        self.folder, self.thresholds = folder, thresholds

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        low, high = perplexity_bounds(self.folder, self.thresholds)
        (Path(self.folder) / "bounds.json").write_text(json.dumps({"low": low, "high": high}))
        return data


def read_bounds(folder: str | Path) -> tuple[float | None, float | None]:
    bounds = json.loads((Path(folder) / "bounds.json").read_text())
    return bounds["low"], bounds["high"]


class PerplexityFilter(BaseFilter):
    """Drops both tails of the corpus-wide perplexity distribution (``ppl_low``/``ppl_high``)."""

    name = "perplexity"

    def __init__(self, folder: str, removed: str) -> None:
        super().__init__(RemovedWriter(removed, self.name))
        self.folder = folder
        self._bounds = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._bounds is None:
            self._bounds = read_bounds(self.folder)
        low, high = self._bounds
        value = doc.metadata["perplexity"]
        if high is not None and value > high:
            return False, "ppl_high"
        if low is not None and value < low:
            return False, "ppl_low"
        return True


class MinhashSignatures(PipelineStep):
    """Our signatures (character n-grams, C++ kernel) in datatrove's stage-1 format: per band,
    ``bucket_BBB/<rank>.minhash.sig`` of ``rows`` uint32 hashes and the document's index, sorted."""

    type = "🫂 - DEDUP"
    name = "minhash signatures"

    def __init__(self, folder: str, config: mh.MinHashConfig, batch: int = 1024) -> None:
        super().__init__()
        self.folder, self.config, self.batch = folder, config, batch

    def _paths(self, rank: int) -> list[Path]:
        bands, _ = self.config.bands()
        paths = [
            Path(self.folder) / f"bucket_{b:03d}" / f"{rank:05d}.minhash.sig" for b in range(bands)
        ]
        for p in paths:
            p.parent.mkdir(parents=True, exist_ok=True)
        return paths

    def _write(self, files, texts: list[str], first: int) -> None:
        _, rows = self.config.bands()
        sig = mh.signatures(texts, self.config)
        record = np.empty((len(texts), rows + 1), dtype="<u4")
        record[:, rows] = np.arange(first, first + len(texts))
        for band, f in enumerate(files):
            record[:, :rows] = sig[:, band * rows : (band + 1) * rows]
            record.tofile(f)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        _, rows = self.config.bands()
        paths, texts, count = self._paths(rank), [], 0
        files = [open(p, "wb") for p in paths]  # noqa: SIM115 (closed below)
        try:
            for doc in data:
                self.stat_update("documents")
                texts.append(doc.text)
                if len(texts) == self.batch:
                    self._write(files, texts, count)
                    count, texts = count + len(texts), []
            if texts:
                self._write(files, texts, count)
        finally:
            for f in files:
                f.close()
        fields = np.dtype([(f"h{i}", "<u4") for i in range(rows)] + [("doc", "<u4")])
        for p in paths:  # one band in memory at a time: rows + 1 words per document
            records = np.fromfile(p, dtype=fields)
            records.sort(order=list(fields.names))
            records.tofile(p)


class TaskMeter(PipelineStep):
    """Wall time and peak RSS of one task of any stage: ``[meter.start, *steps, meter]``.

    ``start`` resets the process's peak (a task may run in a process that ran others); the meter
    itself records when the steps before it are done, eagerly after a global step that does its
    work when called, or at the end of a document stream."""

    type = "⏱ - METER"
    name = "meter"

    def start(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        reset_peak_rss()
        self._started = time.perf_counter()
        return data

    def _record(self) -> None:
        self.stat_update("seconds", value=time.perf_counter() - self._started)
        self.stat_update("peak_rss_mb", value=peak_rss_mb())

    def _stream(self, data: DocumentsPipeline):
        yield from data
        self._record()

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1):
        if data is None:
            self._record()
            return None
        return self._stream(data)


def metered(steps: list) -> list:
    """``steps`` between the two ends of a :class:`TaskMeter` (its time and peak RSS per task)."""
    meter = TaskMeter()
    return [meter.start, *steps, meter]
