#!/usr/bin/env python
"""MinHash dedup throughput vs datasketch per-shingle ``MinHash.update``, same corpus, same run.

Both use 128 permutations and character 5-gram shingles. Near-duplicates are planted (1-5% of the
characters of some documents edited) and precision/recall of each method's LSH candidate pairs is
measured against the exact shingle-set Jaccard >= threshold. Ratio > 1 means ours is faster.

  .venv/bin/python bench/minhash.py [--corpus ../shared/data/ko/libreoffice-help-ko.jsonl]
"""

from __future__ import annotations

import argparse
import json
import lzma
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from datasketch import MinHash, MinHashLSH

from motif_megatron.data import minhash as mh

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", help="JSONL corpus (default: the bundled Korean one)")
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.corpus:
        lines = Path(args.corpus).read_text().split("\n")
    else:
        lines = (
            lzma.decompress(
                (ROOT / "examples/data/corpus/ko-libreoffice-help.jsonl.xz").read_bytes()
            )
            .decode()
            .split("\n")
        )
    docs = [json.loads(line)["text"] for line in lines if line.strip()]
    rng = random.Random(0)
    for i in rng.sample(range(len(docs)), min(100, len(docs))):
        text = list(docs[i])
        for k in rng.sample(range(len(text)), len(text) * rng.randint(1, 5) // 100):
            text[k] = "가"
        docs.append("".join(text))
    config = mh.MinHashConfig(threshold=args.threshold)
    shingle_sets = [set(mh.shingle_hashes(t, 5).tolist()) for t in docs]

    start = time.perf_counter()
    sig = mh.signatures(docs, config, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "sig.npy", sig)
        ours_pairs = {tuple(sorted(p)) for p in mh.candidate_pairs([Path(tmp) / "sig.npy"], config)}
    ours = time.perf_counter() - start

    start = time.perf_counter()
    lsh = MinHashLSH(threshold=args.threshold, num_perm=128)
    hashes = []
    for i, text in enumerate(docs):
        m = MinHash(num_perm=128)
        norm = mh.normalise(text)
        for k in range(max(len(norm) - 4, 1)):
            m.update(norm[k : k + 5].encode("utf-8"))
        hashes.append(m)
        lsh.insert(i, m)
    ref_pairs = {
        tuple(sorted((i, j))) for i, m in enumerate(hashes) for j in lsh.query(m) if j != i
    }
    reference = time.perf_counter() - start

    def jaccard(i, j):
        return len(shingle_sets[i] & shingle_sets[j]) / len(shingle_sets[i] | shingle_sets[j])

    def clustered(pairs):
        """All pairs that end up in one cluster once candidate pairs are joined (union-find)."""
        uf = mh.UnionFind(len(docs))
        for i, j in pairs:
            uf.union(i, j)
        groups = {}
        for i in range(len(docs)):
            groups.setdefault(uf.find(i), []).append(i)
        return {(a, b) for g in groups.values() for k, a in enumerate(g) for b in g[k + 1 :]}

    together_ours, together_ref = clustered(ours_pairs), clustered(ref_pairs)
    truth = {p for p in together_ours | together_ref if jaccard(*p) >= args.threshold}
    recall_ours = len(truth & together_ours) / max(len(truth), 1)
    recall_ref = len(truth & together_ref) / max(len(truth), 1)
    precision_ours = len(truth & together_ours) / max(len(together_ours), 1)
    precision_ref = len(truth & together_ref) / max(len(together_ref), 1)
    print(
        f"{len(docs)} documents: ours {len(docs) / ours:.0f} docs/s, datasketch per-shingle "
        f"{len(docs) / reference:.0f} docs/s, ratio {reference / ours:.1f}x (target >= 10x)"
    )
    print(
        f"clustered pairs with Jaccard >= {args.threshold} ({len(truth)} found by either): recall "
        f"ours {recall_ours:.3f}, datasketch {recall_ref:.3f}; precision ours {precision_ours:.3f}, "
        f"datasketch {precision_ref:.3f}"
    )


if __name__ == "__main__":
    main()
