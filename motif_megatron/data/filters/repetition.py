"""Gopher repetition filters (Rae et al. 2021, Table A1), word n-grams by whitespace.

Defaults are the paper's: duplicate lines 0.30 / paragraphs 0.30 of the units, 0.20 / 0.20 of the
characters; top 2/3/4-gram char fraction 0.20 / 0.18 / 0.16; duplicate 5..10-gram char fraction
0.15 .. 0.10. They catch boilerplate-heavy and looping pages.
"""

from __future__ import annotations

import re

import numpy as np

from motif_megatron.data.filters.base import Filter, exceeds

TOP_NGRAM = {2: 0.20, 3: 0.18, 4: 0.16}
DUP_NGRAM = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
_PARAGRAPH = re.compile(r"\n\s*\n")


def _dup_stats(units: list[str]) -> tuple[float, float]:
    """Fraction of units that repeat an earlier one, and of characters in them."""
    seen: set[str] = set()
    dup = dup_chars = 0
    for unit in units:
        if unit in seen:
            dup += 1
            dup_chars += len(unit)
        seen.add(unit)
    total_chars = sum(map(len, units))
    return (dup / len(units) if units else 0.0), (dup_chars / total_chars if total_chars else 0.0)


def _gram_ids(word_ids: np.ndarray, n: int) -> np.ndarray:
    """A dense id per word n-gram, via a 64-bit rolling hash of the word ids (collisions are
    ~len^2 / 2^64: negligible next to the thresholds' resolution)."""
    count = len(word_ids) - n + 1
    h = np.zeros(count, dtype=np.uint64)
    values = word_ids.astype(np.uint64)
    with np.errstate(over="ignore"):
        for i in range(n):
            h = h * np.uint64(0x9E3779B97F4A7C15) + values[i : i + count]
    return np.unique(h, return_inverse=True)[1]


def _top_ngram_frac(word_ids: np.ndarray, lengths: np.ndarray, n: int) -> float:
    total = lengths.sum()
    if len(word_ids) < n or not total:
        return 0.0
    ids = _gram_ids(word_ids, n)
    counts = np.bincount(ids)
    top = int(np.argmax(counts))  # ties: the first-ranked n-gram, as good as any
    if counts[top] < 2:  # nothing repeats: short texts must not fail on a single n-gram
        return 0.0
    first = int(np.flatnonzero(ids == top)[0])
    return counts[top] * lengths[first : first + n].sum() / total


def _dup_ngram_frac(word_ids: np.ndarray, lengths: np.ndarray, n: int) -> float:
    total = lengths.sum()
    if len(word_ids) < n or not total:
        return 0.0
    ids = _gram_ids(word_ids, n)
    first_seen = np.zeros(len(ids), dtype=bool)
    first_seen[np.unique(ids, return_index=True)[1]] = True
    starts = np.flatnonzero(~first_seen)  # n-grams that repeat an earlier one
    cover = np.zeros(len(word_ids) + 1, dtype=np.int64)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    return lengths[covered].sum() / total


class RepetitionFilter(Filter):
    name = "repetition"

    def __init__(
        self,
        dup_line_frac: float | None = 0.30,
        dup_para_frac: float | None = 0.30,
        dup_line_char_frac: float | None = 0.20,
        dup_para_char_frac: float | None = 0.20,
        top_ngram: dict[int, float] | None = None,
        dup_ngram: dict[int, float] | None = None,
    ) -> None:
        super().__init__()
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        self.top_ngram = TOP_NGRAM if top_ngram is None else top_ngram
        self.dup_ngram = DUP_NGRAM if dup_ngram is None else dup_ngram

    def check(self, text: str) -> str | None:
        paragraphs = [p.strip() for p in _PARAGRAPH.split(text) if p.strip()]
        frac, char_frac = _dup_stats(paragraphs)
        if exceeds(frac, self.dup_para_frac):
            return "dup_para_frac"
        if exceeds(char_frac, self.dup_para_char_frac):
            return "dup_para_char_frac"
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        frac, char_frac = _dup_stats(lines)
        if exceeds(frac, self.dup_line_frac):
            return "dup_line_frac"
        if exceeds(char_frac, self.dup_line_char_frac):
            return "dup_line_char_frac"
        words = text.split()
        vocab: dict[str, int] = {}
        word_ids = np.fromiter(
            (vocab.setdefault(w, len(vocab)) for w in words), np.int64, len(words)
        )
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        for n, limit in self.top_ngram.items():
            if exceeds(_top_ngram_frac(word_ids, lengths, n), limit):
                return f"top_{n}gram_frac"
        for n, limit in self.dup_ngram.items():
            if exceeds(_dup_ngram_frac(word_ids, lengths, n), limit):
                return f"dup_{n}gram_frac"
        return None
