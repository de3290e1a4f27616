"""torchrun helper for tests: load a checkpoint, measure loss, take one AdamW step, measure again.

Prints one JSON line with the losses; optionally saves the updated model (at this TP/PP) as a new
checkpoint root so another layout can load it.
"""

import argparse
import json
from pathlib import Path

import torch

from motif_megatron import parallel
from motif_megatron.checkpoint import dist as ckpt
from motif_megatron.checkpoint.dist import build_from_checkpoint
from motif_megatron.errors import quiet_library_warnings
from motif_megatron.model.builder import BuildOptions
from motif_megatron.model.schedule import Batch
from motif_megatron.tokenizer.files import copy_tokenizer
from motif_megatron.training.engine import (
    OptimConfig,
    build_optimizer,
    eval_loss,
    train_step,
    wrap_ddp,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--save")
    parser.add_argument("--eval-only", action="store_true")
    parser.add_argument("--micro-batch-size", type=int, default=2)
    args = parser.parse_args()
    quiet_library_warnings()

    parallel.initialize(parallel.ParallelConfig(args.tp, args.pp), seed=7)
    model, margs = build_from_checkpoint(
        args.load, BuildOptions(tp=args.tp, pp=args.pp, params_dtype=torch.float32)
    )
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, margs.vocab_size, (4, 33), generator=generator)
    batch = Batch(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=torch.ones(4, 32),
        position_ids=torch.arange(32).expand(4, -1),
    )
    ddps = wrap_ddp([model], OptimConfig())
    result = {"loss_before": eval_loss(ddps, batch, args.micro_batch_size)}
    if not args.eval_only:
        optimizer = build_optimizer(ddps, OptimConfig(lr=1e-3))
        result.update(train_step(ddps, optimizer, batch, args.micro_batch_size))
        result["loss_after"] = eval_loss(ddps, batch, args.micro_batch_size)
    if args.save:
        ckpt.save(model.sharded_state_dict(), args.save, iteration=1)
        if parallel.rank() == 0:
            margs.save(args.save)
            copy_tokenizer(ckpt.root_of(args.load) / "tokenizer", Path(args.save) / "tokenizer")
    parallel.print_rank0(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":  # dist_checkpointing spawns helpers that re-import __main__
    main()
