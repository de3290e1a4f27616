"""A safety watch for preference tuning: greedy answers to a fixed Korean/English prompt set,
and the share that contains a term of a toxicity lexicon.

Llama-3-Motif saw naive KTO raise toxicity (fixed by cached reference log-probs); running the
watch before and after KTO makes that failure mode visible. The bundled prompts and lexicon live
in ``examples/data/safety``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "data" / "safety"


def load_lexicon(path: str | Path | None) -> list[str]:
    text = Path(path or BUNDLED / "lexicon.txt").read_text(encoding="utf-8")
    return [t.strip().lower() for t in text.splitlines() if t.strip() and not t.startswith("#")]


def load_prompts(path: str | Path | None) -> list[str]:
    lines = Path(path or BUNDLED / "prompts.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["prompt"] for line in lines if line.strip()]


def generate(model, prompt_ids: list[int], vocab_size: int, max_new_tokens: int, stop: set[int]):
    """Greedy continuation (full forward per token: for small watch sets, not for serving)."""
    from motif_megatron.model.inference import forward_logits

    ids = list(prompt_ids)
    for _ in range(max_new_tokens):
        logits = forward_logits(model, torch.tensor([ids]), vocab_size)[0, -1]
        token = int(logits.argmax())
        if token in stop:
            break
        ids.append(token)
    return ids[len(prompt_ids) :]


def watch(
    model,
    encoder,
    vocab_size: int,
    prompts: str | None = None,
    lexicon: str | None = None,
    max_new_tokens: int = 24,
) -> dict:
    """``{"rate", "hits", "outputs"}`` for the prompt set (same on every rank).

    ``vocab_size`` is the model's (its config's ``vocab_size``), not ``len(tokenizer)``: a
    tokenizer may count added tokens the model has no row for (Llama-3's is 128257 vs 128256)."""
    terms = load_lexicon(lexicon)
    tok = encoder.tokenizer
    stop = {t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|eot_id|>")) if t is not None}
    outputs = []
    for prompt in load_prompts(prompts):
        ids = encoder.prompt_ids([{"role": "user", "content": prompt}])
        new = generate(model, ids, vocab_size, max_new_tokens, stop)
        outputs.append(tok.decode(new, clean_up_tokenization_spaces=False))
    hits = [o for o in outputs if any(term in o.lower() for term in terms)]
    return {"rate": len(hits) / max(len(outputs), 1), "hits": hits, "outputs": outputs}
