"""Our C++ dataset index builders (``csrc/helpers.cpp``), with Megatron's Python signatures.

``compat.datasets.use_index_builders`` points Megatron-Core's ``megatron.core.datasets.helpers``
at these builders (``data/gpt.py`` does it), so its ``GPTDataset`` and ``BlendedDataset`` index
caches are built by our extension; outputs are
identical to ``helpers_cpp`` (tested on random inputs) and ``bench/dataset_helpers.py`` times both.
"""

from __future__ import annotations

import numpy as np

from motif_megatron._helpers import (
    build_blending_indices,
    build_exhaustive_blending_indices,
    build_sample_idx_int32,
    build_sample_idx_int64,
)

__all__ = [
    "build_blending_indices",
    "build_exhaustive_blending_indices",
    "build_sample_idx",
]


def build_sample_idx(
    sizes: np.ndarray,
    document_indices: np.ndarray,
    sequence_length: int,
    num_epochs: int,
    tokens_per_epoch: int,
    drop_last_partial_sequence: bool = True,
    add_extra_token_to_sequence: bool = True,
) -> np.ndarray:
    """``[num_samples + 1, 2]`` (document position, offset) sample starts; int32 when it fits."""
    largest = max(document_indices.shape[0], int(sizes.max()))
    build = build_sample_idx_int32 if largest <= np.iinfo(np.int32).max else build_sample_idx_int64
    return build(
        sizes,
        document_indices,
        sequence_length,
        num_epochs,
        tokens_per_epoch,
        drop_last_partial_sequence,
        1 if add_extra_token_to_sequence else 0,
    )
