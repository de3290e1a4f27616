"""The filter contract: a datatrove ``BaseFilter`` whose decision is ``check(text)``.

``check`` returns ``None`` to keep, or the name of the threshold that fired (``dup_line_frac``);
thresholds are constructor arguments and ``None`` disables one. As datatrove blocks, filters count
``dropped_<reason>`` in their stats and hand each dropped document to their ``exclusion_writer``
(the pipeline gives each one that writes ``removed_<name>_<rank>.jsonl``).
"""

from __future__ import annotations

from abc import abstractmethod

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


class Filter(BaseFilter):
    """A document-level keep/drop decision on the text alone."""

    name: str = "filter"

    @abstractmethod
    def check(self, text: str) -> str | None:
        """``None`` keeps the document; a string is the reason it is dropped."""

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        reason = self.check(doc.text)
        return True if reason is None else (False, reason)


def exceeds(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def below(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit
