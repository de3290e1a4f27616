"""Bad input gets one clear ``error:`` line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, run


def _assert_one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_missing_hf_dir(tmp_path):
    result = run(
        [
            "tools/convert_hf.py",
            "import",
            "--hf-dir",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _assert_one_line_error(result, "config.json not found")


def test_not_a_llama_config(tmp_path, tiny_hf):
    hf = shutil.copytree(tiny_hf, tmp_path / "gpt2")
    config = json.loads((hf / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (hf / "config.json").write_text(json.dumps(config))
    result = run(
        ["tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(tmp_path / "o")]
    )
    _assert_one_line_error(result, "not a Llama config")


@pytest.mark.parametrize(
    ("flag", "value", "needle"),
    [
        ("--tp", "3", "num_key_value_heads=2 is not divisible by tp=3"),
        ("--pp", "3", "num_hidden_layers=4 is not divisible by pp=3"),
    ],
)
def test_impossible_parallel_layout(tmp_path, tiny_hf, flag, value, needle):
    result = run(
        [
            "tools/convert_hf.py",
            "import",
            "--hf-dir",
            str(tiny_hf),
            "--out",
            str(tmp_path / "o"),
            flag,
            value,
        ]
    )
    _assert_one_line_error(result, needle)
    assert not (tmp_path / "o").exists()  # refused before any work


def test_missing_checkpoint(tmp_path):
    result = run(
        ["tools/convert_hf.py", "export", "--load", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    _assert_one_line_error(result, "motif_model.json")


def test_world_size_not_divisible(tiny_ckpt, tiny_hf):
    result = run(
        [
            "tools/check_equivalence.py",
            "--hf-dir",
            str(tiny_hf),
            "--load",
            str(tiny_ckpt),
            "--tp",
            "2",
        ]
    )
    _assert_one_line_error(result, "world size 1 is not divisible by tp*pp")


ENTRY_POINTS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*ROOT.glob("tools/*.py"), ROOT / "pretrain_motif.py", ROOT / "posttrain_motif.py"]
)


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_every_entry_point_answers_help_in_a_fresh_interpreter(script):
    """Each command starts as a script in a new interpreter (not the tests' fork server) and
    describes itself."""
    result = run([script, "--help"], fresh=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: "), result.stdout[:300]
