"""pretrain_motif.py: loss falls on real Korean shards, layouts agree, stages train exactly what
they name, a SIGKILLed run resumes bitwise, MSG masks ramp to 1 and finalize."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    PYTHON,
    ROOT,
    SMALL,
    TP1_FLAGS,
    finalize,
    max_abs_diff,
    ok,
    run,
    shard,
    without_wall_clock,
)
from conftest import pretrain_records as train

from motif_megatron.checkpoint.dist import CheckpointReader
from motif_megatron.training.metrics import TIMERS


@pytest.fixture(scope="module")
def grown_data(tmp_path_factory, expanded) -> str:
    """Korean shards of the expanded tokenizer, the grown checkpoint's own."""
    return shard(tmp_path_factory.mktemp("koexp"), expanded[0] / "expanded", "koexp")


def losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records if "loss" in r]


def test_fusions_follow_megatron_lm_where_their_kernels_are(monkeypatch):
    """On by default as in Megatron-LM; the Transformer Engine kernels (RoPE, softmax, weight
    gradient accumulation) only on the TE spec; none on a CPU (where the run says so)."""
    from motif_megatron.compat import cpu
    from motif_megatron.model.builder import BuildOptions, fusions
    from motif_megatron.training.arguments import parse_args

    asked = parse_args(["--data-path", "x", "--no-rope-fusion", "--cross-entropy-loss-fusion"])
    options = BuildOptions(**asked.fusions())
    assert fusions(options, te=True) == {}  # this CPU
    monkeypatch.setattr(cpu, "needed", lambda: False)
    on_te, local = fusions(options, te=True), fusions(options, te=False)
    assert on_te == {
        "apply_rope_fusion": False,  # --no-rope-fusion
        "bias_activation_fusion": True,
        "masked_softmax_fusion": True,
        "gradient_accumulation_fusion": True,
        "cross_entropy_loss_fusion": True,
        "cross_entropy_fusion_impl": "native",
    }
    assert local == {**on_te, "masked_softmax_fusion": False, "gradient_accumulation_fusion": False}


def test_loss_falls_on_korean_shards(tmp_path, tiny_ckpt, ko_data):
    records = train(tiny_ckpt, tmp_path / "run", ko_data, "--train-iters", "24", "--lr", "1e-2")
    curve = losses(records)
    assert [r["iteration"] for r in records] == list(range(1, 25))
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4 - 1.0, curve
    # TFLOP/s per GPU: Megatron-LM's FLOPs count of the step (the planner's) over its time
    from motif_megatron.model.builder import BuildOptions, model_vocab_size
    from motif_megatron.model.flops import train_flops
    from motif_megatron.model.llama import LlamaArgs

    args = LlamaArgs.load(tiny_ckpt)
    per_token = train_flops(args, 4, 64, model_vocab_size(args, BuildOptions())) / (4 * 64)
    for r in records:
        assert r["tflops_per_device"] == pytest.approx(per_token * r["tokens_per_s"] / 1e12)
        assert r["mfu"] is None  # no peak for a CPU
        assert r["real_tokens"] == 4 * 64  # pretraining rows have no padding
        # Megatron-LM's timers; a save's time lands in the iteration after it
        assert list(r["timers_ms"]) == list(TIMERS) and r["timers_ms"]["forward-backward"] > 0
        assert r["timers_ms"]["optimizer"] > 0 and r["timers_ms"]["save-checkpoint"] == 0


@pytest.mark.parametrize(
    "layout",
    [
        ["--tensor-model-parallel-size", "2"],
        ["--pipeline-model-parallel-size", "2"],
        [],  # two processes, neither TP nor PP: data parallel
        # the interleaved schedule: two chunks of one layer on each of the two stages
        ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"],
    ],
    ids=["tp2", "pp2", "dp2", "pp2-vpp2"],
)
@pytest.mark.compat
def test_parallel_layouts_follow_tp1(tmp_path, tiny_ckpt, ko_data, tp1_reference, layout):
    reference = losses(tp1_reference)
    parallel = losses(train(tiny_ckpt, tmp_path / "par", ko_data, *TP1_FLAGS, *layout, nproc=2))
    assert len(parallel) == 4
    assert max(abs(a - b) for a, b in zip(reference, parallel, strict=True)) < 1e-5


def test_stages_train_exactly_their_parameters(tmp_path, grown, grown_data):
    ckpt, data = grown, grown_data
    names = ["llama-pro", *(f"eeve-{i}" for i in range(1, 8))]
    names += ["redwhale-embed", "redwhale-odd", "redwhale-even", "regex:final_layernorm"]
    names += ["llama-pro+eeve-3", "eeve-1+redwhale-embed", "llama-pro+regex:final_layernorm"]
    out = ok(
        run(
            [
                "tests/scripts/stage_probe.py",
                "--load",
                str(ckpt),
                "--data-path",
                data,
                "--out",
                str(tmp_path),
                "--stages",
                *names,
            ]
        )
    )
    report = json.loads(out.strip().splitlines()[-1])
    emb, head = "embedding.word_embeddings.weight", "output_layer.weight"

    def layers(stage):
        return {int(c.split("[")[1][:-1]) for c in report[stage]["changed"] if "[" in c}

    def others(stage):
        return {c for c in report[stage]["changed"] if "[" not in c}

    new_layers = set(
        json.loads((ckpt / "motif_model.json").read_text())["growth"]["llama_pro_layers"]
    )
    assert layers("llama-pro") == new_layers and not others("llama-pro")
    rows_only = {"eeve-1": {emb}, "eeve-2": {head}, "eeve-3": {emb, head}, "eeve-5": {emb}}
    for stage, expected in {
        "eeve-1": {emb},
        "eeve-2": {head},
        "eeve-3": {emb, head},
        "eeve-4": {head},
        "eeve-5": {emb, head},
        "redwhale-embed": {emb, head},
        "regex:final_layernorm": {"decoder.final_layernorm.weight"},
    }.items():
        assert others(stage) == expected and not layers(stage), stage
        for key in rows_only.get(stage, ()):
            assert report[stage]["old_rows_equal"][key], (stage, key)
            assert report[stage]["new_rows_changed"][key], (stage, key)
    assert not report["eeve-4"]["old_rows_equal"][head]
    assert layers("eeve-6") == set(range(6)) and emb in others("eeve-6")
    assert layers("eeve-7") == set(range(6)) and not others("eeve-7")
    assert layers("redwhale-odd") == {0, 2, 4} and not others("redwhale-odd")
    assert layers("redwhale-even") == {1, 3, 5} and not others("redwhale-even")
    # unions: the new blocks and the new rows; a tensor one part trains whole is not row-masked
    assert layers("llama-pro+eeve-3") == new_layers and others("llama-pro+eeve-3") == {emb, head}
    assert all(report["llama-pro+eeve-3"]["old_rows_equal"][k] for k in (emb, head))
    assert others("eeve-1+redwhale-embed") == {emb, head}
    assert not report["eeve-1+redwhale-embed"]["old_rows_equal"][emb]
    final_norm = {"decoder.final_layernorm.weight"}
    assert others("llama-pro+regex:final_layernorm") == final_norm


STAGED = "stages:\n  - {name: eeve-1, iters: 3}\n  - {name: full, iters: 5}\n"


@pytest.mark.compat
def test_sigkill_and_resume_is_bitwise(tmp_path, grown, grown_data):
    """A staged run (row-masked stage, then full) killed mid-run resumes to the same losses."""
    ckpt, data = grown, grown_data
    config = tmp_path / "run.yaml"
    config.write_text(STAGED + "train-iters: 8\nsave-interval: 2\nlr: 0.01\nseq-length: 128\n")
    base = ["--load", str(ckpt), "--data-path", data, "--config", str(config)]
    base += ["--micro-batch-size", "2", "--global-batch-size", "8"]
    ok(
        run(
            [
                "pretrain_motif.py",
                *base,
                "--save",
                str(tmp_path / "a"),
                "--metrics-file",
                str(tmp_path / "a.jsonl"),
            ]
        )
    )
    reference = (tmp_path / "a.jsonl").read_text().splitlines()

    metrics = tmp_path / "b.jsonl"
    cmd = [PYTHON, str(ROOT / "pretrain_motif.py"), *base, "--save", str(tmp_path / "b")]
    cmd += ["--metrics-file", str(metrics)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill during iteration 6 (saved at 4)
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "b" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    ok(
        run(
            [
                "pretrain_motif.py",
                *base,
                "--save",
                str(tmp_path / "b"),
                "--metrics-file",
                str(metrics),
            ]
        )
    )
    resumed = metrics.read_text().splitlines()
    clean = [json.dumps(without_wall_clock(json.loads(x))) for x in reference]
    again = [json.dumps(without_wall_clock(json.loads(x))) for x in resumed]
    assert again == clean
    assert [json.loads(x)["stage"] for x in resumed] == ["eeve-1"] * 3 + ["full"] * 5


HELPER = """
from motif_megatron.training import checkpointing
checkpointing._start_results_queue()
print("started", flush=True)
import time; time.sleep(120)
"""


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_save_helper_ignores_slurm_signals_and_dies_with_its_rank():
    """Megatron's results-queue Manager (started at the trainer's start) survives the SIGTERM
    and SIGUSR1 Slurm sends every process of a step, but a rank killed outright takes it along:
    an orphan would hold the step's output open and hang whoever reads it."""
    rank = subprocess.Popen([PYTHON, "-c", HELPER], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert rank.stdout.readline().strip() == "started"
    helpers = [
        p for p in _children(rank.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()
    ]
    assert len(helpers) == 1, _children(rank.pid)
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        os.kill(helpers[0], sig)
    time.sleep(1)
    assert _alive(helpers[0])
    rank.kill()
    rank.wait()
    deadline = time.time() + 10
    while _alive(helpers[0]) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(helpers[0])


def test_plateau_advances_the_stage(tmp_path, tiny_ckpt, ko_data):
    config = tmp_path / "run.yaml"
    config.write_text(
        "stages:\n  - {name: 'regex:final_layernorm', plateau: true}\n  - {name: full, iters: 2}\n"
        "plateau-patience: 2\nplateau-min-delta: 0.5\ntrain-iters: 20\n"
    )
    tensorboard = tmp_path / "tb"
    records = train(
        tiny_ckpt,
        tmp_path / "run",
        ko_data,
        "--config",
        str(config),
        "--tensorboard-dir",
        str(tensorboard),
    )
    stages = [r["stage"] for r in records]
    switch = stages.index("full")
    assert 2 <= switch < 18 and stages[switch:] == ["full", "full"], stages
    assert list(tensorboard.glob("events.out.tfevents.*"))
    ok(
        run(
            [
                "tools/plot_metrics.py",
                str(tmp_path / "run.jsonl"),
                "--out",
                str(tmp_path / "loss.png"),
            ]
        )
    )
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_msg_masks_ramp_to_one_and_finalize(tmp_path, widened, ko_data):
    records = train(
        widened, tmp_path / "run", ko_data, "--train-iters", "5", "--msg-ramp-iters", "4"
    )
    assert [r["msg_mask"] for r in records] == [0.0, 0.25, 0.5, 0.75, 1.0]
    final = tmp_path / "final"
    assert finalize(tmp_path / "run", final) < 1e-5


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        ([], "--data-path (or --data-args-path) is required"),
        (["--data-path", "x", "--stage", "sideways"], "unknown stage 'sideways'"),
        (
            ["--data-path", "x", "--stage", "lora", "--sequence-parallel"],
            "LoRA adapters do not follow --sequence-parallel",
        ),
        (["--data-path", "x", "--use-distributed-optimizer"], "needs CUDA"),
        (["--data-path", "x", "--overlap-grad-reduce"], "need NCCL"),
        (["--data-path", "x", "--recompute-granularity", "full"], "--recompute-method"),
        (
            ["--data-path", "x", "--global-batch-size", "3", "--micro-batch-size", "2"],
            "not a multiple",
        ),
        (["--data-path", "x", "--context-parallel-size", "2"], "--context-parallel-size 2:"),
        (["--data-path", "x", "--attention-backend", "fused"], "is Transformer Engine's"),
        (
            [
                "--data-path",
                "x",
                "--cross-entropy-loss-fusion",
                "--cross-entropy-fusion-impl",
                "te",
            ],
            "--cross-entropy-fusion-impl te is Transformer Engine's kernel",
        ),
        (
            ["--data-path", "x", "--num-layers-per-virtual-pipeline-stage", "1"],
            "needs --pipeline-model-parallel-size > 1",
        ),
    ],
)
def test_bad_configuration_is_one_line(tmp_path, tiny_ckpt, flags, needle):
    result = run(
        ["pretrain_motif.py", "--load", str(tiny_ckpt), "--save", str(tmp_path / "s"), *flags]
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1], result.stderr[-2000:]


def test_lora_stage_matches_across_tp_merges_and_resumes(tmp_path, tiny_ckpt, ko_data):
    flags = ["--train-iters", "4", "--lr", "1e-2", "--stage", "lora", "--lora-rank", "4"]
    flags += ["--lr-decay-style", "constant"]  # so a 3-iteration stage keeps the same LR
    tp1 = train(tiny_ckpt, tmp_path / "tp1", ko_data, *flags)
    tp2 = train(
        tiny_ckpt, tmp_path / "tp2", ko_data, *flags, "--tensor-model-parallel-size", "2", nproc=2
    )
    assert max(abs(a - b) for a, b in zip(losses(tp1), losses(tp2), strict=True)) < 1e-5
    assert losses(tp1)[-1] < losses(tp1)[0]
    # the saved weights are merged: a plain Llama that every tool loads, alike at TP=1 and TP=2
    # (up to Adam's amplification of fp32 reduction-order noise in near-zero gradients)
    out = ok(
        run(
            [
                "tools/check_equivalence.py",
                "--load",
                str(tmp_path / "tp1"),
                "--load-b",
                str(tmp_path / "tp2"),
                "--atol",
                "1e-3",
            ]
        )
    )
    differs = run(
        ["tools/check_equivalence.py", "--load", str(tiny_ckpt), "--load-b", str(tmp_path / "tp1")]
    )
    assert differs.returncode == 1  # the adapters trained and the merge carried them
    assert max_abs_diff(out) < 0.01 * max_abs_diff(differs.stdout)
    check_lora_checkpoint(tmp_path, tiny_ckpt)
    # merging at a stage change: iteration 4's loss (measured before its update) is unchanged
    config = tmp_path / "staged.yaml"
    config.write_text(
        "stages:\n  - {name: lora, iters: 3}\n  - {name: full, iters: 1}\nlora-rank: 4\n"
    )
    staged = train(
        tiny_ckpt,
        tmp_path / "staged",
        ko_data,
        "--train-iters",
        "4",
        "--lr",
        "1e-2",
        "--lr-decay-style",
        "constant",
        "--config",
        str(config),
    )
    assert staged[3]["stage"] == "full" and abs(staged[3]["loss"] - tp1[3]["loss"]) < 1e-6
    # resuming inside the LoRA stage restores base, adapters and moments
    cut = ["--save-interval", "2", "--exit-interval", "2"]
    train(tiny_ckpt, tmp_path / "cut", ko_data, *flags, *cut, cut=True)
    other_scale = [*SMALL, "--data-path", ko_data, *flags, "--lora-alpha", "16"]
    refused = run(
        [
            "pretrain_motif.py",
            "--load",
            str(tiny_ckpt),
            "--save",
            str(tmp_path / "cut"),
            *other_scale,
        ]
    )
    assert refused.returncode == 2 and "trained at LoRA scale 8" in refused.stderr.splitlines()[-1]
    resumed = train(tiny_ckpt, tmp_path / "cut", ko_data, *flags, "--save-interval", "2")
    assert losses(resumed) == losses(tp1)


def check_lora_checkpoint(tmp_path, tiny_ckpt) -> None:
    """A LoRA save holds the base once (the plain checkpoint's tensors, nothing more) plus
    the adapters; the merge tool and the HF export write the same adapted model the trainer's
    loader folds."""
    from motif_megatron.checkpoint import adapters, dist

    stored = dist.CheckpointReader(tmp_path / "tp1", merge_adapters=False).shapes
    base = {k: v for k, v in stored.items() if not k.endswith(adapters.SUFFIXES)}
    assert base == dist.CheckpointReader(tiny_ckpt).shapes
    assert {k.rsplit(".", 1)[1] for k in stored.keys() - base.keys()} == set(adapters.SUFFIXES)
    merged = tmp_path / "merged"
    ok(run(["tools/merge_lora.py", "--load", str(tmp_path / "tp1"), "--save", str(merged)]))
    assert dist.CheckpointReader(merged).shapes == base
    compare = ["tools/check_equivalence.py", "--load", str(tmp_path / "tp1")]
    at_tp2 = run([*compare, "--load-b", str(merged), "--tp", "2"], nproc=2)  # folded by shards
    assert max_abs_diff(ok(at_tp2)) < 1e-5
    hf = tmp_path / "hf"
    ok(run(["tools/convert_hf.py", "export", "--load", str(tmp_path / "tp1"), "--out", str(hf)]))
    assert max_abs_diff(ok(run([*compare, "--hf-dir", str(hf)]))) < 1e-4
    refused = run(["tools/merge_lora.py", "--load", str(tiny_ckpt), "--save", str(tmp_path / "x")])
    assert refused.returncode == 2 and "holds no LoRA adapters" in refused.stderr


def test_lora_checkpoint_resumes_at_another_tp(tmp_path, tiny_ckpt, ko_data):
    """Adapters saved at TP=2 load at TP=1 in the same places (fc1's B rows as [gate; up], not
    TP=2's [gate_0; up_0; gate_1; up_1]): the first resumed step's loss, measured before its
    update, is the uninterrupted TP=2 run's (the optimizer restarts, as at any TP change)."""
    flags = ["--train-iters", "4", "--lr", "1e-2", "--stage", "lora", "--lora-rank", "4"]
    flags += ["--lr-decay-style", "constant", "--save-interval", "2"]
    tp2 = ["--tensor-model-parallel-size", "2"]
    whole = train(tiny_ckpt, tmp_path / "whole", ko_data, *flags, *tp2, nproc=2)
    cut = ["--exit-interval", "2"]
    train(tiny_ckpt, tmp_path / "cut", ko_data, *flags, *tp2, *cut, nproc=2, cut=True)
    resumed = train(tiny_ckpt, tmp_path / "cut", ko_data, *flags)
    third = [r for r in resumed if r.get("iteration") == 3]
    assert len(third) == 1 and whole[2]["iteration"] == 3
    assert abs(third[0]["loss"] - whole[2]["loss"]) < 1e-5, (third, whole[2])


def test_resume_at_another_layout_takes_the_weights(tmp_path, tiny_ckpt, ko_data):
    flags = ["--lr", "1e-2", "--save-interval", "2", "--lr-decay-style", "constant"]
    train(tiny_ckpt, tmp_path / "run", ko_data, "--train-iters", "2", *flags)
    records = train(
        tiny_ckpt,
        tmp_path / "run",
        ko_data,
        "--train-iters",
        "4",
        "--tensor-model-parallel-size",
        "2",
        "--override-opt_param-scheduler",  # the run is extended: its decay length changes
        *flags,
        nproc=2,
    )
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    # the weights were resumed: iteration 3's loss (before its update) is the uninterrupted run's
    whole = train(tiny_ckpt, tmp_path / "whole", ko_data, "--train-iters", "4", *flags)
    assert abs(records[2]["loss"] - whole[2]["loss"]) < 1e-5


def test_interleaved_pipeline_resumes_and_saves_for_every_layout(
    tmp_path, tiny_ckpt, ko_data, tp1_reference
):
    """PP2 x VPP2 (four one-layer chunks): a stop at iteration 2 and its resume give the
    one-process run's losses, and its save holds the one-process run's weights under the same
    keys (global layer numbers), so any layout loads it."""
    vpp = ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]
    run_dir = tmp_path / "vpp"
    train(tiny_ckpt, run_dir, ko_data, *TP1_FLAGS, *vpp, "--exit-interval", "2", nproc=2, cut=True)
    records = train(tiny_ckpt, run_dir, ko_data, *TP1_FLAGS, *vpp, nproc=2)
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2, 3, 4]
    reference = losses(tp1_reference)
    assert max(abs(a - b) for a, b in zip(reference, losses(records), strict=True)) < 1e-5
    whole = tmp_path / "whole"
    train(tiny_ckpt, whole, ko_data, *TP1_FLAGS)
    ours, theirs = CheckpointReader(run_dir), CheckpointReader(whole)
    assert ours.shapes == theirs.shapes
    assert max(float((ours.get(k) - theirs.get(k)).abs().max()) for k in theirs.shapes) < 1e-5


def test_decoupled_lr_drives_only_the_embedding_and_output_layer(tmp_path, tiny_ckpt, ko_data):
    """--decoupled-lr 0: the body trains at --lr while the embedding and output layer stay bitwise
    (Megatron's ``is_embedding_or_output_parameter`` group takes its own max/min LR); a resume
    with another decoupled LR is refused."""
    flags = ["--train-iters", "2", "--lr", "1e-2", "--lr-warmup-iters", "1"]
    train(
        tiny_ckpt,
        tmp_path / "run",
        ko_data,
        *flags,
        "--decoupled-lr",
        "0",
        "--decoupled-min-lr",
        "0",
    )
    before, after = CheckpointReader(tiny_ckpt), CheckpointReader(tmp_path / "run")
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        assert torch.equal(after.get(key), before.get(key)), key
    body = "decoder.layers.mlp.linear_fc1.weight"
    assert (after.get(body) - before.get(body)).abs().max() > 1e-4
    # a resume with another decoupled LR is refused in one line
    args = ["pretrain_motif.py", "--load", str(tiny_ckpt), "--save", str(tmp_path / "run")]
    result = run([*args, "--data-path", ko_data, *SMALL, *flags, "--decoupled-lr", "1e-2"])
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--decoupled-lr 0.0 --decoupled-min-lr 0.0" in last, last


def test_microbatch_size_leaves_pretraining_losses_unchanged(tmp_path, tiny_ckpt, ko_data):
    """Per-token loss over the global batch: --micro-batch-size 1 and 4 (--global-batch-size 4)
    give the same losses with --eod-mask-loss, whose microbatches hold different token counts."""
    flags = ["--train-iters", "4", "--lr", "1e-2", "--eod-mask-loss"]
    one = losses(train(tiny_ckpt, tmp_path / "mbs1", ko_data, *flags))
    four = losses(train(tiny_ckpt, tmp_path / "mbs4", ko_data, *flags, "--micro-batch-size", "4"))
    assert max(abs(a - b) for a, b in zip(one, four, strict=True)) < 1e-5


@pytest.fixture(scope="module")
def tied_ckpt(tmp_path_factory, llama3_tokenizer):
    """A tiny Llama with tied input and output embeddings (Llama-3.2-1B/3B style)."""
    from motif_megatron.model.presets import random_hf_model

    tmp = tmp_path_factory.mktemp("tied")
    hf = random_hf_model(tmp / "hf", "tiny", llama3_tokenizer, seed=1, tie_word_embeddings=True)
    ok(run(["tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(tmp / "ck")]))
    return tmp / "ck"


def test_tied_embeddings_train_alike_at_pp2(tmp_path, tied_ckpt, ko_data):
    """finalize_model_grads all-reduces the tied embedding between the first and last stage, so
    PP=2 keeps one embedding and follows PP=1."""
    flags = ["--train-iters", "5", "--lr", "1e-2"]
    pp1 = losses(train(tied_ckpt, tmp_path / "pp1", ko_data, *flags))
    pp2 = losses(
        train(
            tied_ckpt,
            tmp_path / "pp2",
            ko_data,
            *flags,
            "--pipeline-model-parallel-size",
            "2",
            nproc=2,
        )
    )
    assert max(abs(a - b) for a, b in zip(pp1, pp2, strict=True)) < 1e-5


def test_full_recomputation_gives_the_same_losses(tmp_path, tiny_ckpt, ko_data, tp1_reference):
    flags = TP1_FLAGS
    plain = losses(tp1_reference)
    recompute = ["--recompute-granularity", "full", "--recompute-method", "uniform"]
    again = losses(
        train(
            tiny_ckpt,
            tmp_path / "re",
            ko_data,
            *flags,
            *recompute,
            "--recompute-num-layers",
            "1",
        )
    )
    assert max(abs(a - b) for a, b in zip(plain, again, strict=True)) < 1e-6


@pytest.mark.compat
def test_the_optimizer_state_is_made_before_a_load_as_megatron_lm_makes_it(tiny_ckpt):
    """Without TE or apex megatron-core falls back to torch's AdamW; its distributed optimizer
    asserts one ``step`` per parameter in ``state_dict()``, which a load calls before any state
    exists. The state made first (Megatron's ``init_state_fn`` and a fresh AdamW's ``step``)
    holds exactly a fresh optimizer's values: the first update is bitwise that of a fresh one."""
    from types import SimpleNamespace

    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.training import engine
    from motif_megatron.training.checkpointing import init_optimizer_state

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    try:
        updated = []
        for made_first in (False, True):
            model, _ = build_from_checkpoint(str(tiny_ckpt), BuildOptions())
            optim = engine.OptimConfig(lr=1e-2)
            ddps = engine.wrap_ddp([model], optim)
            optimizer = engine.build_optimizer(ddps, optim)
            subs = getattr(optimizer, "chained_optimizers", [optimizer])
            if made_first:
                # Megatron's DistributedOptimizer.state_dict() (which a load calls) over this
                # torch AdamW, the only attributes it reads: it fails on the fresh state, and
                # reads the made one
                def held(sub):
                    return SimpleNamespace(optimizer=sub.optimizer, grad_scaler=None)

                with pytest.raises(AssertionError):
                    DistributedOptimizer.state_dict(held(subs[0]))
                init_optimizer_state(optimizer)
                for sub in subs:
                    state = DistributedOptimizer.state_dict(held(sub))
                    groups = state["optimizer"]["param_groups"]
                    assert all(g["step"] == 0 for g in groups)
                    inner = sub.optimizer
                    states = list(inner.state.values())
                    assert len(states) == sum(len(g["params"]) for g in inner.param_groups)
                    assert all(set(s) == {"exp_avg", "exp_avg_sq", "step"} for s in states)
                    assert all(float(s["step"]) == 0 for s in states)
            for param in model.parameters():
                param.main_grad.copy_(torch.ones_like(param) * 0.5)
            optimizer.step()
            updated.append({n: p.detach().clone() for n, p in model.named_parameters()})
        assert all(torch.equal(updated[0][n], updated[1][n]) for n in updated[0])
    finally:
        parallel.shutdown()
