"""Loss curves from metrics JSONL files (``--metrics-file``): loss, eval loss, LR and MSG mask,
with stage changes marked, for one run or several side by side."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from motif_megatron.errors import UserError


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of one metrics file."""
    train, evals = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read metrics file {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number} is not a JSON line") from None
        (evals if "eval_loss" in record else train).append(record)
    if not train:
        raise UserError(f"{path} holds no training iterations")
    return train, evals


def plot_runs(runs: dict[str, str | Path], out: str | Path, smooth: int = 1) -> Path:
    """One PNG: loss (moving average over ``smooth`` iterations) and eval loss per run above,
    learning rate and MSG mask below; dotted lines mark stage changes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for label, path in runs.items():
        train, evals = read_metrics(path)
        its = [r["iteration"] for r in train]
        loss = [r["loss"] for r in train]
        window = max(smooth, 1)
        avg = [
            sum(loss[max(0, i - window + 1) : i + 1]) / len(loss[max(0, i - window + 1) : i + 1])
            for i in range(len(loss))
        ]
        (line,) = top.plot(its, avg, label=f"{label} train")
        if evals:
            top.plot(
                [e["iteration"] for e in evals],
                [e["eval_loss"] for e in evals],
                "o--",
                color=line.get_color(),
                label=f"{label} valid",
            )
        bottom.plot(
            its, [r.get("lr", 0.0) for r in train], color=line.get_color(), label=f"{label} lr"
        )
        masks = [(r["iteration"], r["msg_mask"]) for r in train if r.get("msg_mask") is not None]
        if masks:
            twin = bottom.twinx()
            twin.plot(*zip(*masks, strict=True), ":", color=line.get_color())
            twin.set_ylabel("MSG mask")
        for prev, cur in itertools.pairwise(train):
            if prev.get("stage") != cur.get("stage"):
                for ax in (top, bottom):
                    ax.axvline(cur["iteration"], color=line.get_color(), linestyle=":", alpha=0.6)
                top.annotate(
                    cur["stage"], (cur["iteration"], max(avg)), rotation=90, fontsize=8, va="top"
                )
    top.set_ylabel("lm loss")
    top.legend()
    top.grid(alpha=0.3)
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("iteration")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
