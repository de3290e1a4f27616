"""Megatron-Core's dataset index builders replaced by ours (``data/helpers.py``, C++).

``megatron.core.datasets.helpers`` is where its ``GPTDataset`` and ``BlendedDataset`` look up
``build_sample_idx``, ``build_blending_indices`` and ``build_exhaustive_blending_indices``;
pointing those names at other builders is a patch of a third-party module, so it lives here.
"""

from __future__ import annotations

from collections.abc import Callable

NAMES = ("build_sample_idx", "build_blending_indices", "build_exhaustive_blending_indices")


def use_index_builders(builders: dict[str, Callable]) -> None:
    """Make Megatron-Core's datasets build their indices with ``builders`` (one per name in
    :data:`NAMES`)."""
    from megatron.core.datasets import helpers

    for name in NAMES:
        setattr(helpers, name, builders[name])
