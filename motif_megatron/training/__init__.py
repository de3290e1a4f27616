"""Training: engine (DDP, optimizer, pipelined steps); the trainer loop arrives with pretrain_motif.py."""
