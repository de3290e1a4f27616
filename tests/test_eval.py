"""Perplexity per reference token: windows cover every token once, the NLL matches HF's, and the
evaluate tool writes its report."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import bundled_corpus, ok, run

from motif_megatron.eval.perplexity import windows


def test_windows_predict_every_token_once():
    docs = [list(range(1, 12)), [20, 21, 22]]
    batch = windows(docs, seq_length=4, pad=0)
    predicted = [
        int(t) for t, m in zip(batch.labels.flatten(), batch.loss_mask.flatten(), strict=True) if m
    ]
    assert predicted == [*range(2, 12), 21, 22]
    assert (
        batch.tokens[:, 1:][batch.loss_mask[:, 1:] > 0]
        == batch.labels[:, :-1][batch.loss_mask[:, 1:] > 0]
    ).all()


@pytest.mark.parametrize("seq_length", [4096, 16])  # whole documents; windows with short tails
def test_perplexity_matches_hf_and_the_report_is_written(tmp_path, tiny_hf, tiny_ckpt, seq_length):
    """Against HF on the same windows: batches of windows of different lengths, cut to their
    longest, give each window's NLL as HF gives it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    corpus, texts = bundled_corpus(tmp_path, "ko-libreoffice-help", n=3)
    ok(
        run(
            [
                "tools/evaluate.py",
                "--load",
                f"tiny={tiny_ckpt}",
                "--text",
                f"ko={corpus}",
                "--out",
                str(tmp_path / "ev"),
                "--seq-length",
                str(seq_length),
            ]
        )
    )
    report = json.loads((tmp_path / "ev/evaluation.json").read_text())["checkpoints"]["tiny"]["ko"]
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    model = AutoModelForCausalLM.from_pretrained(tiny_hf)
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
            for start in range(0, len(ids) - 1, seq_length):
                chunk = torch.tensor([ids[start : start + seq_length + 1]])
                n = chunk.shape[1] - 1
                nll += float(model(chunk, labels=chunk).loss) * n
                tokens += n
    assert report["tokens"] == report["reference_tokens"] == tokens
    assert report["ppl"] == report["token_ppl"]
    assert math.isclose(report["ppl"], math.exp(nll / tokens), rel_tol=1e-4)
    assert (tmp_path / "ev/evaluation.md").read_text().startswith("# Evaluation")
    assert (tmp_path / "ev/evaluation.png").stat().st_size > 0
