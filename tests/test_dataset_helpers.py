"""Our C++ index builders produce exactly Megatron-Core's ``helpers_cpp`` outputs."""

from __future__ import annotations

import numpy as np
import pytest
from megatron.core.datasets import helpers_cpp

from motif_megatron.data import helpers


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("extra", [True, False])
def test_build_sample_idx_matches_megatron(seed, drop_last, extra):
    from megatron.core.datasets.helpers import build_sample_idx as megatron_build

    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 300, size=rng.integers(1, 200)).astype(np.int32)
    epochs = int(rng.integers(1, 4))
    doc_idx = np.concatenate([rng.permutation(len(sizes)) for _ in range(epochs)]).astype(np.int32)
    seq = int(rng.integers(2, 257))
    tokens = int(sizes.sum())
    if epochs * tokens - int(extra) < seq:
        pytest.skip("fewer tokens than one sample")
    ours = helpers.build_sample_idx(sizes, doc_idx, seq, epochs, tokens, drop_last, extra)
    theirs = megatron_build(sizes, doc_idx, seq, epochs, tokens, drop_last, extra)
    assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


@pytest.mark.parametrize("seed", range(8))
def test_build_blending_indices_matches_megatron(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    weights = rng.random(n)
    weights /= weights.sum()
    size = int(rng.integers(1, 20000))
    results = []
    for build in (helpers.build_blending_indices, helpers_cpp.build_blending_indices):
        dataset, sample = np.zeros(size, np.int16), np.zeros(size, np.int64)
        build(dataset, sample, weights, n, size, False)
        results.append((dataset, sample))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    achieved = np.bincount(results[0][0], minlength=n) / size
    assert np.abs(achieved - weights).max() <= 2 / size + 1e-12  # the blend honours the weights


@pytest.mark.parametrize("seed", range(8))
def test_build_exhaustive_blending_indices_matches_megatron(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 10))
    sizes = rng.integers(1, 3000, size=n).astype(np.int64)
    results = []
    for build in (
        helpers.build_exhaustive_blending_indices,
        helpers_cpp.build_exhaustive_blending_indices,
    ):
        dataset, sample = np.zeros(sizes.sum(), np.int16), np.zeros(sizes.sum(), np.int64)
        build(dataset, sample, sizes, n)
        results.append((dataset, sample))
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])
    assert np.array_equal(np.bincount(results[0][0], minlength=n), sizes)
