#!/usr/bin/env python
"""Plan before launch: parameters, GPU memory per parallel layout, a layout, days, tool costs.

  python tools/plan.py --hf-config Llama-3-70B/config.json --depth-add 16 --hidden-size 9216 \
      --ffn-hidden-size 30720 --num-attention-heads 72 --num-query-groups 8 \
      --gpus 256 --gpu-memory-gb 80 --seq-length 8192 --global-batch-size 512 \
      --micro-batch-size 1 --train-tokens 194e9 --json plan.json

Takes the growth flags of tools/expand_checkpoint.py. Memory is Megatron-LM's theoretical
formulas (megatron/training/theoretical_memory_usage.py, core_v0.16.1) for the most loaded GPU;
see motif_megatron/plan/ for the layouts tried and the rule that picks one.
"""

import argparse
import json
from pathlib import Path

from motif_megatron.errors import run_cli


def parse_args() -> argparse.Namespace:
    from motif_megatron.cli import add_fields
    from motif_megatron.growth.request import SHAPE, GrowthRequest
    from motif_megatron.model.flops import peak_flops

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--hf-config", required=True, help="HF config.json, a motif_model.json or its checkpoint"
    )
    g = p.add_argument_group("growth (as tools/expand_checkpoint.py)")
    add_fields(g, GrowthRequest, only=SHAPE)
    vocab = g.add_mutually_exclusive_group()
    add_fields(vocab, GrowthRequest, only=("tokenizer",))
    vocab.add_argument("--vocab-size", type=int, help="vocabulary size after expansion")
    c = p.add_argument_group("cluster and batch")
    c.add_argument("--gpus", type=int, required=True)
    c.add_argument("--gpu-memory-gb", type=float, required=True, help="memory per GPU, GiB")
    c.add_argument("--gpus-per-node", type=int, default=8, help="TP stays inside a node")
    c.add_argument("--seq-length", type=int, required=True)
    c.add_argument("--global-batch-size", type=int, required=True)
    c.add_argument("--micro-batch-size", type=int, required=True)
    c.add_argument(
        "--usable-fraction",
        type=float,
        default=0.9,
        help="share of GPU memory the model may use (the rest: CUDA context, NCCL, fragments)",
    )
    c.add_argument(
        "--transformer-impl",
        default="transformer_engine",
        choices=("transformer_engine", "local"),
        help="the trainer's layers: sequence parallelism needs Transformer Engine",
    )
    c.add_argument(
        "--no-distributed-optimizer",
        dest="distributed_optimizer",
        action="store_false",
        help="no layout shards the optimizer state (a CPU rehearsal: the trainer needs CUDA for it)",
    )
    t = p.add_argument_group("time")
    t.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation assumed")
    t.add_argument(
        "--peak-tflops",
        type=float,
        default=peak_flops("H100") / 1e12,
        help="dense bf16 peak per GPU (H100/H200)",
    )
    tokens = t.add_mutually_exclusive_group()
    tokens.add_argument("--train-tokens", type=float, help="tokens to train, for the days estimate")
    tokens.add_argument(
        "--train-iters",
        type=int,
        help="iterations to train (the trainer's flag): tokens = iters x global batch x seq length",
    )
    p.add_argument("--json", help="write the whole plan here")
    return p.parse_args()


def _gb(n: float) -> str:
    return f"{n / 1024**3:.1f} GiB"


def summary(plan: dict) -> list[str]:
    grown = plan["params_grown_split"]
    lines = [
        f"parameters: base {plan['params_base']:,} -> grown {plan['params_grown']:,} "
        f"(embedding {grown['embedding']:,}, output {grown['output_layer']:,}, layers "
        f"{grown['layers']:,}; padded vocabulary {grown['padded_vocab_size']:,})",
        f"layouts: {sum(r['fits'] for r in plan['layouts'])} of {len(plan['layouts'])} fit "
        f"{plan['cluster']['gpu_memory_gb']:g} GiB x {plan['cluster']['usable_fraction']:g}",
    ]
    best = plan["recommended"]
    if best is None:
        lines.append("recommended: none fits; add GPUs or lower --micro-batch-size/--seq-length")
    else:
        lines.append(
            f"recommended: TP={best['tp']} CP={best['cp']} PP={best['pp']} VPP={best['vpp']} "
            f"DP={best['dp']}, sequence parallel {'on' if best['sp'] else 'off'}, distributed "
            f"optimizer {'on' if best['distributed_optimizer'] else 'off'}, recompute "
            f"{best['recompute']}: weights+optimizer {_gb(best['weight_optimizer_bytes'])} + "
            f"activations {_gb(best['activation_bytes'])}, {best['efficiency']:.1%} of the time "
            "on model FLOPs"
        )
        speed = plan["throughput"]
        line = f"{speed['tokens_per_s']:,.0f} tokens/s at MFU {plan['assumptions']['mfu']:g}"
        if "train_days" in plan:
            line += f": {plan['train_tokens']:.3g} tokens in {plan['train_days']:.1f} days"
        lines.append(line)
        run = plan["launch"]
        lines.append(
            f"launch: {run['nodes']} nodes x {run['ranks_per_node']} ranks: {run['flags']}"
        )
    for name, cost in plan["tools"].items():
        lines.append(
            f"{name}: CPU memory {_gb(cost['cpu_memory_bytes'])}, disk {_gb(cost['disk_bytes'])}"
        )
    return lines


@run_cli
def main() -> None:
    args = parse_args()
    from motif_megatron.cli import values
    from motif_megatron.growth.request import GrowthRequest
    from motif_megatron.plan import layouts, model

    request = GrowthRequest(**values(args, GrowthRequest))
    base = model.load_args(args.hf_config)
    vocab = args.vocab_size
    if request.tokenizer:
        from motif_megatron.growth.transform import new_vocab

        vocab = new_vocab(Path(request.tokenizer), base.vocab_size)[0]
    growth = model.Growth(
        request.depth_add or 0,
        request.hidden_size,
        request.ffn_hidden_size,
        request.num_attention_heads,
        request.num_query_groups,
        vocab,
    )
    cluster = layouts.Cluster(
        args.gpus,
        args.gpu_memory_gb,
        args.seq_length,
        args.global_batch_size,
        args.micro_batch_size,
        args.gpus_per_node,
        args.usable_fraction,
        args.transformer_impl,
        args.distributed_optimizer,
    )
    plan = layouts.build(
        base,
        model.grown(base, growth),
        cluster,
        args.mfu,
        args.peak_tflops * 1e12,
        args.train_tokens or (args.train_iters or 0) * args.global_batch_size * args.seq_length,
    )
    print("\n".join(summary(plan)))
    if args.json:
        Path(args.json).write_text(json.dumps(plan, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
