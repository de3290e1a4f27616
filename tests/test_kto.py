"""kto_loss against the KTO formula written out independently (TRL's, element by element)."""

from __future__ import annotations

import math

import pytest
import torch

from motif_megatron.posttrain.kto import kto_loss


def reference(policy, ref, policy_kl, ref_kl, labels, beta, wd, wu):
    """TRL's ``_compute_loss`` arithmetic on Python floats: chosen losses, then rejected ones."""
    kl = max(0.0, sum(p - r for p, r in zip(policy_kl, ref_kl, strict=True)) / len(policy_kl))

    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    chosen = [
        wd * (1 - sigmoid(beta * ((p - r) - kl)))
        for p, r, y in zip(policy, ref, labels, strict=True)
        if y
    ]
    rejected = [
        wu * (1 - sigmoid(beta * (kl - (p - r))))
        for p, r, y in zip(policy, ref, labels, strict=True)
        if not y
    ]
    losses = chosen + rejected
    return sum(losses) / len(losses), [beta * (p - r) for p, r in zip(policy, ref, strict=True)], kl


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("beta", "wd", "wu"), [(0.1, 1.0, 1.0), (0.5, 1.33, 0.75)])
def test_matches_the_formula(seed, beta, wd, wu):
    g = torch.Generator().manual_seed(seed)
    n = 9
    policy, ref = (
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    policy_kl, ref_kl = (
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
        -20 * torch.rand(n, generator=g, dtype=torch.float64),
    )
    labels = torch.rand(n, generator=g) > 0.4
    loss, rewards, kl = kto_loss(policy, ref, policy_kl, ref_kl, labels, beta, wd, wu)
    want_loss, want_rewards, want_kl = reference(
        policy.tolist(),
        ref.tolist(),
        policy_kl.tolist(),
        ref_kl.tolist(),
        labels.tolist(),
        beta,
        wd,
        wu,
    )
    assert loss.item() == pytest.approx(want_loss, rel=1e-12)
    assert rewards.tolist() == pytest.approx(want_rewards, rel=1e-12)
    assert kl.item() == pytest.approx(want_kl, abs=1e-12)
    assert loss.dim() == 0 and rewards.shape == (n,) and kl.dim() == 0


def test_kl_is_clamped_and_carries_no_gradient():
    policy = torch.tensor([-5.0, -6.0], requires_grad=True)
    policy_kl = torch.tensor([-9.0, -9.0], requires_grad=True)
    loss, _, kl = kto_loss(
        policy,
        torch.tensor([-5.5, -5.0]),
        policy_kl,
        torch.tensor([-1.0, -1.0]),
        torch.tensor([True, False]),
    )
    assert kl.item() == 0.0  # mean log-ratio -8 clamps to 0
    loss.backward()
    assert policy.grad is not None and policy_kl.grad is None
    # hand value: r = [0.5, -1.0], z0 = 0, beta 0.1
    want = ((1 - 1 / (1 + math.exp(-0.05))) + (1 - 1 / (1 + math.exp(-0.1)))) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_a_given_data_parallel_kl_is_used():
    args = (
        torch.tensor([-3.0]),
        torch.tensor([-4.0]),
        torch.tensor([-2.0]),
        torch.tensor([-2.0]),
        torch.tensor([True]),
    )
    _, _, own = kto_loss(*args)
    loss, _, kl = kto_loss(*args, kl=torch.tensor(0.7))
    assert own.item() == 0.0 and kl.item() == pytest.approx(0.7)
    assert loss.item() == pytest.approx(1 - 1 / (1 + math.exp(-0.1 * (1.0 - 0.7))), rel=1e-6)


GOOD = [
    ("한국의 수도는?", "서울입니다."),
    ("What is 2+3?", "5."),
    ("인사해 줘.", "안녕하세요, 반갑습니다."),
]
BAD = [
    ("한국의 수도는?", "바보야 몰라."),
    ("What is 2+3?", "Shut up, idiot."),
    ("인사해 줘.", "꺼져."),
]


def write_kto(path, n: int = 18, labels=None):
    import json

    lines = []
    for i in range(n):
        good = labels[i] if labels else i % 2 == 0
        q, a = (GOOD if good else BAD)[(i // 2) % 3]
        lines.append(json.dumps({"prompt": q, "completion": a, "label": good}, ensure_ascii=False))
    path.write_text("\n".join([*lines, '{"prompt": "x", "completion": "y"}']) + "\n")
    return path


def kto_run(tmp_path, ckpt, name, *flags, nproc: int = 1):
    import json

    from conftest import ok, run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "안녕?"}\n{"prompt": "Hello?"}\n')
    metrics = tmp_path / f"{name}.jsonl"
    args = ["posttrain_motif.py", "kto", "--load", str(ckpt), "--save", str(tmp_path / name)]
    args += ["--kto-data", str(tmp_path / "kto.jsonl"), "--safety-prompts", str(prompts)]
    args += ["--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4"]
    ok(run([*args, "--lr", "3e-3", "--metrics-file", str(metrics), *flags], nproc=nproc))
    return [json.loads(x) for x in metrics.read_text().splitlines()]


def test_throughput_counts_every_real_token_of_the_rows_and_kl_rows(tmp_path, tiny_ckpt):
    """A KTO batch's tokens are each row and its KL row (the prompt with the next example's
    completion) up to their padding, as the run logs them (``real_tokens``)."""
    import json

    from motif_megatron.posttrain import kto
    from motif_megatron.posttrain.chat import ChatEncoder

    write_kto(tmp_path / "kto.jsonl", 4)
    encoder = ChatEncoder(tiny_ckpt / "tokenizer", None)
    data, _ = kto.encode(str(tmp_path / "kto.jsonl"), encoder, 32)
    lines = (tmp_path / "kto.jsonl").read_text().splitlines()[:4]  # the fifth is a reject
    pairs = [{k: r[k] for k in ("prompt", "completion")} for r in map(json.loads, lines)]
    prompts = [len(encoder.prompt_ids([{"role": "user", "content": r["prompt"]}])) for r in pairs]
    full = [len(encoder.encode(r).ids) for r in pairs]
    for i in range(4):
        own, kl = data.lengths[i].tolist()
        assert own == full[i] - 1
        assert kl == prompts[i] + full[(i + 1) % 4] - prompts[(i + 1) % 4] - 1
        assert own < 32 and kl < 32  # both padded in their rows
    run = kto_run(tmp_path, tiny_ckpt, "tokens", "--train-iters", "1", "--global-batch-size", "4")
    assert run[0]["real_tokens"] == int(data.lengths.sum())  # the four examples, both rows


def test_kto_run_widens_the_reward_margin_with_cached_reference(tmp_path, tiny_ckpt):
    import json

    write_kto(tmp_path / "kto.jsonl")
    cached = kto_run(tmp_path, tiny_ckpt, "cached", "--train-iters", "6")
    margins = [r["rewards/desirable"] - r["rewards/undesirable"] for r in cached]
    assert margins[0] == 0.0  # the policy starts as the reference
    assert margins[-1] > 0.1, margins
    assert len(list((tmp_path / "cached/kto_reference").glob("*.pt"))) == 1
    watch = json.loads((tmp_path / "cached/safety_watch.json").read_text())
    assert {"before", "after"} <= set(watch) and len(watch["after"]["outputs"]) == 2
    assert 0.0 <= watch["after"]["rate"] <= 1.0
    assert "label" in (tmp_path / "cached/kto_rejects.jsonl").read_text()
    # the naive way (a reference model held in memory, run on every batch) gives the same bits
    online = kto_run(tmp_path, tiny_ckpt, "online", "--train-iters", "6", "--no-ref-cache")
    assert [r["loss"] for r in online] == [r["loss"] for r in cached]


def test_kto_through_the_interleaved_pipeline_follows_one_process(tmp_path, tiny_ckpt):
    """PP2 x VPP2: each example's row and its KL row cross the stages together (the p2p shapes
    hold both), and the reference pass pads its one-row batches to the schedule's groups."""
    write_kto(tmp_path / "kto.jsonl")
    one = kto_run(tmp_path, tiny_ckpt, "one", "--train-iters", "3")
    vpp = ["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1"]
    two = kto_run(tmp_path, tiny_ckpt, "vpp", "--train-iters", "3", *vpp, nproc=2)
    assert len(two) == 3
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, two, strict=True)) < 1e-5


def test_kto_refuses_one_sided_data(tmp_path, tiny_ckpt):
    from conftest import run

    write_kto(tmp_path / "kto.jsonl", 6, labels=[True] * 6)
    result = run(
        [
            "posttrain_motif.py",
            "kto",
            "--load",
            str(tiny_ckpt),
            "--kto-data",
            str(tmp_path / "kto.jsonl"),
            "--train-iters",
            "1",
        ]
    )
    assert (
        result.returncode == 2
        and "every example is desirable" in result.stderr.strip().splitlines()[-1]
    )


@pytest.fixture(scope="module")
def llama3_shaped(tmp_path_factory, llama3_tokenizer):
    """Two tiny Llamas with Llama-3's own vocabulary of 128256 (its tokenizer's len() is 128257)
    and the same shapes, different weights."""
    from conftest import ok, run

    from motif_megatron.model.presets import random_hf_model

    tmp = tmp_path_factory.mktemp("llama3_shaped")
    out = []
    for seed in (2, 3):
        hf = random_hf_model(
            tmp / f"hf{seed}", "tiny", llama3_tokenizer, seed=seed, vocab_size=128256
        )
        ck = tmp / f"ck{seed}"
        ok(run(["tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(ck)]))
        out.append(ck)
    return out


def test_kto_on_llama3_vocabulary_and_reference_cache_keyed_by_weights(tmp_path, llama3_shaped):
    import shutil

    from motif_megatron import parallel
    from motif_megatron.posttrain.kto import cache_key

    write_kto(tmp_path / "kto.jsonl")
    tables = []
    for i, ck in enumerate(llama3_shaped):  # runs through the safety watch without a crash
        kto_run(tmp_path, ck, f"run{i}", "--train-iters", "1")
        (cache,) = (tmp_path / f"run{i}/kto_reference").glob("*.pt")
        tables.append((cache.name, torch.load(cache, weights_only=True)["logps"]))
    assert tables[0][0] != tables[1][0]
    assert not torch.allclose(tables[0][1], tables[1][1])
    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    copy = tmp_path / "copy"
    shutil.copytree(llama3_shaped[0], copy)
    data, template = str(tmp_path / "kto.jsonl"), "t"
    keys = [cache_key(str(p), data, 32, template) for p in (*llama3_shaped, copy)]
    assert keys[0] != keys[1] and keys[0] == keys[2]
    assert cache_key(str(copy), data, 64, template) != keys[2]
