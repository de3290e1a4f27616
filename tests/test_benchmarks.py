"""The local lm-eval tasks on generated files in the hub datasets' own schemas: every task loads
and scores, the ``motif`` model on the Megatron checkpoint scores as lm-eval's ``hf`` model on
the exported weights, and missing files fail in one line before any model loads."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import expand, ok, run

pytest.importorskip("lm_eval")

KO = [
    "서울은 한국의 수도이다",
    "바다는 넓고 푸르다",
    "학생들이 도서관에서 공부한다",
    "봄에는 꽃이 핀다",
]
EN = ["Paris is in France", "Water boils at 100 degrees", "Cats like to sleep", "The sun is a star"]


def _records(path: str, i: int, rng: random.Random) -> dict:
    """One record of ``path`` (relative to the benchmark folder) as the hub dataset has it."""
    ko, en = rng.choice(KO), rng.choice(EN)
    options = {c: f"{rng.choice(KO)} {c}" for c in "ABCDE"}
    if path.startswith("kobest/boolq"):
        return {"paragraph": ko, "question": f"{ko}인가?", "label": i % 2}
    if path.startswith("kobest/copa"):
        q = ["원인", "결과"][i % 2]
        return {
            "premise": ko,
            "question": q,
            "alternative_1": KO[0],
            "alternative_2": KO[1],
            "label": i % 2,
        }
    if path.startswith("kobest/hellaswag"):
        return {"context": ko, **{f"ending_{k}": KO[k - 1] for k in range(1, 5)}, "label": i % 4}
    if path.startswith("kobest/sentineg"):
        return {"sentence": ko, "label": i % 2}
    if path.startswith("kobest/wic"):
        return {"word": "눈", "context_1": ko, "context_2": rng.choice(KO), "label": i % 2}
    if path.startswith("kmmlu"):
        return {
            "question": f"{ko}?",
            "answer": i % 4 + 1,
            **{c: options[c] for c in "ABCD"},
            "Category": "Accounting",
            "Human Accuracy": 0.3,
        }
    if path.startswith("haerae"):
        query = f"다음 중 옳은 것은? {ko}\n" + "\n".join(f"({c}) {options[c]}" for c in "ABCDE")
        return {"query": query, "answer": f"({'ABCDE'[i % 5]})"}
    if path.startswith("kormedmcqa"):
        return {
            "subject": "doctor",
            "year": 2023,
            "period": 1,
            "q_number": i,
            "question": ko,
            **options,
            "answer": i % 5 + 1,
            "cot": "",
        }
    if path.startswith("mmlu"):
        return {"question": f"{en}?", "subject": "astronomy", "choices": EN, "answer": i % 4}
    if path.startswith("hellaswag"):
        return {
            "ind": i,
            "activity_label": "Cooking",
            "ctx_a": en,
            "ctx_b": "then",
            "ctx": f"{en} then",
            "endings": EN,
            "source_id": "x",
            "split": "val",
            "split_type": "indomain",
            "label": str(i % 4),
        }
    raise AssertionError(f"no schema for {path}")


def write_benchmarks(root: Path, n: int = 5) -> Path:
    """``n`` records per file the local tasks read (two files for the globbed ones)."""
    from motif_megatron.eval import benchmarks

    rng = random.Random(0)
    for patterns in benchmarks.required_files(benchmarks.local_names()).values():
        for pattern in patterns:
            names = ["accounting.jsonl", "biology.jsonl"] if "*" in pattern else [""]
            for name in names:
                path = root / pattern.replace("*.jsonl", name)
                path.parent.mkdir(parents=True, exist_ok=True)
                rows = [_records(pattern, i, rng) for i in range(n)]
                path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


def test_every_local_task_is_indexed_with_a_version():
    from motif_megatron.errors import UserError
    from motif_megatron.eval import benchmarks

    leaves = benchmarks.leaf_tasks(["local_korean", "local_english"])
    kinds = [
        "kobest_boolq",
        "kobest_copa",
        "kobest_hellaswag",
        "kobest_sentineg",
        "kobest_wic",
        "kmmlu",
        "haerae_history",
        "kormedmcqa_doctor",
        "mmlu",
        "hellaswag",
    ]
    assert {f"local_{k}" for k in kinds} <= set(leaves) and len(leaves) == 17
    index = benchmarks.task_manager().task_index
    for name in leaves:
        assert index[name].cfg["dataset_path"] == "json"
        assert index[name].cfg["metadata"]["version"] >= 1.0
    with pytest.raises(UserError, match=r"unknown lm-eval task 'kobest_nope'.*local_kobest_boolq"):
        benchmarks.leaf_tasks(["kobest_nope"])


def test_tasks_on_motif_match_hf_export(tmp_path, tiny_ckpt, expanded):
    """All local tasks through ``tools/evaluate.py --tasks`` on a Korean-expanded Megatron
    checkpoint, then its HF export through lm-eval's own ``hf`` model: the same scores, and the
    same log-likelihood for every choice of every document."""
    from motif_megatron.eval import benchmarks

    # vocabulary growth only: four layers, not conftest.grown's six (lm-eval's cost is the
    # forward passes of two models over every choice of every document)
    korean = expand(tiny_ckpt, tmp_path / "ko", "--tokenizer", str(expanded[0] / "expanded"))
    export = tmp_path / "hf"
    ok(run(["tools/convert_hf.py", "export", "--load", str(korean), "--out", str(export)]))
    root = write_benchmarks(tmp_path / "bench")
    out = tmp_path / "eval"
    stdout = ok(
        run(
            [
                "tools/evaluate.py",
                "--load",
                f"tiny={korean}",
                "--tasks",
                "local_korean,local_english",
                "--benchmark-dir",
                str(root),
                "--out",
                str(out),
            ],
            timeout=900,
        )
    )
    assert "tiny: local_" in stdout
    report = json.loads((out / "evaluation.json").read_text())
    ours = report["checkpoints"]["tiny"]["tasks"]
    assert report["lm_eval"]["versions"]["local_kmmlu"] == 2.0
    n_samples = report["lm_eval"]["n_samples"]
    assert n_samples["local_kmmlu"] == n_samples["local_mmlu"] == 10  # two files each
    assert n_samples["local_kobest_wic"] == n_samples["local_haerae_history"] == 5
    assert ours["local_kobest_boolq"].keys() == {"acc", "f1"}
    assert "exact_match[extract_answer]" in ours["local_kormedmcqa_doctor"]
    assert "| local_kmmlu | acc |" in (out / "evaluation.md").read_text()
    assert (out / "evaluation.png").stat().st_size > 0

    hf = benchmarks.run(
        "hf",
        {"pretrained": str(export), "dtype": "float32", "device": "cpu"},
        benchmarks.TaskSpec(["local_korean", "local_english"], root),
        log_samples=True,
    )
    assert ours.keys() == hf["tasks"].keys()
    for task, values in hf["tasks"].items():
        for metric, value in values.items():
            assert ours[task][metric] == pytest.approx(value, abs=1e-9), (task, metric)
    for task, rows in hf["samples"].items():
        mine = [json.loads(line) for line in (out / "samples" / "tiny" / f"{task}.jsonl").open()]
        assert [r["doc_id"] for r in mine] == [r["doc_id"] for r in rows]
        for a, b in zip(mine, rows, strict=True):
            if isinstance(b["resps"][0], str):  # generation
                assert a["resps"] == b["resps"], task
            else:  # (log-likelihood, is greedy) per choice
                assert [x[0] for x in a["resps"]] == pytest.approx(
                    [float(x[0]) for x in b["resps"]], abs=1e-4
                ), task


def test_missing_benchmark_files_fail_in_one_line_before_loading(tmp_path):
    result = run(
        [
            "tools/evaluate.py",
            "--load",
            f"x={tmp_path / 'no-ckpt'}",
            "--tasks",
            "local_kobest",
            "--benchmark-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert result.returncode != 0
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "kobest/boolq/test.jsonl" in err[0] and "Traceback" not in err[0]


def test_tasks_at_tp2_follow_tp1(tmp_path, tiny_ckpt):
    """Under torchrun every rank scores every document together: TP=2 gives TP=1's responses."""
    root = write_benchmarks(tmp_path / "bench", n=3)
    tasks = ["--tasks", "local_kobest_copa,local_kormedmcqa_doctor", "--benchmark-dir", str(root)]
    for tp in (1, 2):
        cmd = ["tools/evaluate.py", "--load", f"m={tiny_ckpt}", *tasks, "--tp", str(tp)]
        ok(run([*cmd, "--out", str(tmp_path / f"tp{tp}")], nproc=tp))
    for task in ("local_kobest_copa", "local_kormedmcqa_doctor"):
        one, two = (
            [json.loads(line) for line in (tmp_path / f"tp{tp}/samples/m/{task}.jsonl").open()]
            for tp in (1, 2)
        )
        assert len(one) == len(two) == 3
        for a, b in zip(one, two, strict=True):
            if isinstance(a["resps"][0], str):
                assert a["resps"] == b["resps"]
            else:
                assert [x[0] for x in a["resps"]] == pytest.approx(
                    [x[0] for x in b["resps"]], abs=1e-4
                )
