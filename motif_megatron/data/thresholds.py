"""Perplexity thresholds for dropping both tails of a KenLM score distribution.

Too high a perplexity means noise (broken or foreign text), too low means repetition (number lists,
boilerplate). The default derives both bounds from a trimmed mean: drop ``trim`` of the scores at
each end, take the mean and standard deviation of the log-perplexities that remain, and keep
documents within ``k`` deviations. Fixed bounds or percentiles can be given instead.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        if self.method != "trimmed-mean":
            raise UserError(f"unknown threshold method {self.method!r}")
        if not 0 <= self.trim < 0.5:
            raise UserError(f"--ppl-trim {self.trim} must be in [0, 0.5)")
        logs = np.log(perplexities[np.isfinite(perplexities)])
        if len(logs) == 0:
            return None, None
        logs = np.sort(logs)
        cut = int(len(logs) * self.trim)
        core = logs[cut : len(logs) - cut] if len(logs) - 2 * cut > 1 else logs
        mean, std = float(core.mean()), float(core.std())
        return float(np.exp(mean - self.k * std)), float(np.exp(mean + self.k * std))
