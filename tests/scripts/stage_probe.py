"""Train one iteration per stage (in one process) and report which tensors changed.

Prints one JSON object: {stage: {"changed": [names or name[layer]], "old_rows_equal": {...},
"new_rows_changed": {...}}} comparing each run's saved weights with the starting checkpoint.
"""

import argparse
import json
from pathlib import Path

import torch

from motif_megatron.checkpoint.dist import CheckpointReader
from motif_megatron.errors import quiet_library_warnings
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.training.arguments import TrainConfig
from motif_megatron.training.loop import Trainer

VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


def compare(base: CheckpointReader, run: CheckpointReader, old_vocab: int) -> dict:
    changed, old_equal, new_changed = [], {}, {}
    for key, shape in base.shapes.items():
        if key.startswith("decoder.layers."):
            for layer in range(shape[0]):
                if not torch.equal(base.get(key, layer), run.get(key, layer)):
                    changed.append(f"{key}[{layer}]")
            continue
        a, b = base.get(key), run.get(key)
        if not torch.equal(a, b):
            changed.append(key)
        if key in VOCAB_KEYS:
            old_equal[key] = torch.equal(a[:old_vocab], b[:old_vocab])
            new_changed[key] = not torch.equal(a[old_vocab:], b[old_vocab:])
    return {"changed": changed, "old_rows_equal": old_equal, "new_rows_changed": new_changed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load", required=True)
    parser.add_argument("--data-path", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", nargs="+", required=True)
    args = parser.parse_args()
    quiet_library_warnings()
    base = CheckpointReader(args.load)
    growth = LlamaArgs.load(Path(args.load)).growth
    old_vocab = growth.get("vocab", {}).get("old", 0)
    report = {}
    for stage in args.stages:
        save = Path(args.out) / stage.replace(":", "_").replace("\\", "_")
        config = TrainConfig(
            load=args.load,
            save=str(save),
            data_path=tuple(args.data_path),
            seq_length=64,
            micro_batch_size=2,
            global_batch_size=2,
            train_iters=1,
            lr=1e-2,
            weight_decay=0.1,
            stage=stage,
            log_interval=100,
        )
        Trainer(config).train()
        report[stage] = compare(base, CheckpointReader(save), old_vocab)
    print(json.dumps(report))


if __name__ == "__main__":  # dist_checkpointing spawns helpers that re-import __main__
    main()
