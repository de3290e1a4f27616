"""HF <-> Megatron conversion: logits equal to HF at TP=1/TP=2/PP=2, bitwise round trips, resharding."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import max_abs_diff, ok, run
from safetensors.torch import load_file


@pytest.mark.compat
@pytest.mark.parametrize(("nproc", "tp", "pp"), [(1, 1, 1), (2, 2, 1), (2, 1, 2)])
def test_imported_logits_equal_hf(tiny_hf, tiny_ckpt, nproc, tp, pp):
    out = ok(
        run(
            [
                "tools/check_equivalence.py",
                "--hf-dir",
                str(tiny_hf),
                "--load",
                str(tiny_ckpt),
                "--tp",
                str(tp),
                "--pp",
                str(pp),
                "--atol",
                "1e-4",
            ],
            nproc=nproc,
        )
    )
    assert max_abs_diff(out) < 1e-4


def test_equivalence_check_fails_for_a_different_model(tmp_path, tiny_ckpt, llama3_tokenizer):
    from motif_megatron.model.presets import random_hf_model

    other_hf = random_hf_model(tmp_path / "other", "tiny", llama3_tokenizer, seed=1)
    other = tmp_path / "other_ckpt"
    ok(run(["tools/convert_hf.py", "import", "--hf-dir", str(other_hf), "--out", str(other)]))
    result = run(
        [
            "tools/check_equivalence.py",
            "--load",
            str(tiny_ckpt),
            "--load-b",
            str(other),
            "--atol",
            "1e-4",
        ]
    )
    assert result.returncode == 1
    assert max_abs_diff(result.stdout) > 1e-2


def _export(ckpt, out, *extra):
    ok(run(["tools/convert_hf.py", "export", "--load", str(ckpt), "--out", str(out), *extra]))
    return out


def _tensors(hf_dir):
    tensors = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


@pytest.mark.compat
def test_import_export_is_bitwise(tmp_path, tiny_hf, tiny_ckpt):
    out = _export(tiny_ckpt, tmp_path / "hf")
    before, after = _tensors(tiny_hf), _tensors(out)
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype, name
        assert torch.equal(after[name], tensor), name
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["num_key_value_heads"] == 2
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 128001


def test_export_loads_offline_in_transformers(tmp_path, tiny_hf, tiny_ckpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = _export(tiny_ckpt, tmp_path / "hf", "--max-shard-size-gb", "0.01")
    assert (
        len(list(out.glob("*.safetensors"))) > 1
        and (out / "model.safetensors.index.json").is_file()
    )
    tokenizer = AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = tokenizer("안녕하세요, 한국어 모델입니다. Hello world!", return_tensors="pt").input_ids
    assert ids[0, 0].item() == 128000  # BOS from the real Llama-3 tokenizer
    original = AutoModelForCausalLM.from_pretrained(tiny_hf, local_files_only=True)
    exported = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(original(ids).logits, exported(ids).logits)


def test_bf16_stays_bf16(tmp_path, llama3_tokenizer):
    from motif_megatron.checkpoint.dist import CheckpointReader
    from motif_megatron.model.presets import random_hf_model

    hf = random_hf_model(tmp_path / "bf16", "tiny", llama3_tokenizer, seed=2, dtype=torch.bfloat16)
    ckpt = tmp_path / "ckpt"
    ok(run(["tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(ckpt)]))
    assert set(CheckpointReader(ckpt).dtypes.values()) == {torch.bfloat16}
    out = _export(ckpt, tmp_path / "out")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    before, after = _tensors(hf), _tensors(out)
    assert all(
        after[k].dtype == torch.bfloat16 and torch.equal(after[k], v) for k, v in before.items()
    )


def _one_step(ckpt, nproc=1, *extra):
    out = ok(run(["tests/scripts/train_one_step.py", "--load", str(ckpt), *extra], nproc=nproc))
    return json.loads(out.strip().splitlines()[-1])


def test_one_optimizer_step_same_loss_at_tp1_and_tp2_and_reshards(tmp_path, tiny_ckpt):
    tp1 = _one_step(tiny_ckpt)
    saved = tmp_path / "tp2_step1"
    tp2 = _one_step(tiny_ckpt, 2, "--tp", "2", "--save", str(saved))
    assert tp1["loss_after"] < tp1["loss_before"]  # the update really trained
    for key in ("loss_before", "loss", "loss_after", "grad_norm"):
        assert tp2[key] == pytest.approx(tp1[key], abs=1e-5), key
    # a checkpoint saved at TP=2 loads at TP=1 and PP=2 and evaluates to the TP=2 model's loss
    assert _one_step(saved, 1, "--eval-only")["loss_before"] == pytest.approx(
        tp2["loss_after"], abs=1e-5
    )
    # data parallel: both replicas see the same batch, so DP=2 must reproduce TP=1 exactly
    dp2 = _one_step(tiny_ckpt, 2)
    for key in ("loss_before", "loss", "loss_after", "grad_norm"):
        assert dp2[key] == pytest.approx(tp1[key], abs=1e-5), key
    assert _one_step(saved, 2, "--eval-only", "--pp", "2", "--micro-batch-size", "1")[
        "loss_before"
    ] == pytest.approx(tp2["loss_after"], abs=1e-5)


def test_tied_embeddings_across_pipeline_stages(tmp_path, llama3_tokenizer):
    from motif_megatron.model.presets import random_hf_model

    hf = random_hf_model(
        tmp_path / "tied", "tiny", llama3_tokenizer, seed=3, tie_word_embeddings=True
    )
    ckpt = tmp_path / "ckpt"
    ok(run(["tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(ckpt)]))
    out = ok(
        run(
            ["tools/check_equivalence.py", "--hf-dir", str(hf), "--load", str(ckpt), "--pp", "2"],
            nproc=2,
        )
    )
    assert max_abs_diff(out) < 1e-4
    exported = _export(ckpt, tmp_path / "out")
    assert "lm_head.weight" not in _tensors(exported)
    assert json.loads((exported / "config.json").read_text())["tie_word_embeddings"] is True
