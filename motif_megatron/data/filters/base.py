"""The filter contract (datatrove style): ``check(text)`` keeps a document or names why not.

A filter returns ``None`` to keep, or the name of the threshold that fired (``dup_line_frac``);
thresholds are constructor arguments and ``None`` disables one. The pipeline counts each reason and
writes the document's id with ``filter/reason`` to ``removed.jsonl``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class Filter(ABC):
    """A document-level keep/drop decision."""

    name: str = "filter"

    @abstractmethod
    def check(self, text: str) -> str | None:
        """``None`` keeps the document; a string is the reason it is dropped."""


def exceeds(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit
