#!/usr/bin/env python
"""Record Megatron-LM's own theoretical memory figures for tests/test_plan.py (run once).

  python tests/scripts/megatron_memory_table.py --megatron-lm /path/to/Megatron-LM \
      --out tests/data/megatron_memory_core_v0.16.1.json

Megatron-LM's training package is not on any registry, so this loads
``megatron/training/theoretical_memory_usage.py`` from a checkout (at tag ``core_v0.16.1``, the
megatron-core release we run), calls ``compute_weight_and_optimizer_memory`` and the two
activation functions with Megatron-LM's own argument names, and writes the results with the
checkout's commit.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

MODELS = {
    # name: hidden, ffn, layers, heads, kv groups, vocab, tied
    "llama3-8b": (4096, 14336, 32, 32, 8, 128256, False),
    "llama3-70b": (8192, 28672, 80, 64, 8, 128256, False),
    "motif-102b": (9216, 30720, 96, 72, 8, 128256, False),
    "tied-1b": (2048, 8192, 16, 32, 8, 128256, True),
}
# tp, pp, dp, distributed optimizer, selective recompute + SP, micro batch, seq, micro batches
# [, virtual pipeline stages]
LAYOUTS = [
    (1, 1, 8, False, False, 1, 8192, 16),
    (2, 1, 4, True, False, 2, 4096, 8),
    (8, 1, 2, True, True, 1, 8192, 64),
    (8, 4, 8, True, True, 1, 8192, 8),
    (4, 8, 2, False, True, 1, 4096, 4),
    (8, 2, 16, True, False, 1, 8192, 32),
    (8, 4, 8, True, True, 1, 8192, 8, 2),
    (4, 8, 2, False, False, 1, 4096, 16, 4),
]


def load(checkout: Path) -> types.ModuleType:
    package = types.ModuleType("mlm_training")
    package.__path__ = []
    sys.modules["mlm_training"] = package
    sys.modules["mlm_training.utils"] = types.SimpleNamespace(print_rank_0=print)
    path = checkout / "megatron/training/theoretical_memory_usage.py"
    spec = importlib.util.spec_from_file_location("mlm_training.tmu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def megatron_args(model: tuple, layout: tuple) -> types.SimpleNamespace:
    h, f, layers, heads, groups, vocab, tied = model
    tp, pp, dp, dist_opt, recompute, mbs, seq, _, *vpp = layout
    multiple = 128 * tp
    return types.SimpleNamespace(
        hidden_size=h,
        ffn_hidden_size=f,
        num_layers=layers,
        num_attention_heads=heads,
        kv_channels=h // heads,
        group_query_attention=True,
        num_query_groups=groups,
        padded_vocab_size=-(-vocab // multiple) * multiple,
        untie_embeddings_and_output_weights=not tied,
        swiglu=True,
        normalization="RMSNorm",
        num_experts=None,
        moe_shared_expert_intermediate_size=None,
        moe_layer_freq=1,
        mtp_num_layers=None,
        multi_latent_attention=False,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        data_parallel_size=dp,
        virtual_pipeline_model_parallel_size=vpp[0] if vpp else None,
        use_distributed_optimizer=dist_opt,
        sequence_parallel=recompute,
        recompute_granularity="selective" if recompute else None,
        seq_length=seq,
        micro_batch_size=mbs,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--megatron-lm", required=True, type=Path, help="Megatron-LM checkout")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    tmu = load(args.megatron_lm)
    commit = subprocess.run(
        ["git", "-C", str(args.megatron_lm), "describe", "--tags", "--always"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    rows = []
    for name, model in MODELS.items():
        for layout in LAYOUTS:
            if model[3] % layout[0] or model[4] % layout[0] or model[2] % layout[1]:
                continue
            margs = megatron_args(model, layout)
            activation = (
                tmu.compute_activation_memory
                if layout[4]
                else tmu.compute_activation_memory_without_sp
            )
            rows.append(
                {
                    "model": name,
                    "layout": list(layout),
                    "weight_optimizer_bytes": tmu.compute_weight_and_optimizer_memory(margs),
                    "activation_bytes": activation(margs, num_microbatches=layout[7]),
                }
            )
    table = {"megatron_lm": commit, "models": MODELS, "rows": rows}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(f"{len(rows)} rows from Megatron-LM {commit} -> {args.out}")


if __name__ == "__main__":
    main()
