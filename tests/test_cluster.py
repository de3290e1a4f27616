"""Training as a cluster runs it: launch by srun on a real one-node Slurm, sbatch scripts,
preemption by signal, resume on another data-parallel size, LR schedule changes on resume, and
checkpoint retention."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT, SMALL, TP1_FLAGS, ok, pretrain_records, run

from motif_megatron.errors import UserError
from motif_megatron.parallel import first_host, launch_from_env

CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    and not k.startswith("SLURM_")
}
CLEAN_ENV.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps(source: Path | list[dict]) -> list[dict]:
    """The per-iteration lines of a metrics file (or its records), without the wall-clock field."""
    lines = records(source) if isinstance(source, Path) else source
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in lines if "loss" in r]


def pretrain(load, save, data, *flags, nproc: int = 1, torchrun: bool | None = None) -> list[dict]:
    return steps(pretrain_records(load, save, data, *flags, nproc=nproc, torchrun=torchrun))


# ----------------------------------------------------------------------------- launch environment


def test_launch_environment_of_torchrun_srun_and_neither():
    srun = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_ID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[017-018,20]",
    }
    launch = launch_from_env(srun)
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 8, 1)
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("gpu017", 24242, "srun")
    given = launch_from_env({**srun, "MASTER_ADDR": "head", "MASTER_PORT": "6000"})
    assert (given.master_addr, given.master_port) == ("head", 6000)
    # torchrun inside an allocation wins; a batch script's own shell is a plain process
    torchrun = launch_from_env({**srun, "RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5"})
    assert (torchrun.rank, torchrun.world_size, torchrun.launcher) == (5, 16, "torchrun")
    assert launch_from_env({k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}) is None
    assert first_host("login1") == "login1" and first_host("n[9-12],m3") == "n9"
    with pytest.raises(UserError, match="WORLD_SIZE=4 but neither"):
        launch_from_env({"WORLD_SIZE": "4"})


def test_torchrun_with_one_process_equals_plain_python(tmp_path, tiny_ckpt, ko_data, tp1_reference):
    """`torchrun --nproc_per_node=1` (how most one-GPU runs start) forms its one-process group
    without a rendezvous and trains exactly as a plain `python` process does."""
    launched = pretrain(tiny_ckpt, tmp_path / "torchrun", ko_data, *TP1_FLAGS, torchrun=True)
    assert [r["iteration"] for r in launched] == [1, 2, 3, 4]
    assert launched == steps(tp1_reference)


def test_world_size_without_a_launcher_is_one_line(tmp_path, tiny_ckpt):
    env = {**CLEAN_ENV, "WORLD_SIZE": "2"}
    cmd = [PYTHON, str(ROOT / "pretrain_motif.py"), "--load", str(tiny_ckpt), "--data-path", "x"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "neither torchrun's RANK nor srun's SLURM_PROCID" in result.stderr.splitlines()[-1]


# ----------------------------------------------------------------------------- Slurm


def srun(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = ["srun", "-n", "2", "--kill-on-bad-exit=1", "--time=10", *args]
    return subprocess.run(
        cmd, cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True, timeout=timeout
    )


def test_srun_forms_one_job_equal_to_torchrun(slurm, tmp_path, tiny_ckpt, ko_data):
    flags = ["--train-iters", "3", "--lr", "1e-2", "--tensor-model-parallel-size", "2"]
    reference = pretrain(tiny_ckpt, tmp_path / "torchrun", ko_data, *flags, nproc=2)
    metrics = tmp_path / "srun.jsonl"
    args = ["--load", str(tiny_ckpt), "--save", str(tmp_path / "srun"), "--data-path", ko_data]
    result = srun(
        PYTHON, "pretrain_motif.py", *args, "--metrics-file", str(metrics), *SMALL, *flags
    )
    ok(result)
    got = steps(metrics)
    assert [r["iteration"] for r in got] == [1, 2, 3]  # one job: one line per iteration
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, reference, strict=True)) < 1e-6
    assert [r["lr"] for r in got] == [r["lr"] for r in reference]


def sbatch(*args: str, timeout: int = 900) -> str:
    """``sbatch --wait``; returns the job's output file's text."""
    out = subprocess.run(
        ["sbatch", "--parsable", "--wait", *args],
        cwd=ROOT,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip().split(";")[0]


def test_sbatch_pretrain_runs_the_demo_config(slurm, tmp_path, widened, ko_data):
    """examples/slurm/pretrain.sbatch with examples/configs/demo.yaml (LlamaPro blocks and new
    vocabulary rows, then the MSG ramp, TP=2) on a model grown in depth, width and vocabulary:
    runs to its last iteration and saves it."""
    grown = widened
    log = tmp_path / "job.out"
    env_args = [f"--export=ALL,LOAD={grown},SAVE={tmp_path / 'cpt'},DATA={ko_data}"]
    env_args[0] += ",CONFIG=examples/configs/demo.yaml"
    sbatch(
        *env_args,
        "--gpus-per-node=0",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        f"--output={log}",
        "examples/slurm/pretrain.sbatch",
        "--seq-length",
        "64",
    )
    text = log.read_text()
    assert "srun" in text.splitlines()[0], text[-2000:]
    assert (tmp_path / "cpt/latest_checkpointed_iteration.txt").read_text().strip() == "24", text
    got = steps(tmp_path / "cpt/metrics.jsonl")
    assert [r["iteration"] for r in got] == list(range(1, 25))
    assert [got[0]["stage"], got[-1]["stage"]] == ["llama-pro+eeve-3", "full"]
    assert got[-1]["msg_mask"] == 1.0


def test_recipe_chains_dependent_jobs(slurm, tmp_path, tiny_hf, ko_data):
    """examples/slurm/recipe.sh: import -> grow -> train -> finalize -> export, each job waiting
    for the one before; the result is an HF model."""
    out = tmp_path / "recipe"
    env = {
        **CLEAN_ENV,
        "HF_DIR": str(tiny_hf),
        "OUT": str(out),
        "DATA": ko_data,
        "PYTHON": PYTHON,
        "GROW": "--depth-add 2 --hidden-size 80",
        "SBATCH_ARGS": "--time=15",
        "TRAIN_SBATCH": "--gpus-per-node=0 --ntasks-per-node=2 --cpus-per-task=1",
        "TRAIN_ARGS": "--train-iters 3 --msg-ramp-iters 2 --lr 1e-3 " + " ".join(SMALL),
    }
    result = subprocess.run(
        ["bash", "examples/slurm/recipe.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    deadline = time.time() + 900
    while time.time() < deadline:
        state = subprocess.run(
            ["squeue", "-h", "-j", last, "-o", "%T"], capture_output=True, text=True
        ).stdout.strip()
        if not state:
            break
        time.sleep(2)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((out / "logs").glob("*.out")))
    assert (out / "hf/config.json").is_file(), logs
    assert json.loads((out / "hf/config.json").read_text())["hidden_size"] == 80
    assert len(steps(out / "trained/metrics.jsonl")) == 3


# ----------------------------------------------------------------------------- preemption


def test_sigterm_saves_the_current_iteration_and_resumes_bitwise(tmp_path, tiny_ckpt, ko_data):
    flags = ["--train-iters", "8", "--lr", "1e-2", "--lr-warmup-iters", "2", *SMALL]
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, *flags)
    metrics = tmp_path / "cut.jsonl"
    cmd = [
        PYTHON,
        str(ROOT / "pretrain_motif.py"),
        "--load",
        str(tiny_ckpt),
        "--data-path",
        ko_data,
    ]
    cmd += ["--save", str(tmp_path / "cut"), "--metrics-file", str(metrics), *flags]
    proc = subprocess.Popen(
        [*cmd, "--exit-signal-handler"],
        cwd=ROOT,
        env=CLEAN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = steps(metrics)[-1]["iteration"]
    assert 3 <= stopped < 8
    tracker = tmp_path / "cut/latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == str(stopped)
    assert "received SIGTERM" in stdout
    ok(subprocess.run(cmd, cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True, timeout=600))
    assert steps(metrics) == whole


def test_exit_duration_saves_and_stops(tmp_path, tiny_ckpt, ko_data):
    save = tmp_path / "run"
    got = pretrain(tiny_ckpt, save, ko_data, "--train-iters", "6", "--exit-duration-in-mins", "0")
    assert [r["iteration"] for r in got] == [1]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


# ----------------------------------------------------------------------------- elastic resume

SCHEDULE = [
    "--lr",
    "1e-2",
    "--min-lr",
    "1e-3",
    "--lr-warmup-iters",
    "2",
    "--global-batch-size",
    "4",
]


def test_resume_on_fewer_data_parallel_ranks_keeps_optimizer_and_schedule(
    tmp_path, tiny_ckpt, ko_data
):
    flags = ["--train-iters", "8", *SCHEDULE]
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, *flags, nproc=2)
    save = tmp_path / "elastic"
    pretrain(
        tiny_ckpt, save, ko_data, *flags, "--save-interval", "4", "--exit-interval", "4", nproc=2
    )
    args = ["pretrain_motif.py", "--load", str(tiny_ckpt), "--save", str(save)]
    log = run([*args, "--data-path", ko_data, "--metrics-file", f"{save}.jsonl", *SMALL, *flags])
    ok(log)
    resumed = steps(Path(f"{save}.jsonl"))
    line = next(x for x in log.stdout.splitlines() if "resumed" in x)
    assert "DP=2" in line and "DP=1" in line and "optimizer state" in line, line
    assert "not loaded" not in line, line
    assert [r["lr"] for r in resumed] == [r["lr"] for r in whole]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(resumed, whole, strict=True)) < 1e-4


def test_a_changed_schedule_on_resume_is_refused_or_overridden(tmp_path, tiny_ckpt, ko_data):
    save = tmp_path / "run"
    pretrain(tiny_ckpt, save, ko_data, "--train-iters", "4", *SCHEDULE)
    base = ["pretrain_motif.py", "--load", str(tiny_ckpt), "--save", str(save), "--data-path"]
    base += [ko_data, "--metrics-file", f"{save}.jsonl", *SMALL, "--train-iters", "8", *SCHEDULE]
    refused = run(base)
    assert refused.returncode == 2
    last = refused.stderr.strip().splitlines()[-1]
    assert "lr_decay_steps 4 -> 8" in last and "--override-opt_param-scheduler" in last, last
    ok(run([*base, "--override-opt_param-scheduler"]))
    extended = steps(Path(f"{save}.jsonl"))
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, "--train-iters", "8", *SCHEDULE)
    # the last 4 iterations follow the 8-iteration cosine, not the old schedule's --min-lr
    assert [r["lr"] for r in extended[4:]] == pytest.approx([r["lr"] for r in whole[4:]], rel=1e-12)
    assert extended[-1]["lr"] > 1e-3


def test_keep_latest_checkpoints(tmp_path, tiny_ckpt, ko_data):
    save = tmp_path / "run"
    flags = ["--train-iters", "5", "--save-interval", "1", "--keep-latest-checkpoints", "2"]
    pretrain(tiny_ckpt, save, ko_data, *flags)
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000004", "iter_0000005"]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
