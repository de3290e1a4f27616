"""Training as a cluster runs it: launch by srun on a real one-node Slurm, sbatch scripts,
preemption by signal, resume on another data-parallel size, LR schedule changes on resume, and
checkpoint retention."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    PYTHON,
    ROOT,
    SLURM_NODES,
    SMALL,
    TP1_FLAGS,
    max_abs_diff,
    ok,
    pretrain_records,
    run,
    without_wall_clock,
)

from motif_megatron.checkpoint.dist import stop_reason
from motif_megatron.errors import UserError
from motif_megatron.parallel import hostnames, launch_from_env

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
    return [without_wall_clock(r) for r in lines if "loss" in r]


def pretrain(load, save, data, *flags, **launch) -> list[dict]:
    return steps(pretrain_records(load, save, data, *flags, **launch))


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
    # the port comes from the job and step ids: 20000 + (4242 * 97 + 0) % 20000
    assert (launch.master_addr, launch.master_port, launch.launcher) == ("gpu017", 31474, "srun")
    step = launch_from_env({**srun, "SLURM_STEP_ID": "1", "SLURM_STEP_NODELIST": "gpu[018,20]"})
    assert (step.master_addr, step.master_port) == ("gpu018", 31475)
    given = launch_from_env({**srun, "MASTER_ADDR": "head", "MASTER_PORT": "6000"})
    assert (given.master_addr, given.master_port) == ("head", 6000)
    # torchrun inside an allocation wins; a batch script's own shell is a plain process
    torchrun = launch_from_env({**srun, "RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5"})
    assert (torchrun.rank, torchrun.world_size, torchrun.launcher) == (5, 16, "torchrun")
    assert launch_from_env({k: v for k, v in srun.items() if k != "SLURM_STEP_ID"}) is None
    with pytest.raises(UserError, match="WORLD_SIZE=4 but neither"):
        launch_from_env({"WORLD_SIZE": "4"})


HOSTLISTS = {
    "login1": ["login1"],
    "n[9-11],m3": ["n9", "n10", "n11", "m3"],
    "gpu[003-004,9]": ["gpu003", "gpu004", "gpu9"],
    "rack[1-2]-n[01-02]": ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"],
    "c[08-10]d[1],e[8-9]f[1-2]": ["c08d1", "c09d1", "c10d1", "e8f1", "e8f2", "e9f1", "e9f2"],
}


@pytest.mark.parametrize("nodelist", list(HOSTLISTS))
def test_slurm_host_lists_expand_as_scontrol_does(nodelist):
    assert hostnames(nodelist) == HOSTLISTS[nodelist]
    if shutil.which("scontrol") and os.path.exists("/etc/slurm/slurm.conf"):
        real = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True)
        assert real.stdout.decode().split() == HOSTLISTS[nodelist]


@pytest.mark.parametrize("nodelist", ["gpu[1-", "gpu[3-1]", "n[a-b]", ""])
def test_an_unreadable_host_list_is_one_line(nodelist):
    with pytest.raises(UserError, match="cannot read the Slurm host list"):
        hostnames(nodelist)


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


def two_nodes(slurm) -> None:
    if SLURM_NODES < 2:
        pytest.skip(f"the local Slurm cluster has {SLURM_NODES} node (SLURM_NODES)")
    names = subprocess.run(
        ["srun", "-N", "2", "-n", "2", "--time=1", "hostname"],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        timeout=120,
    )
    assert len(set(names.stdout.split())) == 2, names.stdout + names.stderr


def test_two_nodes_form_one_job_with_tp_and_pp(slurm, tmp_path, tiny_ckpt, ko_data):
    """``srun -N 2 -n 4``: TP=2 x PP=2 across two Slurm nodes (two network namespaces, two
    hostnames) trains as the same layout under one torchrun on one node."""
    two_nodes(slurm)
    flags = ["--train-iters", "3", "--lr", "1e-2", "--tensor-model-parallel-size", "2"]
    flags += ["--pipeline-model-parallel-size", "2"]
    reference = pretrain(tiny_ckpt, tmp_path / "torchrun", ko_data, *flags, nproc=4)
    metrics, save = tmp_path / "srun.jsonl", tmp_path / "srun"
    args = ["--load", str(tiny_ckpt), "--save", str(save), "--data-path", ko_data, *SMALL]
    cmd = ["srun", "-N", "2", "-n", "4", "--ntasks-per-node=2", "--kill-on-bad-exit=1"]
    cmd += ["--time=10", PYTHON, "pretrain_motif.py", *args, "--metrics-file", str(metrics)]
    result = subprocess.run(
        [*cmd, *flags], cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True, timeout=600
    )
    assert "4 ranks on 2 hosts (motif-n1 x2, motif-n2 x2)" in ok(result)
    got = steps(metrics)
    assert [r["iteration"] for r in got] == [1, 2, 3]
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, reference, strict=True)) < 1e-6
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "3"


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
    assert (tmp_path / "cpt/latest_checkpointed_iteration.txt").read_text().strip() == "16", text
    got = steps(tmp_path / "cpt/metrics.jsonl")
    assert [r["iteration"] for r in got] == list(range(1, 17))
    assert [got[0]["stage"], got[-1]["stage"]] == ["llama-pro+eeve-3", "full"]
    assert got[-1]["msg_mask"] == 1.0


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def wait_for_job(job: str, timeout: float) -> str:
    """Poll ``scontrol show job`` until the job reaches a final state (a requeued job passes
    through REQUEUED and PENDING again); returns its record."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        shown = subprocess.run(
            ["scontrol", "show", "job", job], capture_output=True, text=True, env=CLEAN_ENV
        ).stdout
        if any(f"JobState={state} " in shown for state in FINAL_STATES):
            return shown
        time.sleep(2)
    subprocess.run(["scancel", job], env=CLEAN_ENV)
    raise AssertionError(f"job {job} did not end within {timeout} s")


def submit(save: Path, log: Path, options: list[str], flags: list[str], env: str) -> str:
    """``sbatch OPTIONS pretrain.sbatch FLAGS`` with SAVE and ``env`` (``,NAME=value...``)
    exported; returns the job id."""
    cmd = ["sbatch", "--parsable", f"--export=ALL,SAVE={save}{env}", "--open-mode=append"]
    cmd += [f"--output={log}", "--gpus-per-node=0", "--cpus-per-task=1", *options]
    submitted = subprocess.run(
        [*cmd, "examples/slurm/pretrain.sbatch", *flags],
        cwd=ROOT,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
    )
    return ok(submitted).strip().split(";")[0]


def signal_batch(job: str, name: str) -> None:
    """Signal the batch shell only, as ``sbatch --signal=B:NAME@...`` does: its trap passes it on."""
    subprocess.run(["scancel", f"--signal={name}", "--batch", job], env=CLEAN_ENV, check=True)


def test_a_time_limited_job_requeues_itself_until_the_run_is_complete(
    slurm, tmp_path, tiny_ckpt, ko_data
):
    """pretrain.sbatch on two nodes with a two-minute time limit and SIGUSR1 30 s before it (Slurm
    may send it up to 60 s earlier): at each limit the run saves and exits 3, the script
    requeues the job (same id), and the job resumes on whichever nodes it gets until it ends at
    --train-iters with the uninterrupted run's losses; only then does it exit 0."""
    two_nodes(slurm)
    flags = ["--train-iters", "120", "--lr", "1e-3", "--save-interval", "40", *SMALL]
    save, log = tmp_path / "cut", tmp_path / "job.out"
    options = ["--nodes=2", "--ntasks-per-node=1", "--time=2", "--signal=USR1@30"]
    job = submit(save, log, options, flags, f",LOAD={tiny_ckpt},DATA={ko_data}")
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, *flags, nproc=2)  # meanwhile
    state = wait_for_job(job, timeout=1500)
    text = log.read_text()
    assert "JobState=COMPLETED" in state and "ExitCode=0:0" in state, state + text[-3000:]
    assert text.count(f"requeueing job {job}") >= 1, text[-3000:]
    assert "2 ranks on 2 hosts" in text
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "120"
    got = steps(save / "metrics.jsonl")
    assert [r["iteration"] for r in got] == list(range(1, 121))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, whole, strict=True)) < 1e-6


def test_the_motif_rehearsal_runs_on_two_nodes_as_it_runs_here(slurm, tmp_path):
    """examples/recipes/motif-rehearsal.yaml, the 102B recipe's steps and flags at toy size, as
    chained Slurm jobs (--slurm --wait): the plan lays the grown model over both nodes (TP2 PP2
    VPP4), training is cut by its 3-minute limit and requeued until it completes, and the chain
    goes on to the evaluation, which equals that of the same recipe run here afterwards: the
    same step folders (hashes), the same losses, the same perplexities. The local run starts
    from the chain's finished data and growth steps (their outputs are byte-deterministic and
    tested elsewhere) and runs training and everything after it itself."""
    two_nodes(slurm)
    recipe, out, local = (
        ROOT / "examples/recipes/motif-rehearsal.yaml",
        tmp_path / "s",
        tmp_path / "l",
    )
    cmd = [PYTHON, "tools/run_recipe.py", str(recipe), "--out"]
    chain = subprocess.run(
        [*cmd, str(out), "--slurm", "--wait"],
        cwd=ROOT,
        env=CLEAN_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1800,
    )
    logs = "".join(p.read_text()[-2000:] for p in out.glob("steps/*/slurm-*.out"))
    assert chain.returncode == 0, chain.stdout[-3000:] + logs
    after_growth = ("train", "finalize", "sft", "kto", "export", "evaluate")
    for step in (out / "steps").iterdir():
        if step.name.rsplit("-", 1)[0] not in after_growth:
            shutil.copytree(step, local / "steps" / step.name)
    printed = ok(run(["tools/run_recipe.py", str(recipe), "--out", str(local)], timeout=1800))
    for name in after_growth:
        assert f"[main] {name}: done" not in printed  # run here, not reused
    report, here = (json.loads((d / "report.json").read_text()) for d in (out, local))
    steps = {s["name"]: s for s in report["steps"]}
    assert set(steps) == {s["name"] for s in here["steps"]} and len(steps) == 19
    assert all(set(s) == {"name", "nodes", "allocations", "seconds"} for s in report["steps"])
    for name in ("train", "sft", "kto"):
        assert steps[name]["nodes"] == "motif-n[1-2]", steps[name]
    assert steps["train"]["allocations"] >= 2, logs  # cut by its time limit at least once
    assert steps["train"]["seconds"] > 30 * steps["train"]["allocations"]  # from its first start
    assert steps["corpus_ko"]["nodes"] in ("motif-n1", "motif-n2")
    train = {p.name: p for p in out.glob("steps/train-*")}
    assert train.keys() == {p.name for p in local.glob("steps/train-*")}  # the same step
    (name,) = train
    ours, theirs = (
        [r for r in records(d / name / "metrics.jsonl") if "loss" in r]
        for d in (out / "steps", local / "steps")
    )
    assert [r["iteration"] for r in ours] == list(range(1, 97))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs, strict=True)) < 1e-6
    train_log = "".join(p.read_text() for p in train[name].glob("slurm-*.out"))
    assert "4 ranks on 2 hosts (motif-n1 x2, motif-n2 x2): TP=2 PP=2 VPP=4 DP=1" in train_log
    for key in ("korean_ppl", "english_ppl"):
        assert report["evaluation"][key] == pytest.approx(here["evaluation"][key], rel=1e-6)


def test_two_torchrun_nodes_save_through_sigusr1_and_sigterm_and_requeue(
    slurm, tmp_path, tiny_ckpt, ko_data
):
    """LAUNCHER=torchrun on two nodes (c10d rendezvous between them): SIGUSR1 to the batch shell
    is passed to every rank; they start their final save (slowed by the test hook), and a
    SIGTERM sent to the batch shell during it (a preemption, ``scancel``) reaches them too: they
    record it, publish the save and exit; torchrun reports a failure, the script reads the
    checkpoint and requeues, and the job ends complete with the uninterrupted run's losses."""
    two_nodes(slurm)
    flags = ["--train-iters", "60", "--lr", "1e-3", *SMALL]
    save, log = tmp_path / "cut", tmp_path / "job.out"
    env = f",LAUNCHER=torchrun,LOAD={tiny_ckpt},DATA={ko_data},MOTIF_TEST_SAVE_DELAY=8"
    job = submit(save, log, ["--nodes=2", "--ntasks-per-node=1", "--time=10"], flags, env)
    metrics = save / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.exists() and len(records(metrics)) >= 5):
        time.sleep(0.5)
    signal_batch(job, "USR1")
    while time.time() < deadline and not list(save.glob("iter_*.tmp")):
        time.sleep(0.1)
    signal_batch(job, "TERM")  # during the save
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, *flags, nproc=2)  # meanwhile
    state = wait_for_job(job, timeout=900)
    text = log.read_text()
    assert "JobState=COMPLETED" in state and "Restarts=1" in state, state + text[-3000:]
    assert "2 ranks on 2 hosts" in text and "can't honor" not in text  # one torchrun per node
    stop = next(x for x in text.splitlines() if x.startswith("stopped: received SIGUSR1"))
    assert "SIGTERM" in stop.split("resumes it")[1], stop  # recorded during the save
    cut = int(stop.split(" at iteration ")[1].split()[0])
    assert f"stopped at iteration {cut} before --train-iters; requeueing job {job}" in text
    got = steps(metrics)
    assert [r["iteration"] for r in got] == list(range(1, 61))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(got, whole, strict=True)) < 1e-6


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


def recipe(out: Path, **env: str) -> dict[str, str]:
    """Submit examples/slurm/recipe.sh's chain; returns the job id of each step it submitted."""
    result = subprocess.run(
        ["bash", "examples/slurm/recipe.sh"],
        cwd=ROOT,
        env={**CLEAN_ENV, "OUT": str(out), "PYTHON": PYTHON, "SBATCH_ARGS": "--time=15", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    ids = ok(result).strip().splitlines()[-2].split()
    return {k: v for k, v in (pair.split("=") for pair in ids) if v}


def test_recipe_on_two_nodes_stops_at_a_nan_and_refuses_to_finalize_its_checkpoint(
    slurm, tmp_path, tiny_ckpt, ko_data
):
    """recipe.sh from its train step (FROM=train) on two nodes with a planted NaN (--lr 1e30):
    the train job fails with status 2 and is not requeued, the checkpoint before the NaN is the
    last one saved, and finalize and export never start. Started again at finalize on that
    checkpoint, the finalize job refuses it in one line naming both iterations."""
    two_nodes(slurm)
    out = tmp_path / "recipe"
    out.mkdir()
    (out / "grown").symlink_to(tiny_ckpt)
    flags = ["--train-iters", "3", "--lr", "1e30", "--save-interval", "1", *SMALL]
    jobs = recipe(
        out,
        FROM="train",
        DATA=ko_data,
        TRAIN_SBATCH="--nodes=2 --ntasks-per-node=1 --gpus-per-node=0 --cpus-per-task=1",
        TRAIN_ARGS=" ".join(flags),
    )
    assert list(jobs) == ["train", "finalize", "export"]
    assert "JobState=CANCELLED" in wait_for_job(jobs["export"], timeout=600)
    state = wait_for_job(jobs["train"], timeout=60)
    log = next((out / "logs").glob("train-*.out")).read_text()
    assert "JobState=FAILED" in state and "ExitCode=2:0" in state, state + log[-3000:]
    assert "Restarts=0" in state and "requeueing" not in log
    assert "error: iteration 2: " in log and "its last checkpoint is iteration 1" in log, log
    assert sorted(p.name for p in (out / "trained").glob("iter_*")) == ["iter_0000001"]
    assert "JobState=CANCELLED" in wait_for_job(jobs["finalize"], timeout=60)

    jobs = recipe(out, FROM="finalize")
    assert list(jobs) == ["finalize", "export"]
    assert "JobState=CANCELLED" in wait_for_job(jobs["export"], timeout=600)
    state = wait_for_job(jobs["finalize"], timeout=60)
    log = (out / "logs" / f"finalize-{jobs['finalize']}.out").read_text()
    last = log.strip().splitlines()[-1]
    assert "JobState=FAILED" in state and "ExitCode=2:0" in state, state + log[-3000:]
    assert "iteration 1 of a run with --train-iters 3" in last and "--allow-partial" in last, log
    assert not (out / "final").exists()


# ----------------------------------------------------------------------------- preemption


def slowed(cmd: list[str], delay: float) -> subprocess.Popen:
    """A training process whose saves each wait ``delay`` s before they are published (the
    test hook), so that a test can act during one."""
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**CLEAN_ENV, "MOTIF_TEST_SAVE_DELAY": str(delay)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_saves_the_current_iteration_and_resumes_bitwise(tmp_path, tiny_ckpt, ko_data):
    """SIGTERM mid-run: the iteration finishes and is saved; a second SIGTERM and a SIGUSR1
    during that (slowed) save are recorded, not fatal; the run exits 3 with its checkpoint
    published. Consumers refuse the cut checkpoint in one line; a leftover unfinished save is
    removed at the next start, which resumes to the uninterrupted run's losses."""
    flags = ["--train-iters", "8", "--lr", "1e-2", "--lr-warmup-iters", "2", *SMALL]
    whole = pretrain(tiny_ckpt, tmp_path / "whole", ko_data, *flags)
    metrics, save = tmp_path / "cut.jsonl", tmp_path / "cut"
    cmd = [PYTHON, str(ROOT / "pretrain_motif.py"), "--load", str(tiny_ckpt), "--data-path"]
    cmd += [ko_data, "--save", str(save), "--metrics-file", str(metrics), *flags]
    proc = slowed([*cmd, "--exit-signal-handler", "--distributed-timeout-minutes", "5"], 4)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signal.SIGTERM)
    while time.time() < deadline and proc.poll() is None and not list(save.glob("iter_*.tmp")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before its final save"
    proc.send_signal(signal.SIGTERM)  # during the save: Slurm's TERM after USR1, a scancel
    proc.send_signal(signal.SIGUSR1)
    stdout, stderr = proc.communicate(timeout=300)
    stopped_at = steps(metrics)[-1]["iteration"]
    assert 3 <= stopped_at < 8
    assert proc.returncode == 3, stderr[-3000:]
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"stopped: received SIGTERM at iteration {stopped_at} of --train-iters 8; saved to"
        )
    )
    later = stderr.strip().splitlines()[-1].split("resumes it")[1]
    assert "SIGTERM" in later and "SIGUSR1" in later, later  # recorded during the save
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == str(stopped_at)
    assert "received SIGTERM" in stdout and not list(save.glob("*.tmp"))
    assert stop_reason(save) == "received SIGTERM"  # how pretrain.sbatch tells a stop

    refused = run(["tools/convert_hf.py", "export", "--load", str(save), "--out", str(tmp_path)])
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        f"iteration {stopped_at} of a run with --train-iters 8" in last
        and "--allow-partial" in last
    )
    finalize = ["tools/expand_checkpoint.py", "--load", str(save), "--save", str(tmp_path / "f")]
    refused = run([*finalize, "--finalize"])
    assert refused.returncode == 2 and "--allow-partial" in refused.stderr.strip().splitlines()[-1]
    sft = ["posttrain_motif.py", "sft", "--load", str(save), "--sft-data", "x", *SMALL]
    refused = run([*sft, "--save", str(tmp_path / "sft")])
    assert refused.returncode == 2 and "--allow-partial" in refused.stderr.strip().splitlines()[-1]
    export = ["tools/convert_hf.py", "export", "--load", str(save), "--out", str(tmp_path / "hf")]
    ok(run([*export, "--allow-partial"]))

    (save / "iter_0000009.tmp").mkdir()  # a save killed before it was published
    resumed = subprocess.run(cmd, cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True)
    assert "removed iter_0000009.tmp" in ok(resumed) and not (save / "iter_0000009.tmp").exists()
    assert steps(metrics) == whole


def test_a_signal_while_a_finished_run_shuts_down_is_not_fatal():
    """Python restores the default (fatal) actions as it shuts down; with
    --exit-signal-handler the signals are ignored from the exit on, so Slurm's warning just after
    the last save cannot kill a complete run (exit 0, not 138). The check sits in an exit hook
    registered first, so it runs last, after the trainer's own."""
    code = (
        "import atexit, os, signal, sys\n"
        "def late():\n"
        "    os.kill(os.getpid(), signal.SIGUSR1); os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print(signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN, flush=True)\n"
        "atexit.register(late)\n"
        "from motif_megatron.training import preemption\n"
        "preemption.catch(['--exit-signal-handler'])\n"
    )
    done = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert (done.returncode, done.stdout) == (0, "True\n"), done.stderr


def test_exit_duration_saves_and_stops(tmp_path, tiny_ckpt, ko_data):
    save = tmp_path / "run"
    flags = ["--train-iters", "6", "--exit-duration-in-mins", "0"]
    got = pretrain(tiny_ckpt, save, ko_data, *flags, cut=True)
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
    cut = ["--save-interval", "4", "--exit-interval", "4"]
    pretrain(tiny_ckpt, save, ko_data, *flags, *cut, nproc=2, cut=True)
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
    # 4 -> 8 iterations stayed inside one epoch of the shards (the same order, checked by its
    # digest); 100,000 would need more epochs, which Megatron shuffles together: refused
    longer = [*base[: base.index("--train-iters") + 1], "100000", *SCHEDULE]
    refused = run([*longer, "--override-opt_param-scheduler"])
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "trained with --train-iters 8" in last, last


def test_saves_spread_over_data_parallel_ranks_and_async_saves_resume(
    tmp_path, tiny_ckpt, ko_data, tp1_reference
):
    """At DP=2 both ranks write half of each checkpoint (Megatron-LM's fully parallel save);
    with --async-save a run cut at iteration 2 publishes that save before it exits, and
    resuming (fully parallel load, async saves) ends at TP1's losses."""
    save = tmp_path / "dp2"
    flags = [*TP1_FLAGS, "--save-interval", "2", "--async-save"]
    first = pretrain(tiny_ckpt, save, ko_data, *flags, "--exit-interval", "2", nproc=2, cut=True)
    assert [r["iteration"] for r in first] == [1, 2]
    written = {rank: 0 for rank in (0, 1)}
    for shard in (save / "iter_0000002").glob("__*_*.distcp"):
        written[int(shard.name[2:].split("_")[0])] += shard.stat().st_size
    assert min(written.values()) > 0.4 * sum(written.values()), written
    resumed = pretrain(tiny_ckpt, save, ko_data, *flags, "--ckpt-fully-parallel-load", nproc=2)
    assert [r["iteration"] for r in resumed] == [1, 2, 3, 4]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    reference = [r["loss"] for r in steps(tp1_reference)]
    assert max(abs(a["loss"] - b) for a, b in zip(resumed, reference, strict=True)) < 1e-5


def test_a_nan_stops_the_run_before_it_is_saved(tmp_path, tiny_ckpt, ko_data):
    """--check-for-nan-in-loss-and-grad (on by default): at --lr 1e30 the first update puts the
    weights near 1e30 and the second iteration overflows; the run stops there in one line,
    iteration 1's checkpoint the last on disk. Without the check it trains on NaN."""
    flags = ["--train-iters", "3", "--lr", "1e30", "--save-interval", "1"]
    args = ["pretrain_motif.py", "--load", str(tiny_ckpt), "--data-path", ko_data, *SMALL]
    save = tmp_path / "checked"
    result = run([*args, *flags, "--save", str(save), "--metrics-file", f"{save}.jsonl"])
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith("error: iteration 2: ") and "nan" in last, last
    assert "its last checkpoint is iteration 1" in last, last
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "1"
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000001"]
    assert [r["iteration"] for r in records(Path(f"{save}.jsonl"))] == [1]
    assert stop_reason(save) is None  # a periodic save: pretrain.sbatch never requeues this
    unchecked = pretrain_records(
        tiny_ckpt, tmp_path / "unchecked", ko_data, *flags, "--no-check-for-nan-in-loss-and-grad"
    )
    assert [r["iteration"] for r in unchecked] == [1, 2, 3]
    assert any(r["grad_norm"] != r["grad_norm"] for r in unchecked[1:])  # NaN


def test_keep_latest_checkpoints(tmp_path, tiny_ckpt, ko_data):
    """Retention keeps the newest two saves and also removes the unfinished save of a killed
    writer that appears mid-run (planted after iteration 1; each save slowed by the test
    hook so that later ones remain)."""
    save, metrics = tmp_path / "run", tmp_path / "run.jsonl"
    flags = ["--train-iters", "5", "--save-interval", "1", "--keep-latest-checkpoints", "2"]
    cmd = [PYTHON, "pretrain_motif.py", "--load", str(tiny_ckpt), "--data-path", ko_data]
    cmd += ["--save", str(save), "--metrics-file", str(metrics), *SMALL, *flags]
    proc = slowed(cmd, 1)
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and records(metrics)):
        time.sleep(0.02)
    (save / "iter_0000099.tmp").mkdir(parents=True)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert "iter_0000099.tmp" in stdout and not (save / "iter_0000099.tmp").exists(), stdout
    assert sorted(p.name for p in save.glob("iter_*")) == ["iter_0000004", "iter_0000005"]
    assert (save / "latest_checkpointed_iteration.txt").read_text().strip() == "5"


# ----------------------------------------------------------------------------- launchers

LAUNCHERS = ["python", "torchrun-1", "torchrun-2", "srun-2"]


def launch(launcher: str, script: str, *args: str) -> subprocess.CompletedProcess:
    """``script`` started as users start it: plain python, torchrun with 1 or 2 processes, or
    ``srun -n 2`` on the local Slurm cluster."""
    if launcher == "python":
        return run([script, *args], fresh=True)
    if launcher.startswith("torchrun"):
        return run([script, *args], nproc=int(launcher[-1]), torchrun=True)
    cmd = ["srun", "-n", "2", "--kill-on-bad-exit=1", "--time=10", PYTHON, script, *args]
    return subprocess.run(cmd, cwd=ROOT, env=CLEAN_ENV, capture_output=True, text=True, timeout=600)


def entry_points(launcher: str, tmp: Path, tiny_hf, tiny_ckpt) -> dict:
    """posttrain_motif.py (SFT), tools/check_equivalence.py and tools/evaluate.py under one
    launcher, at TP=2 when it starts two processes; returns their numbers."""
    tp = ["--tp", "2"] if launcher.endswith("2") else []
    hf = ["--hf-dir", str(tiny_hf), "--load", str(tiny_ckpt), "--atol", "1e-4"]
    diff = max_abs_diff(ok(launch(launcher, "tools/check_equivalence.py", *hf, *tp)))
    corpus, sft = tmp / "ko.jsonl", tmp / "sft.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": f"한국어 문장 {i}입니다."}) + "\n" for i in range(4))
    )
    sft.write_text("\n".join([json.dumps({"prompt": "안녕?", "completion": "안녕하세요."})] * 8))
    evaluate = ["--load", f"m={tiny_ckpt}", "--text", f"ko={corpus}", "--out", str(tmp / "e")]
    ok(launch(launcher, "tools/evaluate.py", *evaluate, *tp))
    report = json.loads((tmp / "e/evaluation.json").read_text())
    post = ["sft", "--load", str(tiny_ckpt), "--save", str(tmp / "s"), "--sft-data", str(sft)]
    post += ["--train-iters", "2", "--lr", "1e-3", "--metrics-file", str(tmp / "s.jsonl"), *SMALL]
    post += ["--tensor-model-parallel-size", "2"] if tp else []
    ok(launch(launcher, "posttrain_motif.py", *post))
    losses = [r["loss"] for r in records(tmp / "s.jsonl") if "loss" in r]
    return {"diff": diff, "ppl": report["checkpoints"]["m"]["ko"]["ppl"], "sft": losses}


@pytest.fixture(scope="module")
def plain_python(tmp_path_factory, tiny_hf, tiny_ckpt) -> dict:
    return entry_points("python", tmp_path_factory.mktemp("python"), tiny_hf, tiny_ckpt)


@pytest.mark.parametrize("launcher", LAUNCHERS[1:])
def test_entry_points_start_under_every_launcher(
    request, launcher, tmp_path, tiny_hf, tiny_ckpt, plain_python
):
    """Each entry point but pretrain_motif.py (tested under each launcher above) started with
    torchrun (1 and 2 processes) and srun gives plain python's numbers."""
    if launcher.startswith("srun"):
        request.getfixturevalue("slurm")
    got = entry_points(launcher, tmp_path, tiny_hf, tiny_ckpt)
    assert plain_python["diff"] < 1e-4 and got["diff"] < 1e-4
    assert got["ppl"] == pytest.approx(plain_python["ppl"], rel=1e-5)
    assert len(got["sft"]) == 2
    assert got["sft"] == pytest.approx(plain_python["sft"], abs=1e-5)
