"""torchrun helper for tests: set the MSG mask of a width-grown checkpoint, take a gradient, save.

Prints JSON: the loss, gradient magnitudes on new and old slices of a few weights, and the mask
value; ``--save`` writes the model (with its mask value) as a new checkpoint root.
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
from motif_megatron.model.masked import mask_value, set_mask


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", required=True)
    parser.add_argument("--mask", type=float, required=True)
    parser.add_argument("--save")
    args = parser.parse_args()
    quiet_library_warnings()
    parallel.initialize(parallel.ParallelConfig(1, 1), seed=3)
    model, margs = build_from_checkpoint(args.load, BuildOptions(params_dtype=torch.float32))
    set_mask(model, args.mask)
    msg = margs.growth["msg"]
    tokens = torch.randint(0, margs.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, -1)
    loss = model(tokens[:, :-1], positions, None, labels=tokens[:, 1:]).mean()
    loss.backward()
    layer = model.decoder.layers[0]
    fc1 = layer.mlp.linear_fc1.weight.grad
    gate = fc1[: margs.intermediate_size]
    new_ffn = torch.tensor(msg["new_ffn"])
    old_ffn = torch.tensor(sorted(set(range(margs.intermediate_size)) - set(msg["new_ffn"])))
    fc2 = layer.mlp.linear_fc2.weight.grad
    result = {
        "loss": float(loss),
        "mask": mask_value(model),
        "fc1_new_rows": float(gate[new_ffn].abs().sum()),
        "fc1_old_rows": float(gate[old_ffn].abs().sum()),
        "fc2_new_rows": float(fc2[msg["old_hidden"] :].abs().sum()),
        "embedding_new_cols": float(
            model.embedding.word_embeddings.weight.grad[:, msg["old_hidden"] :].abs().sum()
        ),
    }
    if args.save:
        model.zero_grad(set_to_none=True)
        ckpt.save(model.sharded_state_dict(), args.save, iteration=1)
        margs.save(args.save)
        Path(args.save, "tokenizer").mkdir(exist_ok=True)
    print(json.dumps(result))
    parallel.shutdown()


if __name__ == "__main__":
    main()
