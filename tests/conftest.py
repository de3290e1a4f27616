"""Shared fixtures: the real Llama-3 tokenizer, a random tiny HF Llama, and command runners.

Multi-process tests launch ``torchrun --nproc_per_node=2`` on gloo, exactly as users do.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from forkserver import ForkServer

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(PYTHON).parent / "torchrun")


LAUNCHER_VARS = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
SCRIPT_ENV = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
SCRIPT_ENV.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
_forkserver: ForkServer | None = None


def run(
    args: list[str],
    nproc: int = 1,
    timeout: int = 600,
    torchrun: bool | None = None,
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run a project script from the repository root: under torchrun when ``nproc`` > 1 (or
    ``torchrun=True``), else as ``python script ...``, forked from the session's pre-imported
    fork server unless ``fresh`` asks for a new interpreter."""
    global _forkserver
    script, *rest = args
    if nproc > 1 if torchrun is None else torchrun:
        cmd = [TORCHRUN, f"--nproc_per_node={nproc}", "--standalone", str(ROOT / script), *rest]
    elif fresh:
        cmd = [PYTHON, str(ROOT / script), *rest]
    else:
        _forkserver = _forkserver or ForkServer(SCRIPT_ENV)
        return _forkserver.run([str(ROOT / script), *rest], ROOT, SCRIPT_ENV, timeout)
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=SCRIPT_ENV
    )


def pytest_collection_modifyitems(items) -> None:
    """Tests that need the local Slurm cluster are marked ``slurm`` (``-m "not slurm"`` leaves
    them out)."""
    for item in items:
        if "slurm" in item.fixturenames:
            item.add_marker(pytest.mark.slurm)


def pytest_sessionfinish(session, exitstatus) -> None:
    if _forkserver is not None:
        _forkserver.close()


SMALL = ["--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "4"]
TP1_FLAGS = ["--train-iters", "4", "--lr", "1e-2"]
WALL_CLOCK = ("tokens_per_s", "tflops_per_device", "mfu", "timers_ms")
"""The fields of a metrics record measured on the clock (a rerun's differ)."""


def without_wall_clock(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in WALL_CLOCK}


def pretrain_records(
    load,
    save,
    data,
    *flags: str,
    nproc: int = 1,
    torchrun: bool | None = None,
    cut: bool = False,
) -> list[dict]:
    """``pretrain_motif.py`` at the small shapes with ``SAVE.jsonl`` metrics; returns its records.
    ``cut``: the run must stop before ``--train-iters`` (exit status 3)."""
    metrics = Path(f"{save}.jsonl")
    args = ["pretrain_motif.py", "--load", str(load), "--save", str(save), "--data-path", data]
    cmd = [*args, "--metrics-file", str(metrics), *SMALL, *flags]
    (stopped if cut else ok)(run(cmd, nproc=nproc, torchrun=torchrun))
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return result.stdout


def stopped(result: subprocess.CompletedProcess) -> str:
    """A run stopped before ``--train-iters`` with its checkpoint published: exit status 3
    (torchrun reports a worker's 3 as its own failure, status 1, and may SIGTERM the workers
    still tearing down); returns the stop line."""
    statuses = set(re.findall(r"exitcode\s*: (-?\d+)", result.stderr))
    by_torchrun = result.returncode == 1 and "3" in statuses and statuses <= {"3", "-15"}
    assert result.returncode == 3 or by_torchrun, (
        f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
    return next(x for x in result.stderr.splitlines() if x.startswith("stopped: "))


def max_abs_diff(stdout: str) -> float:
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"max_abs_diff=(\S+)", last)
    assert match, f"last line is not max_abs_diff=...: {last!r}"
    return float(match.group(1))


def bundled_corpus(tmp_path: Path, name: str = "ko-libreoffice-help", n: int | None = None):
    """Decompress a bundled corpus (first ``n`` lines) to JSONL; returns (path, texts)."""
    import json
    import lzma

    raw = lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes()).decode()
    lines = raw.split("\n")[:-1][:n]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, [json.loads(line)["text"] for line in lines]


@pytest.fixture(scope="session")
def llama3_tokenizer(tmp_path_factory) -> Path:
    from motif_megatron.tokenizer.bundled import unpack

    return unpack("llama3", tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, llama3_tokenizer) -> Path:
    """A random-weight tiny Llama (GQA, Llama-3 RoPE scaling) with the real Llama-3 tokenizer."""
    from motif_megatron.model.presets import random_hf_model

    return random_hf_model(tmp_path_factory.mktemp("hf") / "tiny", "tiny", llama3_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_hf) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    ok(
        run(
            [
                "tools/convert_hf.py",
                "import",
                "--hf-dir",
                str(tiny_hf),
                "--out",
                str(out),
                "--tp",
                "1",
                "--pp",
                "1",
            ]
        )
    )
    return out


@pytest.fixture(scope="session")
def expanded(tmp_path_factory, llama3_tokenizer):
    """A Korean BPE trained on 3/4 of the bundled Korean pages and the Llama-3 tokenizer expanded
    with it; returns (folder with ko/ and expanded/, held-out Korean texts)."""
    from motif_megatron.data.filters.text import HangulRatioFilter

    tmp = tmp_path_factory.mktemp("tok")
    _, texts = bundled_corpus(tmp, "ko-libreoffice-help")
    korean = [t for t in texts if HangulRatioFilter.ratio(t) > 0.3]
    train, held_out = korean[: len(korean) * 3 // 4], korean[len(korean) * 3 // 4 :]
    train_file = tmp / "train.jsonl"
    train_file.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in train)
    )
    ok(
        run(
            [
                "tools/train_tokenizer.py",
                "--input",
                str(train_file),
                "--vocab-size",
                "6000",
                "--out",
                str(tmp / "ko"),
                "--base",
                str(llama3_tokenizer),
            ]
        )
    )
    ok(
        run(
            [
                "tools/expand_tokenizer.py",
                "--base",
                str(llama3_tokenizer),
                "--new",
                str(tmp / "ko"),
                "--corpus",
                str(train_file),
                "--min-count",
                "10",
                "--out",
                str(tmp / "expanded"),
            ]
        )
    )
    return tmp, held_out


def expand(load: str | Path, save: str | Path, *flags: str) -> str | Path:
    """``tools/expand_checkpoint.py --load load --save save flags...``; returns ``save``."""
    ok(run(["tools/expand_checkpoint.py", "--load", str(load), "--save", str(save), *flags]))
    return save


def finalize(grown: Path, final: Path) -> float:
    """``expand_checkpoint.py --finalize`` (masks at 1 dropped); returns the max |logit diff|
    between the masked and the finalized model."""
    ok(
        run(
            ["tools/expand_checkpoint.py", "--load", str(grown), "--save", str(final), "--finalize"]
        )
    )
    assert "msg" not in json.loads((final / "motif_model.json").read_text())["growth"]
    compare = ["tools/check_equivalence.py", "--load", str(grown), "--load-b", str(final)]
    return max_abs_diff(ok(run([*compare, "--atol", "1e-5"])))


def shard(tmp: Path, tokenizer: Path, name: str, corpus: Path | None = None) -> str:
    """A Megatron shard of ``tokenizer`` over ``corpus`` (default: the bundled Korean pages);
    returns its prefix."""
    corpus = corpus or bundled_corpus(tmp, "ko-libreoffice-help")[0]
    prefix = tmp / name
    ok(
        run(
            [
                "tools/preprocess_data.py",
                "--input",
                str(corpus),
                "--output-prefix",
                str(prefix),
                "--tokenizer-model",
                str(tokenizer),
                "--append-eod",
            ]
        )
    )
    return f"{prefix}_text_document"


GROWN = ("--depth-add", "2", "--init", "subword-mean")
WIDENED = (
    *("--depth-add", "2", "--hidden-size", "80", "--ffn-hidden-size", "224"),
    *("--num-attention-heads", "10"),
)


@pytest.fixture(scope="session")
def grown(tmp_path_factory, tiny_ckpt, expanded) -> Path:
    """The tiny checkpoint grown as the recipe grows it: +2 LlamaPro blocks and the expanded
    Korean vocabulary (``GROWN``)."""
    out = tmp_path_factory.mktemp("grown") / "ck"
    return expand(tiny_ckpt, out, *GROWN, "--tokenizer", str(expanded[0] / "expanded"))


@pytest.fixture(scope="session")
def widened(tmp_path_factory, tiny_ckpt, expanded) -> Path:
    """The tiny checkpoint grown in depth, width (MSG, masks at 0) and vocabulary at once
    (``WIDENED``): Motif's shape change."""
    out = tmp_path_factory.mktemp("widened") / "ck"
    return expand(tiny_ckpt, out, *WIDENED, "--tokenizer", str(expanded[0] / "expanded"))


@pytest.fixture(scope="session")
def ko_data(tmp_path_factory, tiny_hf) -> str:
    """Korean shards of the Llama-3 tokenizer (the tiny model's own)."""
    return shard(tmp_path_factory.mktemp("ko"), tiny_hf, "ko")


@pytest.fixture(scope="session")
def tp1_reference(tmp_path_factory, tiny_ckpt, ko_data) -> list[dict]:
    """The one-process run every parallel layout and launcher is compared with (``TP1_FLAGS``):
    its metrics records."""
    save = tmp_path_factory.mktemp("tp1") / "run"
    return pretrain_records(tiny_ckpt, save, ko_data, *TP1_FLAGS)


SLURM_NODES = int(os.environ.get("SLURM_NODES", "2"))


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The two-node Slurm cluster of ``examples/slurm/local_cluster.sh --nodes 2`` (started if
    needed; the ``SLURM_NODES`` environment variable picks another size), started
    once for all pytest-xdist workers: the first to take the lock runs the script and records
    its outcome, the others read it (a second run while jobs are queued could restart it)."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is popen-gwN in the session's
        shared = shared.parent
    outcome = shared / "slurm.json"
    with open(shared / "slurm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not outcome.exists():
            script = ROOT / "examples/slurm/local_cluster.sh"
            result = subprocess.run(
                ["bash", str(script), "--nodes", str(SLURM_NODES)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            message = (result.stderr or result.stdout).strip()[-300:]
            outcome.write_text(json.dumps({"ok": result.returncode == 0, "message": message}))
    state = json.loads(outcome.read_text())
    if not state["ok"]:
        pytest.skip(f"Slurm could not start: {state['message']}")
    return shutil.which("srun")
