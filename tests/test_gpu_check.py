"""bench/gpu_check.py (``make gpu-check``) stays runnable where no GPU is: without CUDA it says so
in one line; ``--tiny`` runs its whole sequence of checks on the CPU; its FLOP count is
Megatron-LM's formula."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT, ok, run

sys.path.insert(0, str(ROOT / "bench"))


def test_without_cuda_it_says_so_in_one_line(tmp_path):
    out = ok(run(["bench/gpu_check.py", "--out", str(tmp_path / "gc")]))
    assert out.strip().count("\n") == 0 and out.startswith("gpu-check: no CUDA device here")
    assert not (tmp_path / "gc").exists()


def test_every_check_runs_on_the_tiny_preset(tmp_path):
    out = ok(run(["bench/gpu_check.py", "--out", str(tmp_path), "--tiny"], timeout=900))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["name"]: r for r in report["checks"]}
    assert list(rows) == [
        "setup",
        "logits_vs_hf",
        "logits_vs_hf_bf16",
        "masked_m0_vs_base",
        "pretrain_save_resume",
        "kto_cached_reference",
        "evaluate_perplexity",
        "lm_eval_adapter",
        "packed_sft_vs_alone",
    ]
    assert report["failed"] == [] and all(r["ok"] is not False for r in rows.values()), out
    assert rows["logits_vs_hf"]["value"] < 1e-4 and rows["masked_m0_vs_base"]["value"] < 1e-4
    train = rows["pretrain_save_resume"]
    assert train["resumed_at"] == 9 and train["last_loss"] < train["first_loss"] - 0.5
    assert train["tokens_per_s"] > 0 and train["tflops"] > 0
    packed = rows["packed_sft_vs_alone"]
    assert packed["value"] <= 1e-4 and packed["examples"] > packed["rows"] > 1
    assert 5 < packed["mean_token_loss"] < 15  # ln(128256) = 11.8 for random weights
    assert len(rows["kto_cached_reference"]["reference_cache"]) == 1
    env = report["environment"]
    assert env["megatron_core"] == "0.16.1" and env["spec"] == "local"
    assert f"{len(rows)}/{len(rows)} passed" in out.strip().splitlines()[-1]


def test_validate_accepts_every_command_and_plan_of_the_gpu_run(tmp_path):
    """``--validate`` at the GPU shapes (no GPU, no training): every command line through its
    script's parser and the trainer's checks, the width growth through the growth tool's plan."""
    out = ok(run(["bench/gpu_check.py", "--out", str(tmp_path), "--validate"]))
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["name"]: r for r in report["checks"]}
    assert report["failed"] == [] and report["not_run"] == ["packed_sft_vs_alone"], out
    assert rows["packed_sft_vs_alone"]["why"]
    assert rows["pretrain_save_resume"]["commands_accepted"] == 2
    assert rows["masked_m0_vs_base"]["commands_accepted"] == 2
    assert report["environment"]["plan"]["seq"] == 4096


def test_validate_refuses_what_a_run_would_refuse():
    """The negative controls: a trainer batch that does not divide, a tool missing a required
    flag, and the width plan this script once had (36 heads over 4 KV groups of an 8-group
    base) are each refused with the script's own reason."""
    from dataclasses import replace

    from gpu_check import CheckFailed, Checks, Plan, accept, width_plan_accepted

    bad = ["--load", "x", "--data-path", "y", "--global-batch-size", "7"]
    with pytest.raises(CheckFailed, match="not a multiple of --micro-batch-size"):
        accept("pretrain_motif.py", [*bad, "--micro-batch-size", "2"])
    with pytest.raises(CheckFailed, match="--save"):
        accept("tools/expand_checkpoint.py", ["--load", "x"])
    with pytest.raises(CheckFailed, match="must be one of"):
        accept("posttrain_motif.py", ["dpo", "--load", "x"])
    old = Plan.gpu(2, 4096, 30)
    widen = (*old.widen[:4], "--num-attention-heads", "36", "--num-query-groups", "4")
    checks = Checks.__new__(Checks)
    checks.plan, checks.commands = replace(old, widen=widen), 0
    with pytest.raises(CheckFailed, match="width growth is refused"):
        width_plan_accepted(checks)


def test_the_gpu_plans_width_growth_is_a_valid_masked_growth_of_the_8b_slice():
    """The GPU plan widens Llama-3.1-8B as the growth tool accepts it (no KV group dropped, the
    heads a multiple of the groups), as the tiny plan that the test above runs does its base."""
    from gpu_check import Plan

    from motif_megatron.growth.msg import WidthPlan
    from motif_megatron.model.llama import LlamaArgs
    from motif_megatron.model.presets import hf_config

    for plan, vocab in ((Plan.gpu(4, 4096, 20), 128256), (Plan.tiny(), 128256)):
        old = LlamaArgs.from_hf_config({"model_type": "llama", **hf_config(plan.preset, vocab)})
        flags = dict(zip(plan.widen[::2], plan.widen[1::2], strict=True))
        WidthPlan(
            old,
            int(flags["--hidden-size"]),
            int(flags["--ffn-hidden-size"]),
            int(flags["--num-attention-heads"]),
            int(flags["--num-query-groups"]),
        ).check()


def test_the_peak_is_the_exact_parts():
    """An NVL or PCIe part is not the SXM part its name starts like."""
    from motif_megatron.model.flops import peak_flops

    assert peak_flops("NVIDIA H200") == peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_flops("NVIDIA H200 NVL") == peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("") is None and peak_flops("Intel Xeon") is None


def test_flops_are_megatron_lms():
    """12 B s L h^2 (...) equals 6 B s (linear parameters) + 6 B s^2 L h (attention scores and
    their product with values, fwd + bwd, half of them under the causal mask: Megatron-LM
    core_v0.16.1's ``num_floating_point_operations``), derived independently for Llama-3.1-8B."""
    from motif_megatron.model.flops import train_flops
    from motif_megatron.model.llama import LlamaArgs
    from motif_megatron.model.presets import hf_config

    args = LlamaArgs.from_hf_config({"model_type": "llama", **hf_config("llama3.1-8b", 128256)})
    h, f, L, V = 4096, 14336, 32, 128256
    kv = 8 * 128
    linear = L * (h * h + 2 * h * kv + h * h + 3 * h * f) + V * h
    for batch, seq in ((1, 4096), (4, 8192)):
        expected = 6 * batch * seq * linear + 6 * batch * seq * seq * L * h
        assert abs(train_flops(args, batch, seq, V) - expected) <= 1e-9 * expected


def test_an_oversized_wheel_is_cut_into_checked_pieces_and_joined(tmp_path):
    """``make gpu-wheels``: no part exceeds its size, a wheel larger than a part travels as
    pieces with its SHA-256, and ``--join`` (gpu_env.sh) gives back the same bytes, or refuses
    pieces that do not match in one line."""
    import os

    from gpu_wheels import join, split

    staging, out = tmp_path / "staging", tmp_path / "wheels"
    staging.mkdir()
    big = os.urandom(250)
    (staging / "big-1.0-py3-none-any.whl").write_bytes(big)
    (staging / "small-1.0-py3-none-any.whl").write_bytes(os.urandom(40))
    folders = split(staging, out, 100)
    assert all(sum(f.stat().st_size for f in d.iterdir()) <= 100 for d in folders)
    assert len(list(out.rglob("big-1.0-py3-none-any.whl.piece-*"))) == 3
    assert not list(out.rglob("big-1.0-py3-none-any.whl"))  # only its pieces travel
    first = next(d for d in folders if (d / "big-1.0-py3-none-any.whl.piece-1").exists())
    moved = first / "big-1.0-py3-none-any.whl.piece-1"
    held = moved.read_bytes()
    moved.unlink()  # a part not carried yet
    assert join(out) == ["big-1.0-py3-none-any.whl: 1 of 3 pieces not here yet"]
    moved.write_bytes(held)
    assert join(out) == ["big-1.0-py3-none-any.whl: joined and checked"]
    assert (out / "joined/big-1.0-py3-none-any.whl").read_bytes() == big
    moved.write_bytes(held[:-1] + bytes([held[-1] ^ 1]))  # one flipped bit
    with pytest.raises(SystemExit, match="do not match its SHA-256"):
        join(out)
