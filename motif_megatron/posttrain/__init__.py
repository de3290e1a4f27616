"""Post-training on the trainer's engine: SFT (chat template, packing, NEFTune) and KTO."""
