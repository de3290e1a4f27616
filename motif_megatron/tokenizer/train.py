"""Train a tokenizer on a corpus sample: byte-level BPE with the base model's own pre-tokenizer.

Using the base (Llama-3) pre-tokenizer means every token the new model learns is a token the base
tokenizer could also produce from the same pre-tokenized word, which is what lets
:mod:`motif_megatron.tokenizer.expand` graft them onto the base vocabulary with plain BPE merges.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterable
from pathlib import Path

from motif_megatron.errors import UserError

# Llama-3's pre-tokenizer pattern (used when no base tokenizer is given)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def sample_texts(
    texts: Iterable[str],
    sample_docs: int | None = None,
    sample_chars: int | None = None,
    seed: int = 0,
) -> list[str]:
    """A seeded uniform sample of whole documents, in one pass and in memory bounded by the
    sample: each document draws a random key and the smallest keys are kept (a bottom-k sample),
    up to ``sample_docs`` documents and about ``sample_chars`` characters (EEVE counts on 1 B of
    50 B tokens). Without a bound every document is returned, in input order."""
    if sample_docs is None and sample_chars is None:
        return list(texts)
    rng, heap, chars = random.Random(seed), [], 0  # max-heap on the key: (-key, text)
    for text in texts:
        key = rng.random()
        if heap and sample_docs is not None and len(heap) >= sample_docs and key > -heap[0][0]:
            continue
        heapq.heappush(heap, (-key, text))
        chars += len(text)
        while (sample_docs is not None and len(heap) > sample_docs) or (
            sample_chars is not None and len(heap) > 1 and chars - len(heap[0][1]) >= sample_chars
        ):
            chars -= len(heapq.heappop(heap)[1])
    return [text for _, text in sorted(heap, reverse=True)]


def train_bpe(texts: Iterable[str], vocab_size: int, base_dir: str | Path | None = None):
    """An HF ``tokenizers.Tokenizer`` (byte-level BPE) trained on ``texts``, streamed (the
    trainer keeps word counts, not documents)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    if base_dir is not None:
        base_file = Path(base_dir) / "tokenizer.json"
        if not base_file.is_file():
            raise UserError(f"{base_file} not found: --base must be an HF tokenizer directory")
        base = Tokenizer.from_file(str(base_file))
        tokenizer.pre_tokenizer = base.pre_tokenizer
        tokenizer.decoder = base.decoder
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=True,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    length = len(texts) if isinstance(texts, list) else None
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


def save(tokenizer, out: str | Path, meta: dict) -> Path:
    """Write an HF tokenizer directory (``tokenizer.json`` + config) loadable by AutoTokenizer."""
    from transformers import PreTrainedTokenizerFast

    out = Path(out)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(out)
    (out / "training.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
