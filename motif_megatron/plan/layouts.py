"""Every parallel layout of a cluster for a model, whether it fits, and the one to start with.

A layout is ``TP x CP x PP x DP = GPUs`` with TP inside a node dividing the heads, the KV groups
and the FFN, CP splitting the sequence into ``2 x CP`` chunks (Megatron's load balancing), PP
dividing the layers into ``PP x VPP`` virtual stages, and the global batch a multiple of ``micro
batch x DP``. Sequence parallelism is on wherever TP > 1 (as everyone runs it) when the layers
are Transformer Engine's (the local spec's norms cannot take it); each layout comes with and
without the distributed optimizer and with no or full recomputation (selective recomputation
frees nothing more under flash attention, see :mod:`memory`). Its ``efficiency`` is the share of
the GPUs' time spent on model FLOPs that the schedule leaves: the pipeline bubble
``(PP - 1) / (VPP x micro batches)`` and full recomputation's extra forward (3/4). The
recommended layout is one ``pretrain_motif.py`` runs (CP 1: the trainer refuses context
parallelism) that fits with the least model parallelism (``TP x PP``), then the highest
efficiency, then the fewest pipeline stages, then with the distributed optimizer; its ``launch``
is the nodes, ranks per node and trainer flags a recipe step takes (``layout:``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from motif_megatron.errors import UserError
from motif_megatron.model.flops import train_flops
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.plan import memory
from motif_megatron.plan.model import padded_vocab, param_counts

GIB = 1024**3

# bench/convert_memory.py and bench/growth_memory.py (README "Benchmarks"): peak RSS above a fixed
# ~375 MB process cost, in units of the largest tensor the tool holds
TOOL_FIXED_BYTES = 375 * 1024**2
TOOL_RATIOS = {"convert_hf_import": 1.02, "expand_checkpoint": 1.21, "convert_hf_export": 1.00}


@dataclass(frozen=True)
class Cluster:
    gpus: int
    gpu_memory_gb: float
    seq_length: int
    global_batch_size: int
    micro_batch_size: int
    gpus_per_node: int = 8
    usable_fraction: float = 0.9
    """Share of the GPU memory the model may take (CUDA context, NCCL buffers, fragmentation)."""
    transformer_impl: str = "transformer_engine"
    """The trainer's ``--transformer-impl``: sequence parallelism needs Transformer Engine."""
    distributed_optimizer: bool = True
    """Whether layouts may shard the optimizer (the trainer's distributed optimizer needs CUDA)."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def shapes_allow(args: LlamaArgs, tp: int, pp: int) -> bool:
    by_tp = (args.num_attention_heads, args.num_key_value_heads, args.intermediate_size)
    return all(x % tp == 0 for x in by_tp) and args.num_hidden_layers % pp == 0


def efficiency(layout: memory.Layout, microbatches: int) -> float:
    """The share of time a step spends on model FLOPs under this schedule (bubble, recompute)."""
    bubble = (layout.pp - 1) / (layout.vpp * microbatches)
    return (0.75 if layout.recompute == "full" else 1.0) / (1 + bubble)


def _parallel_sizes(args: LlamaArgs, cluster: Cluster):
    """(tp, cp, pp, vpp, dp) of every split of the cluster the model and batch allow."""
    for tp in _divisors(min(cluster.gpus, cluster.gpus_per_node)):
        for cp in _divisors(cluster.gpus // tp):
            if cluster.seq_length % (2 * cp) or cluster.gpus % (tp * cp):
                continue
            for pp in _divisors(cluster.gpus // (tp * cp)):
                dp = cluster.gpus // (tp * cp * pp)
                if not shapes_allow(args, tp, pp):
                    continue
                if cluster.global_batch_size % (cluster.micro_batch_size * dp):
                    continue
                per_stage = args.num_hidden_layers // pp
                for vpp in _divisors(per_stage) if pp > 1 else [1]:
                    if vpp <= 8:
                        yield tp, cp, pp, vpp, dp


def layouts(args: LlamaArgs, cluster: Cluster) -> list[dict]:
    """Every layout with its memory (bytes, most loaded GPU), whether it fits, and its
    efficiency."""
    rows = []
    budget = cluster.usable_fraction * cluster.gpu_memory_gb * GIB
    for tp, cp, pp, vpp, dp in _parallel_sizes(args, cluster):
        micro = memory.num_microbatches(cluster.global_batch_size, cluster.micro_batch_size, dp)
        for dist_opt in (False, True) if cluster.distributed_optimizer else (False,):
            for recompute in ("none", "full"):
                sp = tp > 1 and cluster.transformer_impl == "transformer_engine"
                layout = memory.Layout(tp, pp, dp, dist_opt, sp, recompute, vpp, cp)
                weights = memory.weight_optimizer_bytes(args, layout)
                acts = memory.activation_bytes(
                    args, layout, cluster.seq_length, cluster.micro_batch_size, micro
                )
                row = asdict(layout) | {
                    "weight_optimizer_bytes": weights,
                    "activation_bytes": acts,
                    "efficiency": efficiency(layout, micro),
                }
                rows.append(row | {"fits": weights + acts <= budget})
    if not rows:
        raise UserError(
            f"no layout of {cluster.gpus} GPUs divides this model (heads "
            f"{args.num_attention_heads}, KV groups {args.num_key_value_heads}, layers "
            f"{args.num_hidden_layers}) with global batch {cluster.global_batch_size}"
        )
    return rows


def recommend(rows: list[dict]) -> dict | None:
    fitting = [r for r in rows if r["fits"] and r["cp"] == 1]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda r: (
            r["tp"] * r["cp"] * r["pp"],
            -r["efficiency"],
            r["pp"],
            not r["distributed_optimizer"],
        ),
    )


def launch(row: dict, cluster: Cluster, num_layers: int) -> dict:
    """How a training step runs this layout: its nodes, ranks per node and the trainer's flags
    (Megatron-LM's names)."""
    per_node = min(cluster.gpus, cluster.gpus_per_node)
    flags = [
        f"--tensor-model-parallel-size {row['tp']}",
        f"--pipeline-model-parallel-size {row['pp']}",
        f"--micro-batch-size {cluster.micro_batch_size}",
    ]
    if row["vpp"] > 1:
        per_chunk = num_layers // (row["pp"] * row["vpp"])
        flags.append(f"--num-layers-per-virtual-pipeline-stage {per_chunk}")
    if row["cp"] > 1:
        flags.append(f"--context-parallel-size {row['cp']}")
    if row["sp"]:
        flags.append("--sequence-parallel")
    if row["distributed_optimizer"]:
        flags.append("--use-distributed-optimizer")
    if row["recompute"] == "full":
        flags.append(
            "--recompute-granularity full --recompute-method uniform --recompute-num-layers 1"
        )
    return {
        "nodes": -(-cluster.gpus // per_node),
        "ranks_per_node": per_node,
        "flags": " ".join(flags),
    }


def flops_per_token(args: LlamaArgs, seq: int, tp: int) -> float:
    """Megatron-LM's training FLOPs per token at ``seq`` (the vocabulary padded as at ``tp``)."""
    return train_flops(args, 1, seq, padded_vocab(args, tp)) / seq


def throughput(args: LlamaArgs, cluster: Cluster, row: dict, mfu: float, peak: float) -> dict:
    """Tokens/s of the cluster at ``mfu`` of ``peak`` FLOP/s per GPU while it computes (Megatron-
    LM's FLOPs per step, recomputation not counted, as Megatron-LM does not), times the
    layout's efficiency (pipeline bubble, full recomputation)."""
    per_token = flops_per_token(args, cluster.seq_length, row["tp"])
    tokens_per_s = cluster.gpus * peak * mfu / per_token * row["efficiency"]
    return {"flops_per_token": per_token, "tokens_per_s": tokens_per_s}


def tool_costs(base: LlamaArgs, grown: LlamaArgs, dtype_bytes: int = 2) -> dict:
    """CPU memory (peak RSS) and disk of the conversion and growth steps, from the measured
    ratios to the largest tensor each holds (the embedding or one layer's fused gate/up)."""

    def largest(args: LlamaArgs) -> int:
        embedding = padded_vocab(args) * args.hidden_size
        return dtype_bytes * max(embedding, 2 * args.intermediate_size * args.hidden_size)

    size = {
        name: dtype_bytes * param_counts(a)["total"]
        for name, a in (("base", base), ("grown", grown))
    }
    jobs = {
        "convert_hf_import": (largest(base), size["base"]),
        "expand_checkpoint": (max(largest(base), largest(grown)), size["grown"]),
        "convert_hf_export": (largest(grown), size["grown"]),
    }
    return {
        name: {
            "cpu_memory_bytes": TOOL_FIXED_BYTES + TOOL_RATIOS[name] * big,
            "disk_bytes": written,
        }
        for name, (big, written) in jobs.items()
    }


def build(
    base: LlamaArgs,
    grown: LlamaArgs,
    cluster: Cluster,
    mfu: float,
    peak_flops: float,
    train_tokens: float | None = None,
) -> dict:
    """The whole plan (``tools/plan.py --json``): counts, layouts, the recommended one, its
    throughput and days, and the tools' CPU memory and disk."""
    rows = layouts(grown, cluster)
    best = recommend(rows)
    result = {
        "params_base": param_counts(base)["total"],
        "params_grown": param_counts(grown)["total"],
        "params_base_split": param_counts(base) | {"padded_vocab_size": padded_vocab(base)},
        "params_grown_split": param_counts(grown) | {"padded_vocab_size": padded_vocab(grown)},
        "cluster": asdict(cluster),
        "layouts": rows,
        "recommended": best,
        "flops_per_token": flops_per_token(grown, cluster.seq_length, best["tp"] if best else 1),
        "tools": tool_costs(base, grown),
        "assumptions": {
            "mfu": mfu,
            "peak_flops_per_gpu": peak_flops,
            "memory_formulas": "Megatron-LM core_v0.16.1 theoretical_memory_usage.py",
        },
    }
    if best is not None:
        result["launch"] = launch(best, cluster, grown.num_hidden_layers)
        speed = throughput(grown, cluster, best, mfu, peak_flops)
        result["throughput"] = speed
        if train_tokens:
            result["train_tokens"] = train_tokens
            result["train_days"] = train_tokens / speed["tokens_per_s"] / 86400
    return result
