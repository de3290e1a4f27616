"""Before launch: parameter counts, Megatron-LM memory per parallel layout, a recommended layout."""
