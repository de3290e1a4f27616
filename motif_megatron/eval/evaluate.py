"""Evaluate one or several checkpoints: perplexity per language (against one reference
tokenizer, so tokenizers compare), token ratio, into ``evaluation.{json,md,png}``."""

from __future__ import annotations

import json
from pathlib import Path

from motif_megatron.errors import UserError


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder} holds no tokenizer.json")
    return AutoTokenizer.from_pretrained(str(folder))


def evaluate(
    checkpoints: dict[str, str],
    texts: dict[str, list[str]],
    out: str | Path,
    reference_tokenizer: str | Path | None = None,
    seq_length: int = 256,
    tp: int = 1,
    pp: int = 1,
) -> dict:
    """``{"reference_tokenizer", "checkpoints": {label: {lang: {...}, "token_ratio": {lang}}}}``."""
    import torch

    from motif_megatron import parallel
    from motif_megatron.checkpoint import dist as ckpt
    from motif_megatron.eval.perplexity import perplexity
    from motif_megatron.model.builder import BuildOptions, build_from_checkpoint

    if not checkpoints:
        raise UserError("give at least one checkpoint (--load LABEL=CKPT)")
    first = next(iter(checkpoints.values()))
    reference_dir = Path(reference_tokenizer or ckpt.root_of(first) / "tokenizer")
    reference = _tokenizer(reference_dir)
    parallel.initialize(parallel.ParallelConfig(tp, pp))
    results = {}
    for label, load in checkpoints.items():
        tokenizer = _tokenizer(ckpt.root_of(load) / "tokenizer")
        model, args = build_from_checkpoint(
            load, BuildOptions(tp=tp, pp=pp, params_dtype=torch.float32)
        )
        row: dict = {"load": str(load), "token_ratio": {}}
        for lang, docs in texts.items():
            p = perplexity(model, docs, tokenizer, reference, args.vocab_size, seq_length)
            row[lang] = {
                "ppl": p.ppl,
                "token_ppl": p.token_ppl,
                "bits_per_char": p.bits_per_char,
                "tokens": p.tokens,
                "reference_tokens": p.reference_tokens,
            }
            row["token_ratio"][lang] = p.tokens / max(p.reference_tokens, 1)
        results[label] = row
        del model
    report = {
        "reference_tokenizer": str(reference_dir),
        "seq_length": seq_length,
        "checkpoints": results,
    }
    if parallel.rank() == 0:
        write(report, Path(out), list(texts))
    return report


def write(report: dict, out: Path, langs: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    rows = report["checkpoints"]
    head = (
        "| checkpoint | "
        + " | ".join(f"{lang} ppl | {lang} bits/char | {lang} token ratio" for lang in langs)
        + " |"
    )
    lines = [
        "# Evaluation",
        "",
        f"Perplexity per token of the reference tokenizer (`{report['reference_tokenizer']}`), so "
        "checkpoints with different tokenizers compare; bits per character likewise; token ratio = "
        "tokens spent / reference tokens.",
        "",
        head,
        "|" + "---|" * (1 + 3 * len(langs)),
    ]
    for label, row in rows.items():
        cells = [
            f"{row[lang]['ppl']:.2f} | {row[lang]['bits_per_char']:.3f} | "
            f"{row['token_ratio'][lang]:.3f}"
            for lang in langs
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "evaluation.md").write_text("\n".join(lines) + "\n")
    fig, axes = plt.subplots(1, len(langs), figsize=(4.5 * len(langs), 3.8), squeeze=False)
    for ax, lang in zip(axes[0], langs, strict=True):
        ax.bar(list(rows), [rows[k][lang]["ppl"] for k in rows], color="tab:blue")
        ax.set_title(f"{lang} perplexity (lower is better)")
        ax.tick_params(axis="x", rotation=20)
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / "evaluation.png", dpi=110)
    plt.close(fig)
