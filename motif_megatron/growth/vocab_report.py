"""How each vocabulary initialisation starts: KL on old inputs and initial loss on new ones.

For every ``--init`` method the base checkpoint is grown to the expanded tokenizer and scored on
real text: the KL divergence from the base model's next-token distribution to the grown model's
on old-tokenizer inputs (how much the new output rows disturb what the model already does), and
the grown model's loss on the same text under the new tokenizer (per token and per character,
since the two tokenizers cut the text differently). RedWhale reports decomposition cutting the
initial loss from ~17.5 to ~11.1; mean-based inits should disturb the base far less than random.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from motif_megatron import parallel
from motif_megatron.checkpoint import dist
from motif_megatron.checkpoint.dist import build_from_checkpoint
from motif_megatron.growth import vocab
from motif_megatron.growth.transform import GrowthRequest, grow
from motif_megatron.model.builder import BuildOptions
from motif_megatron.model.inference import forward_logits


def _chunks(ids: list[int], seq: int) -> list[torch.Tensor]:
    return [
        torch.tensor(ids[i : i + seq]).unsqueeze(0)
        for i in range(0, len(ids) - 1, seq)
        if len(ids[i : i + seq]) > 1
    ]


def _logits(load: str | Path, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    model, args = build_from_checkpoint(str(load), BuildOptions(params_dtype=torch.float32))
    return [forward_logits(model, b, args.vocab_size)[0] for b in batches]


def init_report(
    load: str | Path,
    tokenizer: str | Path,
    texts: list[str],
    out: str | Path,
    methods: tuple[str, ...] = vocab.METHODS,
    seq: int = 128,
) -> dict:
    from transformers import AutoTokenizer

    parallel.initialize(parallel.ParallelConfig(1, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    old_tok = AutoTokenizer.from_pretrained(dist.root_of(load) / "tokenizer")
    new_tok = AutoTokenizer.from_pretrained(tokenizer)
    old_batches = [
        c for t in texts for c in _chunks(old_tok(t, add_special_tokens=False).input_ids, seq)
    ]
    new_batches = [
        c for t in texts for c in _chunks(new_tok(t, add_special_tokens=False).input_ids, seq)
    ]
    chars = sum(map(len, texts))
    base = _logits(load, old_batches)
    results = {}
    for method in methods:
        with tempfile.TemporaryDirectory() as tmp:
            grown = Path(tmp) / "grown"
            grow(load, grown, GrowthRequest(tokenizer=str(tokenizer), init=method))
            on_old = _logits(grown, old_batches)
            on_new = _logits(grown, new_batches)
        # KL(p_base || p_grown) over the base vocabulary: sum p_base (log p_base - log p_grown)
        kl = sum(
            F.kl_div(
                F.log_softmax(n, -1)[..., : b.shape[-1]],
                F.log_softmax(b, -1),
                log_target=True,
                reduction="sum",
            )
            for b, n in zip(base, on_old, strict=True)
        ) / sum(b.shape[0] for b in base)
        loss_sum = sum(
            F.cross_entropy(lg[:-1], b[0, 1:], reduction="sum")
            for lg, b in zip(on_new, new_batches, strict=True)
        )
        tokens = sum(b.shape[1] - 1 for b in new_batches)
        results[method] = {
            "kl_old_inputs": float(kl),
            "loss_per_token": float(loss_sum / tokens),
            "loss_per_char": float(loss_sum / chars),
        }
    report = {
        "methods": results,
        "texts": len(texts),
        "new_tokens": sum(b.numel() for b in new_batches),
        "old_tokens": sum(b.numel() for b in old_batches),
    }
    (out / "vocab_init.json").write_text(json.dumps(report, indent=2) + "\n")
    _write_md_png(out, report)
    return report


def _write_md_png(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["methods"]
    lines = [
        "# Vocabulary initialisation",
        "",
        "| init | KL(base -> grown) on old inputs | initial loss / token (new tokenizer) | per char |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {m} | {r['kl_old_inputs']:.4g} | {r['loss_per_token']:.3f} | {r['loss_per_char']:.3f} |"
        for m, r in rows.items()
    ]
    (out / "vocab_init.md").write_text("\n".join([*lines, "", "![inits](vocab_init.png)", ""]))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(rows)
    axes[0].bar(names, [max(rows[m]["kl_old_inputs"], 1e-12) for m in names], color="tab:purple")
    axes[0].set_yscale("log")
    axes[0].set_title("KL from the base on old-tokenizer inputs")
    axes[1].bar(names, [rows[m]["loss_per_token"] for m in names], color="tab:orange")
    axes[1].set_title("initial loss per token, new tokenizer")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "vocab_init.png", dpi=100)
    plt.close(fig)
