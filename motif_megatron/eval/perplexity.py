"""Perplexity of a Megatron checkpoint on held-out documents, comparable across tokenizers.

A model's total negative log-likelihood of a text does not depend on how its tokenizer cuts
the text, but the token count does: an expanded Korean vocabulary spends fewer tokens, so its
per-token perplexity looks worse for the same model quality. Perplexity here is therefore
``exp(total NLL / tokens of the text under a reference tokenizer)`` (the base model's), the same
denominator for every checkpoint; the per-token figure is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from motif_megatron.model.schedule import Batch


@dataclass
class Perplexity:
    nll: float
    """Total negative log-likelihood (nats) of the documents."""
    tokens: int
    """Tokens the model's own tokenizer spends (and predicts)."""
    reference_tokens: int
    chars: int

    @property
    def ppl(self) -> float:
        """Perplexity per reference-tokenizer token (comparable across tokenizers)."""
        return math.exp(self.nll / max(self.reference_tokens, 1))

    @property
    def token_ppl(self) -> float:
        return math.exp(self.nll / max(self.tokens, 1))

    @property
    def bits_per_char(self) -> float:
        return self.nll / max(self.chars, 1) / math.log(2)


def windows(docs: list[list[int]], seq_length: int, pad: int) -> Batch:
    """Non-overlapping windows of ``seq_length`` predictions per document (its first token, BOS,
    is context only); the tail window is padded with no loss."""
    rows = []
    for ids in docs:
        for start in range(0, max(len(ids) - 1, 0), seq_length):
            chunk = ids[start : start + seq_length + 1]
            n = len(chunk) - 1
            rows.append(
                (chunk[:-1] + [pad] * (seq_length - n), chunk[1:] + [pad] * (seq_length - n), n)
            )
    tokens = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    mask = torch.tensor([[1.0] * r[2] + [0.0] * (seq_length - r[2]) for r in rows])
    return Batch(tokens, labels, mask, torch.arange(seq_length).expand(len(rows), -1))


def mask_padded_vocab(model, vocab_size: int):
    """Give the padded output columns (Megatron pads the vocabulary for TP) a logit of -inf, so
    the softmax spans the real vocabulary only, as HF's does; returns the hook handle. Training
    keeps Megatron-LM's behaviour (padding inside the softmax), where it learns to stay small."""
    from megatron.core import parallel_state

    layer = getattr(model, "output_layer", None)
    if layer is None:
        return None

    def hook(module, inputs, output):
        logits, bias = output
        local = logits.shape[-1]
        first = parallel_state.get_tensor_model_parallel_rank() * local
        # the padded columns are this shard's last ones: filled in place (forward-only), not a
        # copy of the whole logits tensor
        logits[..., max(vocab_size - first, 0) :].fill_(float("-inf"))
        return logits, bias

    return layer.register_forward_hook(hook)


def perplexity(
    model,
    texts: list[str],
    tokenizer,
    reference_tokenizer,
    vocab_size: int,
    seq_length: int = 256,
    batch: int = 8,
) -> Perplexity:
    """NLL of ``texts`` under ``model`` (any TP/PP: Megatron's forward-only schedule), with the
    softmax over the ``vocab_size`` real tokens."""
    from motif_megatron.model.schedule import forward_only, reduce_reports

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    # with BOS as context every token of the text is predicted, whatever the tokenizer
    docs = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    reference = sum(
        len(reference_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts
    )
    pad = tokenizer.eos_token_id or 0
    all_rows = windows(docs, seq_length, pad)
    nll, count = 0.0, 0
    handle = mask_padded_vocab(model, vocab_size)
    # longest windows first, each batch cut to its longest one: a causal model's predictions do
    # not depend on the padding after them, which documents' tail windows would spend compute on
    lengths = all_rows.loss_mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        width = int(lengths[rows[0]])
        part = Batch(
            all_rows.tokens[rows, :width],
            all_rows.labels[rows, :width],
            all_rows.loss_mask[rows, :width],
            all_rows.position_ids[rows, :width],
        )
        n = int(part.loss_mask.sum())
        reports = forward_only([model], part, part.tokens.shape[0])
        nll += reduce_reports(reports)["lm loss"] * n
        count += n
    if handle is not None:
        handle.remove()
    return Perplexity(nll, count, reference, sum(len(t) for t in texts))
