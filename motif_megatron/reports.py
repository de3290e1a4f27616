"""The one report writer: ``NAME.json`` for machines, ``NAME.md`` and ``NAME.png`` for people.

The corpus report, the vocabulary-initialisation report, the tokenizer report, the evaluation and
the recipe ablation all write through :func:`write_report`, so every report is the same three
files with the picture linked from the Markdown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fsspec.core import url_to_fs


def write_report(
    out: str | Path,
    name: str,
    record: dict,
    lines: list[str],
    draw: Callable | None = None,
    dpi: int = 100,
) -> None:
    """``out/NAME.json`` (``record``), ``out/NAME.png`` (the figure ``draw(pyplot)`` returns, if
    given) and ``out/NAME.md`` (``lines``, then the picture); ``out`` is a folder or any fsspec
    URL (``s3://bucket/run``)."""
    fs, root = url_to_fs(str(out))
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/{name}.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if draw is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = draw(plt)
        fig.tight_layout()
        with fs.open(f"{root}/{name}.png", "wb") as f:
            fig.savefig(f, format="png", dpi=dpi)
        plt.close(fig)
        lines = [*lines, "", f"![{name}]({name}.png)"]
    with fs.open(f"{root}/{name}.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
