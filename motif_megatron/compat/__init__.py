"""Compatibility layers for running Megatron-Core outside its GPU home."""
