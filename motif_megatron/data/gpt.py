"""Megatron-Core GPT datasets over our indexed shards, with a ``--data-path`` blend.

Builds ``BlendedMegatronDatasetBuilder`` + ``GPTDataset`` exactly as Megatron-LM does, with our
C++ index builders installed, and refuses up front a split that would hold zero documents of a
shard (Megatron loops forever counting epochs of an empty split). A split no sample is requested
from is not carved out at all (its ``--split`` weight becomes 0), since Megatron would still
count epochs over it: with ``969,30,1`` and no evaluation, training reads every document.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from motif_megatron.compat import datasets
from motif_megatron.data import helpers
from motif_megatron.data.indexed import read_index
from motif_megatron.errors import UserError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TokenIds:
    """What GPTDataset needs of a tokenizer (ids only; no model is loaded for data building)."""

    eod: int
    pad: int
    vocab_size: int

    @property
    def unique_identifiers(self) -> dict:  # part of Megatron's dataset cache key
        return {
            "class": "TokenIds",
            "eod": self.eod,
            "pad": self.pad,
            "vocab_size": self.vocab_size,
        }


@dataclass(frozen=True)
class GPTDataConfig:
    data_path: tuple[str, ...]
    """Megatron's ``--data-path``: ``w1 p1 w2 p2 ...`` or ``p1 p2 ...`` (equal weights by size)."""
    seq_length: int
    eod: int
    vocab_size: int
    split: str = "969,30,1"
    seed: int = 1234
    cache_dir: str | None = None
    eod_mask_loss: bool = False


def parse_data_path(tokens: tuple[str, ...]) -> tuple[list[str], list[float] | None]:
    """``("0.9", "ko", "0.1", "en")`` -> (["ko", "en"], [0.9, 0.1]); bare prefixes -> no weights."""
    try:
        weights = [float(t) for t in tokens[0::2]]
    except ValueError:
        return list(tokens), None
    if len(tokens) % 2:
        raise UserError(f"--data-path {' '.join(tokens)}: expected weight/prefix pairs")
    return list(tokens[1::2]), weights


def _check_splits(prefixes: list[str], split_matrix, sizes: list[int | None]) -> None:
    for prefix in prefixes:
        try:
            docs = len(read_index(prefix + ".idx")[1])
        except FileNotFoundError:
            raise UserError(f"{prefix}.idx not found (data paths are shard prefixes)") from None
        for name, bounds, size in zip(SPLITS, split_matrix, sizes, strict=True):
            if not size or bounds is None:
                continue
            count = round(bounds[1] * docs) - round(bounds[0] * docs)
            if count <= 0:
                raise UserError(
                    f"the {name} split of {prefix} has 0 of its {docs} documents "
                    f"(--split gives it {bounds[1] - bounds[0]:.3%}); add data, change "
                    f"--split, or request no {name} samples"
                )


def effective_split(split: str, samples: tuple[int, int, int]) -> str:
    """``split`` with the weight of every split that is requested no samples set to 0."""
    try:
        weights = [float(w) for w in split.replace("/", ",").split(",")]
    except ValueError:
        raise UserError(
            f"--split {split}: expected comma-separated numbers like 969,30,1"
        ) from None
    weights = (weights + [0.0] * 3)[:3]
    kept = [w if n else 0.0 for w, n in zip(weights, samples, strict=True)]
    if not any(kept):
        raise UserError(f"--split {split} gives no documents to the splits samples are drawn from")
    return ",".join(f"{w:g}" for w in kept)


def build_datasets(config: GPTDataConfig, samples: tuple[int, int, int]):
    """(train, valid, test) Megatron datasets for ``samples`` sequences each (0: not built)."""
    from megatron.core.datasets.blended_megatron_dataset_builder import (
        BlendedMegatronDatasetBuilder,
    )
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from motif_megatron import parallel

    parallel.init_distributed()  # Megatron's builder synchronises ranks around its index caches
    datasets.use_index_builders({name: getattr(helpers, name) for name in datasets.NAMES})
    prefixes, weights = parse_data_path(config.data_path)
    tokenizer = TokenIds(eod=config.eod, pad=config.eod, vocab_size=config.vocab_size)
    dataset_config = GPTDatasetConfig(
        random_seed=config.seed,
        sequence_length=config.seq_length,
        blend=(prefixes, weights),
        split=effective_split(config.split, samples),
        path_to_cache=config.cache_dir,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=config.eod_mask_loss,
        create_attention_mask=False,
    )
    _check_splits(prefixes, dataset_config.split_matrix, list(samples))
    builder = BlendedMegatronDatasetBuilder(GPTDataset, list(samples), lambda: True, dataset_config)
    return builder.build()


def data_order(dataset) -> str:
    """A digest of the sample order of every shard in ``dataset`` (a ``GPTDataset`` or a
    ``BlendedDataset`` of them).

    Megatron shuffles over all the epochs a run needs, so a run asked for more samples reads
    the same order exactly when each shard's index arrays are unchanged; the blend's own index is
    built greedily sample by sample, so a longer blend starts with the shorter one."""
    digest = hashlib.blake2b(digest_size=16)
    for part in getattr(dataset, "datasets", [dataset]):
        for name in ("document_index", "sample_index", "shuffle_index"):
            array = getattr(part, name)
            if array is None:  # Megatron maps cached indices lazily
                array = np.load(getattr(part, f"path_to_{name}"), mmap_mode="r")
            for start in range(0, len(array), 1 << 22):  # bounded memory at any corpus size
                digest.update(np.ascontiguousarray(array[start : start + (1 << 22)]).data)
    return digest.hexdigest()
