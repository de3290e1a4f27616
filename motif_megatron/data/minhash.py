"""MinHash near-duplicate detection for Korean and English text, vectorised and out-of-core.

Shingles are character n-grams (5 by default: Korean words are short and agglutinative, so word
shingles miss near-duplicates) of the lower-cased, whitespace-folded text. The signatures are
datasketch's own (>= 2.0, scheme ``affine32``: SHA-1 of each shingle's UTF-8 bytes, the MurmurHash3
finalizer, ``num_perm`` permutations ``a h + b mod 2^32`` seeded as datasketch seeds them), bit for
bit, so their Jaccard estimates and LSH buckets are datasketch's; the C++ kernel
(``csrc/minhash.cpp``) computes them in one pass over the text instead of one Python call per
shingle. ``bench/minhash.py`` measures the speed against ``MinHash.bulk`` and checks the equality.
Banding is chosen for a recall at the threshold (:meth:`MinHashConfig.bands`); the pipeline writes the
signatures in datatrove's bucket format (``blocks.MinhashSignatures``) and its out-of-core stages
find the buckets, the clusters and the documents to drop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from motif_megatron.errors import UserError

ENCODING = ("utf-8", "surrogatepass")
"""How shingles become bytes: UTF-8, with a lone surrogate (valid in JSON) as its 3 bytes."""


@dataclass(frozen=True)
class MinHashConfig:
    """Shingling, signature and banding parameters shared by every stage of a dedup run."""

    num_perm: int = 128
    ngram: int = 5
    threshold: float = 0.8
    seed: int = 1
    recall: float = 0.9
    """The least probability that a pair at Jaccard ``threshold`` shares a band."""

    def bands(self) -> tuple[int, int]:
        """(bands, rows) that catch a pair at the threshold with probability ``recall`` or
        more, and among those the fewest pairs below it (the least area under the S-curve on
        ``[0, threshold]``: datasketch's false-positive weight). datasketch's own optimum, which
        weighs both errors alike, puts the 50% point above the threshold (9 x 13 at 0.8 catches
        40% of the pairs there); at 0.8 and 0.9 this gives 13 x 8 (91%), beside FineWeb's 14 x 8."""
        return _banding(self.threshold, self.num_perm, self.recall)

    def permutations(self) -> tuple[np.ndarray, np.ndarray]:
        """datasketch's ``affine32`` permutation parameters for this seed (uint32 ``a``, ``b``)."""
        from datasketch import MinHash

        a, b = MinHash(num_perm=self.num_perm, seed=self.seed, scheme="affine32").permutations
        return np.ascontiguousarray(a, np.uint32), np.ascontiguousarray(b, np.uint32)


@functools.cache
def _banding(threshold: float, num_perm: int, recall: float) -> tuple[int, int]:
    grid = np.linspace(0.0, threshold, 257)
    best = None
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            if lsh_probability(threshold, bands, rows) < recall:
                continue
            below = np.trapezoid(lsh_probability(grid, bands, rows), grid)
            if best is None or below < best[0]:
                best = (below, bands, rows)
    if best is None:
        raise UserError(
            f"--minhash-recall {recall}: no banding of {num_perm} hashes reaches it at Jaccard "
            f"{threshold}; lower it or raise --minhash-perm"
        )
    return best[1], best[2]


def lsh_probability(jaccard, bands: int, rows: int):
    """The S-curve: the probability that a pair at ``jaccard`` shares at least one band."""
    return 1.0 - (1.0 - np.asarray(jaccard, dtype=float) ** rows) ** bands


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
