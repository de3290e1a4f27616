"""Tokenizer efficiency: token ratio against a base, fertility, characters per token."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenStats:
    documents: int
    characters: int
    words: int
    tokens: int

    @property
    def fertility(self) -> float:
        """Tokens per whitespace-separated word."""
        return self.tokens / max(self.words, 1)

    @property
    def chars_per_token(self) -> float:
        return self.characters / max(self.tokens, 1)


def token_stats(tokenizer, texts: list[str]) -> TokenStats:
    """Counts for an HF ``tokenizers.Tokenizer`` (no special tokens)."""
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    return TokenStats(len(texts), sum(map(len, texts)), sum(len(t.split()) for t in texts), tokens)


def token_ratio(tokens: int, reference_tokens: int) -> float:
    """Tokens a tokenizer needs per reference (base) token on the same text (RedWhale: ~0.57)."""
    return tokens / max(reference_tokens, 1)
