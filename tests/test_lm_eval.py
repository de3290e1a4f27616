"""The lm-eval ``motif`` model against lm-eval's own ``hf`` model on the exported weights."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")


def requests(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def test_motif_matches_hf(tiny_hf, tiny_ckpt):
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    from motif_megatron.eval.lm_eval_model import register

    register()
    ours = get_model("motif")(load=str(tiny_ckpt), max_length=256)
    theirs = HFLM(pretrained=str(tiny_hf), device="cpu", batch_size=1)
    pairs = [
        ("The capital of Korea is", " Seoul."),
        ("서울은 한국의", " 수도입니다."),
        ("def f(x):\n    return", " x + 1"),
    ]
    a = ours.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    b = theirs.loglikelihood(requests("loglikelihood", pairs), disable_tqdm=True)
    for (la, ga), (lb, gb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, abs=1e-4) and ga == gb
    texts = [("한국어 문장과 English words, together. " * 3,)]
    rolling_a = ours.loglikelihood_rolling(
        requests("loglikelihood_rolling", texts), disable_tqdm=True
    )
    # lm-eval's hf also scores the BOS the tokenizer adds to the text; score the text itself
    import torch

    tok = theirs.tokenizer
    ids = torch.tensor(
        [[tok.bos_token_id, *tok(texts[0][0], add_special_tokens=False)["input_ids"]]]
    )
    with torch.no_grad():
        logprobs = torch.log_softmax(theirs.model(ids).logits[0, :-1].double(), -1)
    rolling_b = [float(logprobs.gather(1, ids[0, 1:, None]).sum())]
    assert rolling_a[0] == pytest.approx(rolling_b[0], abs=1e-3)
    gen = [("Hello", {"until": ["\n"], "max_gen_toks": 5, "do_sample": False})]
    assert ours.generate_until(requests("generate_until", gen)) == theirs.generate_until(
        requests("generate_until", gen), disable_tqdm=True
    )
