"""Every path places its model, microbatches and collective tensors on the device: the project's
commands run under ``tests/scripts/device_audit.py``, which fails at the first tensor that did
not go through ``motif_megatron.device`` (see its docstring for why a device comparison alone
could not fail on a CPU)."""

from __future__ import annotations

import json

import pytest
from conftest import ok, run
from test_kto import write_kto
from test_sft import write_sft

AUDIT = "tests/scripts/device_audit.py"
SMALL = ["--seq-length", "32", "--micro-batch-size", "1", "--global-batch-size", "4"]


def audited(args: list[str], nproc: int = 1) -> str:
    out = ok(run([AUDIT, *args], nproc=nproc))
    assert "device audit: ok" in out
    return out


def test_the_audit_catches_a_host_tensor(tmp_path):
    """The negative control: a report made on the host and handed to the DP all-reduce."""
    script = tmp_path / "host_tensor.py"
    script.write_text(
        "import torch\n"
        "from motif_megatron import parallel\n"
        "from motif_megatron.model.schedule import reduce_reports\n"
        "parallel.initialize(parallel.ParallelConfig(1, 1))\n"
        "reduce_reports([{'lm loss': torch.tensor([2.0, 4.0])}])\n"
    )
    result = run([AUDIT, str(script)])
    assert result.returncode != 0
    assert "a tensor handed to dist.all_reduce did not go through" in result.stderr


@pytest.mark.parametrize(
    "layout", [["--pipeline-model-parallel-size", "2"], ["--tensor-model-parallel-size", "2"]]
)
def test_pretraining_with_eval_and_exit_checks(tmp_path, tiny_ckpt, ko_data, layout):
    metrics = tmp_path / "m.jsonl"
    audited(
        [
            "pretrain_motif.py",
            *("--load", str(tiny_ckpt), "--save", str(tmp_path / "run"), "--data-path", ko_data),
            *("--train-iters", "3", "--eval-interval", "2", "--eval-iters", "1"),
            *("--exit-duration-in-mins", "600", "--metrics-file", str(metrics)),
            *SMALL,
            *layout,
        ],
        nproc=2,
    )
    assert [json.loads(x).get("iteration") for x in metrics.read_text().splitlines()][-1] == 3


def test_packed_sft(tmp_path, tiny_ckpt):
    audited(
        [
            "posttrain_motif.py",
            "sft",
            *("--load", str(tiny_ckpt), "--save", str(tmp_path / "s")),
            *("--sft-data", str(write_sft(tmp_path / "sft.jsonl", 8, bad=False))),
            *("--train-iters", "2", "--neftune-alpha", "5", "--seq-length", "64"),
            *("--micro-batch-size", "2", "--global-batch-size", "4"),
        ]
    )


def test_kto_with_its_reference_pass(tmp_path, tiny_ckpt):
    write_kto(tmp_path / "kto.jsonl", 8)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "안녕?"}\n')
    audited(
        [
            "posttrain_motif.py",
            "kto",
            *("--load", str(tiny_ckpt), "--save", str(tmp_path / "k")),
            *("--kto-data", str(tmp_path / "kto.jsonl"), "--safety-prompts", str(prompts)),
            *("--train-iters", "2", "--seq-length", "32"),
            *("--micro-batch-size", "2", "--global-batch-size", "4"),
        ]
    )


def test_equivalence_against_hf_at_tp2(tiny_ckpt, tiny_hf):
    check = ["tools/check_equivalence.py", "--load", str(tiny_ckpt), "--hf-dir", str(tiny_hf)]
    audited([*check, "--tp", "2", "--atol", "1e-4"], nproc=2)


def test_evaluation_and_the_lm_eval_adapter(tmp_path, tiny_ckpt):
    pytest.importorskip("lm_eval")
    from conftest import bundled_corpus
    from test_benchmarks import write_benchmarks

    corpus, _ = bundled_corpus(tmp_path, "ko-libreoffice-help", n=2)
    tasks = ["--tasks", "local_kobest_copa", "--benchmark-dir", str(write_benchmarks(tmp_path, 2))]
    audited(
        [
            "tools/evaluate.py",
            *("--load", f"tiny={tiny_ckpt}", "--text", f"ko={corpus}"),
            *tasks,
            *("--out", str(tmp_path / "ev")),
        ]
    )
