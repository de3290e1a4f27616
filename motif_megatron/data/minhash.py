"""MinHash near-duplicate detection for Korean and English text, vectorised and out-of-core.

Shingles are character n-grams (5 by default: Korean words are short and agglutinative, so word
shingles miss near-duplicates) of the lower-cased, whitespace-folded text. The signatures are
datasketch's own (>= 2.0, scheme ``affine32``: SHA-1 of each shingle's UTF-8 bytes, the MurmurHash3
finalizer, ``num_perm`` permutations ``a h + b mod 2^32`` seeded as datasketch seeds them), bit for
bit, so their Jaccard estimates and LSH buckets are datasketch's; the C++ kernel
(``csrc/minhash.cpp``) computes them in one pass over the text instead of one Python call per
shingle. ``bench/minhash.py`` measures the speed against ``MinHash.bulk`` and checks the equality.
Banding follows datasketch's optimal ``(b, r)`` for the threshold; the pipeline writes the
signatures in datatrove's bucket format (``blocks.MinhashSignatures``) and its out-of-core stages
find the buckets, the clusters and the documents to drop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ENCODING = ("utf-8", "surrogatepass")
"""How shingles become bytes: UTF-8, with a lone surrogate (valid in JSON) as its 3 bytes."""


@dataclass(frozen=True)
class MinHashConfig:
    """Shingling, signature and banding parameters shared by every stage of a dedup run."""

    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.8
    seed: int = 1

    def bands(self) -> tuple[int, int]:
        """datasketch's optimal (bands, rows) for this threshold and permutation count."""
        from datasketch.lsh import _optimal_param

        return _optimal_param(self.threshold, self.num_perm, 0.5, 0.5)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """datasketch's ``affine32`` permutation parameters for this seed (uint32 ``a``, ``b``)."""
        from datasketch import MinHash

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme="affine32").permutations
        return np.ascontiguousarray(a, np.uint32), np.ascontiguousarray(b, np.uint32)


def normalise(text: str) -> str:
    """Lower-cased, whitespace runs folded to one space, stripped (``str.split``'s whitespace is
    ``re``'s ``\\s``, at a third of the cost)."""
    return " ".join(text.lower().split())


def shingles(text: str, ngram: int) -> list[str]:
    """The character n-grams the signatures hash: of the normalised text, or the text itself if
    it is shorter (what datasketch is given, encoded with :data:`ENCODING`)."""
    norm = normalise(text)
    return [norm[k : k + ngram] for k in range(max(len(norm) - ngram + 1, 1))]


def signatures(texts: list[str], config: MinHashConfig, threads: int = 1) -> np.ndarray:
    """``[len(texts), num_perm]`` uint32 MinHash signatures, equal to datasketch's
    ``MinHash(scheme="affine32").hashvalues`` over :func:`shingles` (C++ kernel over the
    normalised UTF-8 texts, which it cuts into n-grams itself)."""
    from motif_megatron._minhash import signatures as kernel

    encoded = [normalise(t).encode(*ENCODING) for t in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=offsets[1:])
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    a, b = config.permutations()
    return kernel(data, offsets, config.ngram, a, b, threads)
