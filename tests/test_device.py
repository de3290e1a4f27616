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
from test_trainer import grown_data  # noqa: F401 (a fixture)

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
    assert "device audit: a host tensor was handed to dist.all_reduce" in result.stderr


def test_the_audit_fails_an_op_that_mixes_host_and_device_memory(tmp_path):
    """The planted mixes: a host mask times a device gradient (computed in backward, where
    the device is known only from the parameter's placement), with the op and the line named;
    a host 0-dim scalar and a ``.to(device)`` copy of the mask are what a GPU accepts."""
    script = tmp_path / "mix.py"
    script.write_text(
        "import sys, torch\n"
        "from motif_megatron import device\n"
        "layer = device.module_to_device(torch.nn.Linear(4, 3))\n"
        "x = device.to_device(torch.randn(2, 4))\n"
        "layer(x).sum().backward()\n"
        "mask = torch.tensor([1.0, 0.0, 1.0]).unsqueeze(1)\n"
        "layer.weight.grad.mul_(torch.tensor(0.5)).mul_(mask.to(layer.weight.device))\n"
        "layer.weight.grad.data.mul_(mask.cpu().to(x.device))\n"
        "if sys.argv[1] == 'mix':\n"
        "    layer.weight.grad.mul_(mask)  # planted\n"
    )
    assert "device audit: ok" in ok(run([AUDIT, str(script), "ok"]))
    result = run([AUDIT, str(script), "mix"])
    assert result.returncode != 0
    assert "aten.mul_.Tensor mixes device tensors with host tensors (3, 1)" in result.stderr
    assert 'mix.py", line 10' in result.stderr


@pytest.mark.parametrize(
    "layout", [["--pipeline-model-parallel-size", "2"], ["--tensor-model-parallel-size", "2"]]
)
def test_pretraining_with_eval_and_exit_checks(tmp_path, tiny_ckpt, ko_data, layout):
    metrics = tmp_path / "m.jsonl"
    out = audited(
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
    assert "on the CPU these fusions are off (CUDA kernels): rope_fusion, bias_swiglu" in out


def test_row_masked_stages_and_the_msg_ramp(tmp_path, widened, grown_data):  # noqa: F811
    """The recipe's stage on the widened model: new blocks and new vocabulary rows (EEVE's
    gradient row masks) while the MSG masks ramp."""
    audited(
        [
            "pretrain_motif.py",
            *("--load", str(widened), "--save", str(tmp_path / "run"), "--data-path", grown_data),
            *("--stage", "llama-pro+eeve-3", "--msg-ramp-iters", "2", "--train-iters", "3"),
            *SMALL,
        ]
    )


@pytest.mark.parametrize("qlora", [[], ["--qlora"]], ids=["lora", "qlora"])
def test_lora_and_qlora(tmp_path, tiny_ckpt, ko_data, qlora):
    if qlora:
        pytest.importorskip("bitsandbytes")
    audited(
        [
            "pretrain_motif.py",
            *("--load", str(tiny_ckpt), "--save", str(tmp_path / "run"), "--data-path", ko_data),
            *("--stage", "lora", "--lora-rank", "4", "--train-iters", "2", *qlora),
            *SMALL,
        ]
    )


def test_the_lm_eval_adapter_and_generation(tiny_ckpt):
    """``loglikelihood``, ``loglikelihood_rolling`` and ``generate_until`` (greedy inference)."""
    pytest.importorskip("lm_eval")
    audited(["tests/scripts/lm_eval_requests.py", str(tiny_ckpt)])


def test_vocab_init_report(tmp_path, tiny_ckpt, expanded):
    from conftest import bundled_corpus

    text, _ = bundled_corpus(tmp_path, "ko-libreoffice-help", n=2)
    audited(
        [
            "tools/vocab_init_report.py",
            *("--load", str(tiny_ckpt), "--tokenizer", str(expanded[0] / "expanded")),
            *("--text", str(text), "--out", str(tmp_path / "rep"), "--methods", "mean"),
        ]
    )


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
