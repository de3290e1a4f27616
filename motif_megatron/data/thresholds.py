"""Perplexity thresholds for dropping both tails of a KenLM score distribution.

Too high a perplexity means noise (broken or foreign text), too low means repetition (number lists,
boilerplate). The default derives both bounds from a trimmed mean: drop ``trim`` of the scores at
each end, take the mean and standard deviation of the log-perplexities that remain, and keep
documents within ``k`` deviations. Fixed bounds or percentiles can be given instead.

At corpus scale the scores are not held together: each task adds its scores to a
:class:`ScoreSummary` (counts, sums and sums of squares per fixed bin of log-perplexity), the
summaries add up, and :meth:`PerplexityThresholds.bounds_from` derives the bounds from the merged
one. Whole bins enter the trimmed mean exactly; only the two bins the trim cuts through, and the
bin of a percentile, are interpolated, so a bound is off by at most ``(1 + k)`` bin widths in
log space (``2**-10``: at ``k = 2`` under 0.3% of the perplexity), in practice far less.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from motif_megatron.errors import UserError


@dataclass(frozen=True)
class PerplexityThresholds:
    method: str = "trimmed-mean"
    """``trimmed-mean``, ``percentile`` or ``fixed``."""
    trim: float = 0.1
    k: float = 2.0
    low_percentile: float = 5.0
    high_percentile: float = 95.0
    low: float | None = None
    high: float | None = None

    def bounds_from(self, summary: ScoreSummary) -> tuple[float | None, float | None]:
        """:meth:`bounds` from a (merged) summary instead of every score."""
        if self.method == "fixed":
            return self.low, self.high
        n = int(summary.count.sum())
        if n == 0:
            return None, None
        if self.method == "percentile":
            low, high = (
                summary.quantile(q / 100) for q in (self.low_percentile, self.high_percentile)
            )
            return float(np.exp(low)), float(np.exp(high))
        self._check_trimmed()
        cut = int(n * self.trim)
        count, total, squares = (
            summary.between(cut, n - cut)
            if n - 2 * cut > 1
            else (
                n,
                summary.total.sum(),
                summary.squares.sum(),
            )
        )
        mean = total / count
        std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
        return float(np.exp(mean - self.k * std)), float(np.exp(mean + self.k * std))

    def _check_trimmed(self) -> None:
        if self.method != "trimmed-mean":
            raise UserError(f"unknown threshold method {self.method!r}")
        if not 0 <= self.trim < 0.5:
            raise UserError(f"--ppl-trim {self.trim} must be in [0, 0.5)")

    def bounds(self, perplexities: np.ndarray) -> tuple[float | None, float | None]:
        """``(low, high)`` perplexity bounds for these scores (None: no bound on that side)."""
        if self.method == "fixed":
            return self.low, self.high
        if len(perplexities) == 0:
            return None, None
        if self.method == "percentile":
            low, high = np.percentile(
                perplexities[np.isfinite(perplexities)], [self.low_percentile, self.high_percentile]
            )
            return float(low), float(high)
        self._check_trimmed()
        logs = np.log(perplexities[np.isfinite(perplexities)])
        if len(logs) == 0:
            return None, None
        logs = np.sort(logs)
        cut = int(len(logs) * self.trim)
        core = logs[cut : len(logs) - cut] if len(logs) - 2 * cut > 1 else logs
        mean, std = float(core.mean()), float(core.std())
        return float(np.exp(mean - self.k * std)), float(np.exp(mean + self.k * std))


WIDTH = 2.0**-10
"""Bin width in log-perplexity."""
BINS = 32 * 1024
"""Bins over log-perplexity [0, 32); scores outside go to the edge bins, their sums exact."""


@dataclass
class ScoreSummary:
    """Per-bin count, sum and sum of squares of log-perplexities: what one task writes instead
    of its scores (0.8 MB whatever the corpus size); summaries add exactly (counts) or to the
    last bits (sums)."""

    count: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    total: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.float64))
    squares: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.float64))

    def add(self, perplexities) -> None:
        """Add scores (non-finite ones are left out, as :meth:`PerplexityThresholds.bounds` does)."""
        values = np.asarray(perplexities, dtype=np.float64)
        logs = np.log(values[np.isfinite(values)])
        bins = np.clip((logs / WIDTH).astype(np.int64), 0, BINS - 1)
        self.count += np.bincount(bins, minlength=BINS)
        self.total += np.bincount(bins, logs, minlength=BINS)
        self.squares += np.bincount(bins, logs * logs, minlength=BINS)

    def merge(self, other: ScoreSummary) -> ScoreSummary:
        return ScoreSummary(
            self.count + other.count, self.total + other.total, self.squares + other.squares
        )

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, count=self.count, total=self.total, squares=self.squares)

    @classmethod
    def load(cls, path: str | Path) -> ScoreSummary:
        with np.load(path) as f:
            return cls(f["count"], f["total"], f["squares"])

    def between(self, first: int, stop: int) -> tuple[int, float, float]:
        """Count, sum and sum of squares of the log-scores of ranks ``[first, stop)`` in sorted
        order; a bin the range cuts through contributes its share at the bin's own moments."""
        ends = np.cumsum(self.count)
        starts = ends - self.count
        share = np.clip(np.minimum(ends, stop) - np.maximum(starts, first), 0, None)
        frac = np.divide(share, self.count, out=np.zeros(BINS), where=self.count > 0)
        return (
            int(share.sum()),
            float((frac * self.total).sum()),
            float((frac * self.squares).sum()),
        )

    def quantile(self, q: float) -> float:
        """The log-score at quantile ``q`` (numpy's linear rule on ranks), interpolated in its
        bin by rank."""
        n = int(self.count.sum())
        rank = q * (n - 1)
        ends = np.cumsum(self.count)
        b = int(np.searchsorted(ends, rank, side="right"))
        within = (rank - (ends[b] - self.count[b]) + 0.5) / self.count[b]
        return (b + min(max(within, 0.0), 1.0)) * WIDTH
