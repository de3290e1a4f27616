#!/usr/bin/env python
"""MinHash against datasketch on the same shingles, same corpus, same run: equality, speed,
Jaccard bias, LSH precision and recall.

Both sides see the same normalised character 5-grams (ours cut from the UTF-8 text in C++,
datasketch given their bytes), 128 permutations and the same LSH bands (datasketch's optimum for
the threshold: b=9, r=13 at 0.8). Near-duplicates are planted (1-5% of the characters of 100
documents edited). The truth is exact: every pair's shingle-set Jaccard, computed as one sparse
product.

- equality: our signatures against datasketch's ``hashvalues`` (scheme affine32), bit for bit;
  the bias, precision and recall below then agree by construction.
- speed: ours (text -> signatures, C++ kernel, one thread by default) against datasketch
  ``MinHash.bulk`` given the shingle lists ready (its hashing and permutations only); target
  >= 10x.
- bias: the mean of (estimate - exact Jaccard) over the pairs with exact Jaccard >= 0.5, both
  estimated from the signatures as the fraction of equal minima; target: ours no worse.
- LSH: the candidate pairs each side's bands give, against the pairs with exact Jaccard >=
  the threshold; target: ours at least datasketch's precision and recall.

  .venv/bin/python bench/minhash.py [--corpus ../shared/data/ko/libreoffice-help-ko.jsonl]
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import time
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from motif_megatron.data import minhash as mh

ROOT = Path(__file__).resolve().parents[1]


def load_docs(corpus: str | None) -> list[str]:
    path = Path(corpus) if corpus else ROOT / "examples/data/corpus/ko-libreoffice-help.jsonl.xz"
    raw = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    docs = [json.loads(line)["text"] for line in raw.decode().split("\n") if line.strip()]
    rng = random.Random(0)
    for i in rng.sample(range(len(docs)), min(100, len(docs))):
        text = list(docs[i])
        for k in rng.sample(range(len(text)), len(text) * rng.randint(1, 5) // 100):
            text[k] = "가"
        docs.append("".join(text))
    return docs


def exact_jaccard(docs: list[str], ngram: int) -> np.ndarray:
    """``[n, n]`` exact shingle-set Jaccard of every pair (a sparse doc x shingle product)."""
    from scipy import sparse

    sets = [set(mh.shingles(t, ngram)) for t in docs]
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(s, len(vocab)) for shingles in sets for s in shingles]
    sizes = np.array([len(s) for s in sets])
    rows = np.repeat(np.arange(len(docs)), sizes)
    m = sparse.csr_matrix((np.ones(len(ids), np.float32), (rows, ids)), (len(docs), len(vocab)))
    inter = (m @ m.T).toarray()
    return inter / (sizes[:, None] + sizes[None, :] - inter)


def datasketch_shingles(docs: list[str], ngram: int) -> list[list[bytes]]:
    return [[s.encode(*mh.ENCODING) for s in mh.shingles(text, ngram)] for text in docs]


def datasketch_pairs(hashes: list[MinHash], threshold: float) -> set[tuple[int, int]]:
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    return {tuple(sorted((i, j))) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i}


def our_pairs(sig: np.ndarray, config: mh.MinHashConfig) -> set[tuple[int, int]]:
    """Every pair sharing a bucket in some band (what ``MinHashLSH.query`` returns)."""
    bands, rows = config.bands()
    pairs = set()
    for band in range(bands):
        keys = np.ascontiguousarray(sig[:, band * rows : (band + 1) * rows]).view(f"V{4 * rows}")
        _, bucket = np.unique(keys.ravel(), return_inverse=True)
        groups: dict[int, list[int]] = {}
        for doc, b in enumerate(bucket.tolist()):
            groups.setdefault(b, []).append(doc)
        pairs |= {(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1 :]}
    return pairs


def report(name: str, errors: list[np.ndarray], pairs: list[set], truth: set) -> tuple:
    """Bias and mean |error| over every seed's estimates; precision and recall pooled."""
    e = np.concatenate(errors)
    bias, se = float(e.mean()), float(np.std([x.mean() for x in errors]) / np.sqrt(len(errors)))
    found = sum(len(p & truth) for p in pairs)
    precision = found / max(sum(map(len, pairs)), 1)
    recall = found / max(len(truth) * len(pairs), 1)
    print(
        f"  {name:10s} bias {bias:+.4f} (+-{se:.4f} over seeds; mean |error| "
        f"{np.abs(e).mean():.4f}); LSH {sum(map(len, pairs)) / len(pairs):.1f} pairs per seed: "
        f"precision {precision:.3f}, recall {recall:.3f}"
    )
    return bias, precision, recall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", help="JSONL (or .jsonl.xz) corpus; default: the bundled one")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--seeds", type=int, default=5, help="permutation seeds per side (estimates are noisy)"
    )
    args = parser.parse_args()
    docs = load_docs(args.corpus)
    exact = exact_jaccard(docs, 5)
    i, j = np.triu_indices(len(docs), 1)
    near = exact[i, j] >= 0.5
    i, j = i[near], j[near]
    truth = {
        (int(a), int(b))
        for a, b in zip(*np.nonzero(np.triu(exact >= args.threshold, 1)), strict=True)
    }
    shingles = datasketch_shingles(docs, 5)
    runs = {"ours": ([], [], []), "datasketch": ([], [], [])}
    identical = 0
    for seed in range(1, args.seeds + 1):
        config = mh.MinHashConfig(threshold=args.threshold, seed=seed)
        start = time.perf_counter()
        sig = mh.signatures(docs, config, threads=args.threads)
        runs["ours"][2].append(time.perf_counter() - start)
        start = time.perf_counter()
        hashes = MinHash.bulk(shingles, num_perm=config.num_perm, seed=seed, scheme="affine32")
        runs["datasketch"][2].append(time.perf_counter() - start)
        ref_sig = np.stack([m.hashvalues for m in hashes])
        identical += np.array_equal(sig, ref_sig)
        for name, s, pairs in (
            ("ours", sig, our_pairs(sig, config)),
            ("datasketch", ref_sig, datasketch_pairs(hashes, args.threshold)),
        ):
            runs[name][0].append((s[i] == s[j]).mean(1) - exact[i, j])
            runs[name][1].append(pairs)
    print(
        f"{len(docs)} documents, {len(i)} pairs with Jaccard >= 0.5, {len(truth)} >= "
        f"{args.threshold}; bands {config.bands()}; {args.seeds} seeds"
    )
    print(f"  signatures bit-identical to datasketch's: {identical} of {args.seeds} seeds")
    ours = report("ours", *runs["ours"][:2], truth)
    ref = report("datasketch", *runs["datasketch"][:2], truth)
    ours_time, ref_time = min(runs["ours"][2]), min(runs["datasketch"][2])
    ratio = ref_time / ours_time
    print(
        f"  speed (best of {args.seeds}): ours {len(docs) / ours_time:.0f} docs/s from text, "
        f"datasketch MinHash.bulk {len(docs) / ref_time:.0f} docs/s from ready shingles: "
        f"ratio {ratio:.1f}x"
    )
    met = {
        "identical": identical == args.seeds,
        "speed >= 10x": ratio >= 10,
        "bias no worse": abs(ours[0]) <= abs(ref[0]),
        "precision >= datasketch": ours[1] >= ref[1],
        "recall >= datasketch": ours[2] >= ref[2],
    }
    print("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in met.items()))


if __name__ == "__main__":
    main()
