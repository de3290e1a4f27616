#!/usr/bin/env python
"""Rebuild ``corpus/{ko,en}-debian-faq.jsonl.xz`` from Debian's ``debian-faq-ko`` and
``debian-faq`` packages: one document per question (an ``h2`` section of the HTML FAQ), with the
same id in both languages (``chapter#anchor``).

  apt-get download debian-faq-ko debian-faq
  dpkg-deb -x debian-faq-ko_*.deb faq && dpkg-deb -x debian-faq_*.deb faq
  python examples/data/build_debian_faq.py faq/usr/share/doc/debian/FAQ --out examples/data/corpus
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
from html.parser import HTMLParser
from pathlib import Path

LICENSE = "Debian FAQ licence (verbatim and modified copies permitted, notice kept: README.md)"
BLOCKS = {"p", "div", "pre", "li", "dt", "dd", "tr", "h1", "h2", "h3", "h4", "br", "table"}
SKIPPED = {"navheader", "navfooter", "toc"}


class Sections(HTMLParser):
    """The text of each ``h2`` section of a DocBook chapter page, keyed by the anchor."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.current: list[str] | None = None
        self.skip_depth = 0  # inside navigation: the depth of open divs
        self.pre = 0
        self.in_h2 = False

    def handle_starttag(self, tag: str, attrs) -> None:
        attrs = dict(attrs)
        if tag == "div" and (self.skip_depth or attrs.get("class") in SKIPPED):
            self.skip_depth += 1
        if tag == "h2":
            self.in_h2 = True
        if tag == "a" and self.in_h2 and attrs.get("id"):
            self.current = self.sections.setdefault(attrs["id"], [])
        self.pre += tag == "pre"
        if tag in BLOCKS and self.current is not None:
            self.current.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self.skip_depth:
            self.skip_depth -= 1
        if tag == "h2":
            self.in_h2 = False
        self.pre -= tag == "pre"
        if tag in BLOCKS and self.current is not None:
            self.current.append("\n")

    def handle_data(self, data: str) -> None:
        if self.current is not None and not self.skip_depth:
            self.current.append(data if self.pre else re.sub(r"\s+", " ", data))


def documents(folder: Path, language: str) -> list[dict]:
    """Every question of the FAQ in ``language``, chapter by chapter in the file order."""
    docs = []
    for page in sorted(folder.rglob(f"*.{language}.html")):
        if page.name.startswith("index."):
            continue
        parser = Sections()
        parser.feed(page.read_text(encoding="utf-8"))
        chapter = page.name.split(".")[0]
        for anchor, parts in parser.sections.items():
            lines = [line.strip() for line in "".join(parts).split("\n")]
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
            if len(text) >= 200:
                source = f"debian-faq{'-ko' if language == 'ko' else ''}"
                docs.append(
                    {
                        "id": f"{chapter}#{anchor}",
                        "text": text,
                        "source": source,
                        "license": LICENSE,
                    }
                )
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("faq", type=Path, help="usr/share/doc/debian/FAQ of the extracted packages")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    for language in ("ko", "en"):
        docs = documents(args.faq, language)
        lines = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs)
        path = args.out / f"{language}-debian-faq.jsonl.xz"
        path.write_bytes(lzma.compress(lines.encode(), preset=9 | lzma.PRESET_EXTREME))
        print(f"{path}: {len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters")


if __name__ == "__main__":
    main()
