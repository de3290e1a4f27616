"""The tokenising task as a datatrove block, so ``preprocess_data.py``'s tasks run on the same
executors as the corpus stage (kept apart from :mod:`motif_megatron.data.tokenize` so that one
task in its own process never imports datatrove)."""

from __future__ import annotations

import os
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from motif_megatron.data.readers import Unit, task_units
from motif_megatron.data.tokenize import Encoder, shard_prefix, tokenize_records


class TokenizeShards(PipelineStep):
    """Task ``rank`` of a tokenisation: its share of the corpus into
    ``{prefix}_{rank:05d}_{key}_document`` (ours as a datatrove block: gigatoken's ids, which
    equal the HF tokenizer's, Megatron's format, partitions to resume from). A finished shard
    is kept."""

    type = "🔢 - TOKENIZER"
    name = "megatron shards"

    def __init__(self, units: list[Unit], prefix: str, json_key: str, settings: dict) -> None:
        """``settings``: tokenizer, backend, append_eod, partition_docs, threads, made."""
        super().__init__()
        self.units, self.prefix, self.json_key, self.settings = units, prefix, json_key, settings

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        s = self.settings
        shard = shard_prefix(self.prefix, rank, self.json_key)
        if not Path(shard + ".json").is_file():
            # the Rust encoders size their thread pools from these at first use
            os.environ["RAYON_NUM_THREADS"] = os.environ["GIGATOKEN_NUM_THREADS"] = str(
                s["threads"]
            )
            encoder = Encoder(s["tokenizer"], s["backend"])
            records = (
                r
                for u in task_units(self.units, rank, world_size)
                for r in u.documents(self.json_key, "id")
            )
            stats = tokenize_records(
                records, shard, encoder, s["append_eod"], s["partition_docs"], False, s["made"]
            )
            self.stat_update("documents", value=stats.documents)
            self.stat_update("tokens", value=stats.tokens)
        return data
