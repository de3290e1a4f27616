"""Megatron's GPTDataset over our shards: a 9:1 blend from mix_data, our C++ helpers, split guard."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import bundled_corpus, ok, run, shard

from motif_megatron.errors import UserError


@pytest.fixture(scope="module")
def shards(tmp_path_factory, llama3_tokenizer):
    tmp = tmp_path_factory.mktemp("shards")
    prefixes = {}
    for lang, name in (("ko", "ko-libreoffice-help"), ("en", "en-python-docs")):
        prefixes[lang] = shard(tmp, llama3_tokenizer, lang, bundled_corpus(tmp, name)[0])
    return tmp, prefixes


def test_mix_data_blend_realises_nine_to_one(shards):
    import megatron.core.datasets.helpers as megatron_helpers

    from motif_megatron.data import helpers
    from motif_megatron.data.gpt import GPTDataConfig, build_datasets

    tmp, prefixes = shards
    ok(
        run(
            [
                "tools/mix_data.py",
                "--group",
                "ko",
                "9",
                prefixes["ko"],
                "--group",
                "en",
                "1",
                prefixes["en"],
                "--output",
                str(tmp / "blend.json"),
            ]
        )
    )
    data_path = tuple(json.loads((tmp / "blend.json").read_text())["data_path"])
    config = GPTDataConfig(
        data_path=data_path,
        seq_length=64,
        eod=128001,
        vocab_size=128256,
        split="98,2,0",
        cache_dir=str(tmp / "cache"),
    )
    train, valid, test = build_datasets(config, (2000, 40, 0))
    assert megatron_helpers.build_sample_idx is helpers.build_sample_idx
    assert len(train) == 2000 and len(valid) == 40 and test is None
    share = np.bincount(np.asarray(train.dataset_index[:2000]), minlength=2) / 2000
    assert share.tolist() == pytest.approx([0.9, 0.1], abs=1e-3)
    sample = train[0]
    assert sample["tokens"].shape == (64,) and (sample["labels"][:-1] == sample["tokens"][1:]).all()


def test_empty_split_is_refused(shards):
    from motif_megatron.data.gpt import GPTDataConfig, build_datasets

    tmp, prefixes = shards
    config = GPTDataConfig(
        data_path=(prefixes["en"],),
        seq_length=64,
        eod=128001,
        vocab_size=128256,
        split="999,1,0",
        cache_dir=str(tmp / "cache2"),
    )
    with pytest.raises(UserError, match=r"the valid split of .* has 0 of its 120 documents"):
        build_datasets(config, (100, 10, 0))


def test_unrequested_empty_split_is_not_built(shards):
    """969,30,1 leaves the 120-document shard an empty test split; Megatron would count epochs
    over it forever even for 0 samples, so a split with no samples requested is not carved out."""
    from motif_megatron.data.gpt import GPTDataConfig, build_datasets, effective_split

    tmp, prefixes = shards
    assert effective_split("969,30,1", (100, 0, 0)) == "969,0,0"
    assert effective_split("969,30,1", (100, 10, 0)) == "969,30,0"
    config = GPTDataConfig(
        data_path=(prefixes["en"],),
        seq_length=64,
        eod=128001,
        vocab_size=128256,
        cache_dir=str(tmp / "cache3"),
    )
    train, valid, test = build_datasets(config, (100, 0, 0))
    assert len(train) >= 100 and valid is None and test is None
    with pytest.raises(UserError, match="expected comma-separated numbers"):
        build_datasets(GPTDataConfig(**{**config.__dict__, "split": "a,b"}), (100, 0, 0))
