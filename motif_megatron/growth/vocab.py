"""New embedding and output rows for an expanded tokenizer, by one of six initialisations.

Old rows stay bit-identical. ``pieces`` are each new token's ids under the old tokenizer (from
``new_tokens.json``).

- ``random``: N(0, initializer_range), what a freshly resized HF model does without care.
- ``mean``: the mean of all old rows (Hewitt, 2021).
- ``mean-resizing``: N(mu, 1e-9 Sigma) of the old rows (HF ``resize_token_embeddings``).
- ``subword-mean``: the mean of the new token's pieces' rows, for input and output (EEVE inputs).
- ``first-subword``: the first piece's row, for input and output (EEVE's output-head choice).
- ``decompose``: RedWhale's decomposition: the input row is the mean of the pieces' embeddings and
  the output row the first piece's head row, so the new token starts as likely as its first piece
  and reads as the sum of its parts.
"""

from __future__ import annotations

import torch

from motif_megatron.errors import UserError
from motif_megatron.growth.request import INITS


def _mean(rows: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Mean row in fp32 without an fp32 copy of the whole matrix."""
    total = torch.zeros(rows.shape[1])
    for i in range(0, len(rows), chunk):
        total += rows[i : i + chunk].float().sum(0)
    return total / len(rows)


def _covariance(rows: torch.Tensor, mu: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    cov = torch.zeros(rows.shape[1], rows.shape[1])
    for i in range(0, len(rows), chunk):
        centred = rows[i : i + chunk].float() - mu
        cov += centred.T @ centred
    return cov / max(len(rows) - 1, 1)


def fill_rows(
    target: torch.Tensor,
    ids: list[int],
    old: torch.Tensor,
    pieces: list[list[int]],
    method: str,
    is_output: bool,
    std: float,
    seed: int = 0,
    chunk: int = 1024,
) -> None:
    """Write the new rows ``target[ids]`` from ``old [V, hidden]`` (a view of target's old rows
    is fine), ``chunk`` rows at a time in fp32: the memory cost is one chunk, not the new rows
    or an fp32 copy of the vocabulary."""
    if method not in INITS:
        raise UserError(f"--init {method!r}: choose one of {', '.join(INITS)}")
    if method in ("subword-mean", "first-subword", "decompose") and any(not p for p in pieces):
        raise UserError("a new token has no pieces under the old tokenizer (new_tokens.json)")
    generator = torch.Generator().manual_seed(seed + int(is_output))
    hidden = old.shape[1]
    mu = _mean(old) if method in ("mean", "mean-resizing") else None
    if method == "mean-resizing":
        cov = _covariance(old, mu)
        # N(mu, 1e-9 cov): a Cholesky factor of cov (jittered to be positive definite) scales noise
        chol = torch.linalg.cholesky(cov + 1e-6 * torch.eye(hidden) * cov.diagonal().mean())
        del cov
    use_first = method == "first-subword" or (method == "decompose" and is_output)
    for start in range(0, len(ids), chunk):
        block = pieces[start : start + chunk]
        n = len(block)
        if method == "random":
            rows = torch.randn(n, hidden, generator=generator) * std
        elif method == "mean":
            rows = mu.expand(n, hidden)
        elif method == "mean-resizing":
            rows = mu + (torch.randn(n, hidden, generator=generator) @ chol.T) * 1e-9**0.5
        elif use_first:
            rows = old[[p[0] for p in block]].float()
        else:
            rows = torch.stack([old[p].float().mean(0) for p in block])
        target[ids[start : start + n]] = rows.to(target.dtype)
