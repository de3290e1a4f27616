"""The one report writer: ``NAME.json`` for machines, ``NAME.md`` and ``NAME.png`` for people.

The corpus report, the vocabulary-initialisation report, the tokenizer report, the evaluation and
the recipe ablation all write through :func:`write_report`, so every report is the same three
files with the picture linked from the Markdown.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report(
    out: str | Path,
    name: str,
    record: dict,
    lines: list[str],
    draw: Callable | None = None,
    dpi: int = 100,
) -> None:
    """``out/NAME.json`` (``record``), ``out/NAME.png`` (the figure ``draw(pyplot)`` returns, if
    given) and ``out/NAME.md`` (``lines``, then the picture)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if draw is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = draw(plt)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=dpi)
        plt.close(fig)
        lines = [*lines, "", f"![{name}]({name}.png)"]
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
