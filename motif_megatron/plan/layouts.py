"""Every parallel layout of a cluster for a model, whether it fits, and the one to start with.

A layout is ``TP x PP x DP = GPUs`` with TP inside a node dividing the heads, the KV groups and the
FFN, PP dividing the layers, and the global batch a multiple of ``micro batch x DP``; each comes
with and without the distributed optimizer and selective recomputation. The recommended one fits
with the least model parallelism (``TP x PP``), then the fewest pipeline stages, then without
recomputation (no recompute cost), then with the distributed optimizer (Megatron-LM's default
for large models).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from motif_megatron.errors import UserError
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.plan import memory
from motif_megatron.plan.model import padded_vocab, param_counts, train_flops

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


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def shapes_allow(args: LlamaArgs, tp: int, pp: int) -> bool:
    by_tp = (args.num_attention_heads, args.num_key_value_heads, args.intermediate_size)
    return all(x % tp == 0 for x in by_tp) and args.num_hidden_layers % pp == 0


def layouts(args: LlamaArgs, cluster: Cluster) -> list[dict]:
    """Every layout with its memory (bytes, most loaded GPU) and whether it fits."""
    rows = []
    budget = cluster.usable_fraction * cluster.gpu_memory_gb * GIB
    for tp in _divisors(cluster.gpus):
        for pp in _divisors(cluster.gpus // tp):
            dp = cluster.gpus // (tp * pp)
            if tp > cluster.gpus_per_node or not shapes_allow(args, tp, pp):
                continue
            if cluster.global_batch_size % (cluster.micro_batch_size * dp):
                continue
            micro = memory.num_microbatches(cluster.global_batch_size, cluster.micro_batch_size, dp)
            for dist_opt in (False, True):
                for recompute in (False, True):
                    layout = memory.Layout(tp, pp, dp, dist_opt, recompute)
                    weights = memory.weight_optimizer_bytes(args, layout)
                    acts = memory.activation_bytes(
                        args, layout, cluster.seq_length, cluster.micro_batch_size, micro
                    )
                    row = asdict(layout) | {
                        "weight_optimizer_bytes": weights,
                        "activation_bytes": acts,
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
    fitting = [r for r in rows if r["fits"]]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda r: (r["tp"] * r["pp"], r["pp"], r["recompute"], not r["distributed_optimizer"]),
    )


def throughput(args: LlamaArgs, cluster: Cluster, row: dict, mfu: float, peak: float) -> dict:
    """Tokens/s of the cluster at ``mfu`` of ``peak`` FLOP/s per GPU (Megatron-LM's FLOPs per
    step; selective recomputation is not counted, as Megatron-LM does not)."""
    vocab = padded_vocab(args, row["tp"])
    per_token = train_flops(args, 1, cluster.seq_length, vocab) / cluster.seq_length
    tokens_per_s = cluster.gpus * peak * mfu / per_token
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
        "tools": tool_costs(base, grown),
        "assumptions": {
            "mfu": mfu,
            "peak_flops_per_gpu": peak_flops,
            "memory_formulas": "Megatron-LM core_v0.16.1 theoretical_memory_usage.py",
        },
    }
    if best is not None:
        speed = throughput(grown, cluster, best, mfu, peak_flops)
        result["throughput"] = speed
        if train_tokens:
            result["train_days"] = train_tokens / speed["tokens_per_s"] / 86400
    return result
