"""motif-megatron: grow an English Llama into a strong Korean+English model on Megatron-Core."""

__version__ = "0.1.0"
