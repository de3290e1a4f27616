"""Checkpoints: Megatron dist checkpoints, HF safetensors, and the layout mapping between them."""
