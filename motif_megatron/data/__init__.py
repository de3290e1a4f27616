"""Corpus pipeline: readers, filters, dedup, tokenisation into Megatron indexed shards, blends."""
