"""Cheap document filters: length, script (Hangul ratio), and semantically empty numeric runs."""

from __future__ import annotations

import re

from motif_megatron.data.filters import MIN_SCRIPT_RATIO
from motif_megatron.data.filters.base import Filter, below, exceeds


class LengthFilter(Filter):
    """Too short to teach anything, or too long to be a real document (dumps, logs)."""

    name = "length"

    def __init__(
        self,
        min_chars: int | None = 50,
        max_chars: int | None = 1_000_000,
        min_words: int | None = 5,
    ) -> None:
        super().__init__()
        self.min_chars, self.max_chars, self.min_words = min_chars, max_chars, min_words

    def check(self, text: str) -> str | None:
        n = len(text.strip())
        if below(n, self.min_chars):
            return "min_chars"
        if exceeds(n, self.max_chars):
            return "max_chars"
        if below(len(text.split()), self.min_words):
            return "min_words"
        return None


def _is_hangul(ch: str) -> bool:
    o = ord(ch)
    return 0xAC00 <= o <= 0xD7A3 or 0x1100 <= o <= 0x11FF or 0x3130 <= o <= 0x318F


class HangulRatioFilter(Filter):
    """Korean documents by script: the share of Hangul among letters (untranslated pages fail).

    No language-ID model is installable offline here (fastText's loads its weights from a hub), so
    the script ratio is the language signal; it is exact for Korean versus English.
    """

    name = "language"

    def __init__(self, min_ratio: float | None = MIN_SCRIPT_RATIO) -> None:
        super().__init__()
        self.min_ratio = min_ratio

    @staticmethod
    def ratio(text: str) -> float:
        letters = [ch for ch in text if ch.isalpha()]
        return sum(map(_is_hangul, letters)) / len(letters) if letters else 0.0

    def check(self, text: str) -> str | None:
        return "hangul_ratio" if below(self.ratio(text), self.min_ratio) else None


class LatinRatioFilter(HangulRatioFilter):
    """English (or other Latin-script) documents: the share of ASCII letters among letters."""

    @staticmethod
    def ratio(text: str) -> float:
        letters = [ch for ch in text if ch.isalpha()]
        return sum(ch.isascii() for ch in letters) / len(letters) if letters else 0.0

    def check(self, text: str) -> str | None:
        return "latin_ratio" if below(self.ratio(text), self.min_ratio) else None


# a number, optionally with a short unit/suffix ("1호선", "86", "3.5%", "12-1")
_NUMBERISH = re.compile(r"^[\(\[]?[+-]?\d[\d.,:/-]*[%a-zA-Z가-힣]{0,3}[\)\],.;:]?$")
_INT = re.compile(r"\d+")


class NumericSequenceFilter(Filter):
    """Semantically empty numeric text: "1호선, 2호선, 4호선, ..." or "86 87 88 89 ...".

    Fires when numbers (with at most a short suffix) make up too many of the words, or when the
    document holds a long run of consecutive increasing integers.
    """

    name = "numeric"

    def __init__(self, max_numeric_frac: float | None = 0.5, max_run: int | None = 10) -> None:
        super().__init__()
        self.max_numeric_frac, self.max_run = max_numeric_frac, max_run

    def check(self, text: str) -> str | None:
        words = text.split()
        if not words:
            return None
        numeric = [w for w in words if _NUMBERISH.match(w)]
        if exceeds(len(numeric) / len(words), self.max_numeric_frac):
            return "numeric_frac"
        if self.max_run is not None and self._longest_run(words) > self.max_run:
            return "numeric_run"
        return None

    @staticmethod
    def _longest_run(words: list[str]) -> int:
        """Longest stretch of adjacent number-like words with strictly increasing values."""
        best = run = 0
        previous = None
        for word in words:
            match = _INT.search(word) if _NUMBERISH.match(word) else None
            value = int(match.group()) if match else None
            if value is None:
                run = 0
            elif previous is not None and value > previous and run:
                run += 1
            else:
                run = 1
            best = max(best, run)
            previous = value
        return best
