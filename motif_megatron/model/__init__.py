"""Megatron-Core Llama: config mapping, layer specs, builders, inference helpers."""
