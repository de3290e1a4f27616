#!/usr/bin/env python
"""Our C++ dataset index builders vs Megatron-Core's ``helpers_cpp``, same inputs, same run.

  .venv/bin/python bench/dataset_helpers.py

Prints the best of ``--repeats`` wall times for each builder and the speed ratio (ours / theirs:
above 1.0 means ours is faster), after checking the outputs are identical.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from megatron.core.datasets import helpers_cpp
from megatron.core.datasets.helpers import build_sample_idx as megatron_sample_idx

from motif_megatron.data import helpers


def best_time(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=2_000_000)
    parser.add_argument("--blend-size", type=int, default=20_000_000)
    parser.add_argument("--datasets", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    sizes = rng.integers(1, 2000, size=args.docs).astype(np.int32)
    doc_idx = rng.permutation(args.docs).astype(np.int32)
    tokens = int(sizes.sum())
    t_ours, ours = best_time(
        lambda: helpers.build_sample_idx(sizes, doc_idx, 4096, 1, tokens), args.repeats
    )
    t_theirs, theirs = best_time(
        lambda: megatron_sample_idx(sizes, doc_idx, 4096, 1, tokens), args.repeats
    )
    assert np.array_equal(ours, theirs)
    print(
        f"build_sample_idx ({args.docs:,} docs, seq 4096): ours {t_ours * 1e3:.1f} ms, "
        f"helpers_cpp {t_theirs * 1e3:.1f} ms, ratio {t_theirs / t_ours:.2f}x"
    )

    weights = rng.random(args.datasets)
    weights /= weights.sum()

    def blend(build):
        dataset = np.zeros(args.blend_size, np.int16)
        sample = np.zeros(args.blend_size, np.int64)
        build(dataset, sample, weights, args.datasets, args.blend_size, False)
        return dataset, sample

    t_ours, ours = best_time(lambda: blend(helpers.build_blending_indices), args.repeats)
    t_theirs, theirs = best_time(lambda: blend(helpers_cpp.build_blending_indices), args.repeats)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print(
        f"build_blending_indices ({args.blend_size:,} samples, {args.datasets} datasets): "
        f"ours {t_ours * 1e3:.1f} ms, helpers_cpp {t_theirs * 1e3:.1f} ms, "
        f"ratio {t_theirs / t_ours:.2f}x"
    )

    counts = (weights * args.blend_size // 4).astype(np.int64) + 1

    def exhaustive(build):
        dataset = np.zeros(counts.sum(), np.int16)
        sample = np.zeros(counts.sum(), np.int64)
        build(dataset, sample, counts, args.datasets)
        return dataset, sample

    t_ours, ours = best_time(
        lambda: exhaustive(helpers.build_exhaustive_blending_indices), args.repeats
    )
    t_theirs, theirs = best_time(
        lambda: exhaustive(helpers_cpp.build_exhaustive_blending_indices), args.repeats
    )
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    print(
        f"build_exhaustive_blending_indices ({counts.sum():,} samples): ours "
        f"{t_ours * 1e3:.1f} ms, helpers_cpp {t_theirs * 1e3:.1f} ms, "
        f"ratio {t_theirs / t_ours:.2f}x"
    )


if __name__ == "__main__":
    main()
