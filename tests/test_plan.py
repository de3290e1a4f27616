"""tools/plan.py: exact parameter counts of the published shapes, Megatron-LM's memory figures,
the layouts tried and the one recommended."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, ok, run

from motif_megatron.model.llama import LlamaArgs
from motif_megatron.plan import memory

TABLE = json.loads((ROOT / "tests/data/megatron_memory_core_v0.16.1.json").read_text())
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256}
LLAMA3_70B = {
    **LLAMA,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
}
MOTIF = ["--depth-add", "16", "--hidden-size", "9216", "--ffn-hidden-size", "30720"]
MOTIF += ["--num-attention-heads", "72", "--num-query-groups", "8"]
CLUSTER = ["--gpu-memory-gb", "80", "--seq-length", "8192", "--micro-batch-size", "1"]


def _plan(tmp_path, config: dict, *flags: str) -> dict:
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "plan.json"
    ok(
        run(
            [
                "tools/plan.py",
                "--hf-config",
                str(tmp_path / "config.json"),
                *flags,
                "--json",
                str(out),
            ]
        )
    )
    return json.loads(out.read_text())


def test_published_parameter_counts(tmp_path):
    llama3_8b = {
        **LLAMA,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    }
    small = _plan(tmp_path, llama3_8b, "--gpus", "8", "--global-batch-size", "64", *CLUSTER)
    assert small["params_base"] == small["params_grown"] == 8_030_261_248
    plan = _plan(
        tmp_path, LLAMA3_70B, *MOTIF, "--gpus", "256", "--global-batch-size", "512", *CLUSTER
    )
    assert plan["params_base"] == 70_553_706_496
    grown = plan["params_grown_split"]
    assert plan["params_grown"] == grown["total"] == 102_022_456_320
    assert round(grown["total"] / 1e6) == 102_022
    assert grown["embedding"] == grown["output_layer"] == 128256 * 9216
    assert grown["layers"] == 96 * (
        9216 * (2 * 72 * 128 + 2 * 8 * 128) + 3 * 9216 * 30720 + 2 * 9216
    )


@pytest.mark.parametrize("row", TABLE["rows"], ids=lambda r: f"{r['model']}-{r['layout'][:5]}")
def test_memory_equals_megatron_lms(row):
    """Our formulas against Megatron-LM's own functions, called once with the same arguments
    (tests/scripts/megatron_memory_table.py, Megatron-LM core_v0.16.1)."""
    h, f, layers, heads, groups, vocab, tied = TABLE["models"][row["model"]]
    args = LlamaArgs(vocab, h, f, layers, heads, groups, h // heads, tie_word_embeddings=tied)
    tp, pp, dp, dist_opt, sp, mbs, seq, microbatches, *vpp = row["layout"]
    # Megatron-LM's rows pair sequence parallelism with selective recomputation
    layout = memory.Layout(tp, pp, dp, dist_opt, sp, "selective" if sp else "none", *vpp)
    weights = memory.weight_optimizer_bytes(args, layout)
    activations = memory.activation_bytes(args, layout, seq, mbs, microbatches)
    assert weights == pytest.approx(row["weight_optimizer_bytes"], rel=1e-12)
    assert activations == pytest.approx(row["activation_bytes"], rel=1e-12)


def test_layouts_divide_the_model_and_the_recommended_one_fits_first(tmp_path):
    cluster = ["--gpus", "64", "--global-batch-size", "256", "--train-tokens", "194e9", *CLUSTER]
    plan = _plan(tmp_path, LLAMA3_70B, *MOTIF, *cluster)
    keys = {"tp", "pp", "dp", "vpp", "cp", "sp", "distributed_optimizer", "recompute"}
    keys |= {"weight_optimizer_bytes", "activation_bytes", "efficiency", "fits"}
    assert all(keys <= set(r) for r in plan["layouts"])
    for r in plan["layouts"]:
        assert r["tp"] * r["cp"] * r["pp"] * r["dp"] == 64 and r["tp"] <= 8
        assert 72 % r["tp"] == 0 and 8 % r["tp"] == 0 and 96 % (r["pp"] * r["vpp"]) == 0
        assert 8192 % (2 * r["cp"]) == 0 and r["sp"] == (r["tp"] > 1)
        total = r["weight_optimizer_bytes"] + r["activation_bytes"]
        assert r["fits"] == (total <= 0.9 * 80 * 1024**3)
        bubble = (r["pp"] - 1) / (r["vpp"] * 256 // r["dp"])
        recompute = 0.75 if r["recompute"] == "full" else 1
        assert r["efficiency"] == pytest.approx(recompute / (1 + bubble))
    kinds = {(r["vpp"] > 1, r["cp"] > 1, r["recompute"]) for r in plan["layouts"]}
    assert {(True, False, "none"), (False, True, "none"), (False, False, "full")} <= kinds
    best = plan["recommended"]
    assert best in plan["layouts"] and best["fits"]
    assert best["cp"] == 1  # the trainer refuses context parallelism: CP layouts are listed only
    fitting = [r for r in plan["layouts"] if r["fits"] and r["cp"] == 1]
    size = best["tp"] * best["cp"] * best["pp"]
    assert all(size <= r["tp"] * r["cp"] * r["pp"] for r in fitting)
    assert all(
        best["efficiency"] >= r["efficiency"]
        for r in fitting
        if r["tp"] * r["cp"] * r["pp"] == size
    )
    # the distributed optimizer shrinks only the optimizer part: 6 + 12/(dp cp) bytes against 18
    same = ("tp", "cp", "pp", "vpp", "recompute")
    pair = [r for r in plan["layouts"] if all(r[k] == best[k] for k in same)]
    ratio = pair[1]["weight_optimizer_bytes"] / pair[0]["weight_optimizer_bytes"]
    assert ratio == pytest.approx((6 + 12 / (best["dp"] * best["cp"])) / 18)
    # full recomputation keeps each layer's input and one layer's activations; CP halves the
    # sequence each GPU holds
    layout = {k: best[k] for k in ("tp", "pp", "dp", "distributed_optimizer", "sp", "vpp")}
    args = LlamaArgs(128256, 9216, 30720, 96, 72, 8, 128)
    micro = 256 // best["dp"]
    none = memory.activation_bytes(args, memory.Layout(**layout), 8192, 1, micro)
    full = memory.activation_bytes(args, memory.Layout(**layout, recompute="full"), 8192, 1, micro)
    halved = memory.activation_bytes(args, memory.Layout(**layout, cp=2), 8192, 1, micro)
    assert full < none / 5 and halved == pytest.approx(none / 2)
    # time: Megatron-LM's FLOPs per token at the stated MFU of the data-sheet peak, times the
    # share the pipeline bubble and recomputation leave
    speed = plan["throughput"]
    assert plan["flops_per_token"] == speed["flops_per_token"]
    expected = 64 * 989.4e12 * 0.4 / speed["flops_per_token"] * best["efficiency"]
    assert speed["tokens_per_s"] == pytest.approx(expected)
    assert plan["train_days"] * 86400 * speed["tokens_per_s"] == pytest.approx(194e9)


def test_not_a_llama_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 5}))
    result = run(
        [
            "tools/plan.py",
            "--hf-config",
            str(tmp_path / "config.json"),
            "--gpus",
            "8",
            "--global-batch-size",
            "8",
            *CLUSTER,
        ]
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: not a Llama config")


def test_the_plan_says_how_to_launch_its_layout_and_what_a_cpu_rehearsal_can_run(tmp_path):
    """``launch``: nodes, ranks per node and the trainer's flags of the recommended layout; a
    CPU rehearsal (local spec, no CUDA) gets layouts without sequence parallelism and without
    the distributed optimizer; ``--train-iters`` counts tokens as the trainer does."""
    cluster = ["--gpus", "256", "--global-batch-size", "512", "--train-iters", "46250", *CLUSTER]
    plan = _plan(tmp_path, LLAMA3_70B, *MOTIF, *cluster)
    best, launch = plan["recommended"], plan["launch"]
    assert plan["train_tokens"] == 46250 * 512 * 8192
    assert launch["nodes"] == 32 and launch["ranks_per_node"] == 8
    flags = launch["flags"].split()
    assert flags[flags.index("--tensor-model-parallel-size") + 1] == str(best["tp"])
    assert flags[flags.index("--pipeline-model-parallel-size") + 1] == str(best["pp"])
    assert flags[flags.index("--micro-batch-size") + 1] == "1"
    per_chunk = 96 // (best["pp"] * best["vpp"])
    if best["vpp"] > 1:
        assert flags[flags.index("--num-layers-per-virtual-pipeline-stage") + 1] == str(per_chunk)
    assert ("--sequence-parallel" in flags) == best["sp"]
    assert ("--use-distributed-optimizer" in flags) == best["distributed_optimizer"]
    assert ("--recompute-granularity" in flags) == (best["recompute"] == "full")
    cpu = ["--transformer-impl", "local", "--no-distributed-optimizer"]
    rehearsal = _plan(tmp_path, LLAMA3_70B, *MOTIF, *cluster, *cpu)
    assert not any(r["sp"] or r["distributed_optimizer"] for r in rehearsal["layouts"])
    assert "--sequence-parallel" not in rehearsal["launch"]["flags"]
