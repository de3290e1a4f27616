"""SFT: assistant-only loss through the chat template, packing without cross-example attention,
NEFTune in training only, skipped bad records, a curriculum, and a run that learns the answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ok, run

from motif_megatron.model.packed import attention_mask
from motif_megatron.posttrain.chat import ChatEncoder, Example, to_messages
from motif_megatron.posttrain.packing import pack

SMALL = (
    "--seq-length",
    "64",
    "--micro-batch-size",
    "2",
    "--global-batch-size",
    "4",
    "--lr",
    "3e-3",
)
QA = [
    ("한국의 수도는 어디인가요?", "서울입니다."),
    ("What is 2+3?", "2+3 is 5."),
    ("하늘은 무슨 색인가요?", "하늘은 파란색입니다."),
    ("Name a primary color.", "Red is a primary color."),
]


def write_sft(path: Path, n: int = 40, bad: bool = True) -> Path:
    lines = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        if i % 2:
            lines.append({"prompt": q, "completion": a})
        else:
            messages = [{"role": "system", "content": "You are helpful."}]
            lines.append(
                {
                    "messages": [
                        *messages,
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": a},
                    ]
                }
            )
    text = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    if bad:
        text += '{"prompt": "x", "completion": ""}\n{"bad json\n{"foo": 1}\n'
    path.write_text(text)
    return path


def test_only_assistant_tokens_carry_loss(llama3_tokenizer):
    encoder = ChatEncoder(llama3_tokenizer)
    record = {
        "messages": [
            {"role": "user", "content": "안녕?"},
            {"role": "assistant", "content": "안녕하세요!"},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
        ]
    }
    ex = encoder.encode(record)
    tok = encoder.tokenizer
    trained = tok.decode([i for i, m in zip(ex.ids, ex.loss_mask, strict=True) if m])
    assert trained == "안녕하세요!<|eot_id|>4<|eot_id|>"
    prompt = tok.decode([i for i, m in zip(ex.ids, ex.loss_mask, strict=True) if not m])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n안녕?")
    assert tok.decode(ex.ids) == encoder.render(to_messages(record), generation_prompt=False)


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"prompt": "q", "completion": " "}, "empty completion"),
        ({"messages": [{"role": "user", "content": "q"}]}, "no non-empty assistant message"),
        ({"messages": [{"role": "bot", "content": "q"}]}, "no role"),
        ({"text": "q"}, "needs 'messages'"),
    ],
)
def test_bad_records_name_their_reason(record, reason):
    with pytest.raises(ValueError, match=reason):
        to_messages(record)


def test_packing_keeps_examples_apart():
    examples = [
        Example([1, 2, 3, 4], [0, 0, 1, 1]),
        Example([5, 6, 7], [0, 1, 1]),
        Example([8, 9, 10, 11, 12, 13], [0, 0, 0, 1, 1, 1]),
    ]
    rows = pack(examples, seq_length=7, pad_id=0)
    assert rows.tokens.tolist() == [[1, 2, 3, 5, 6, 0, 0], [8, 9, 10, 11, 12, 0, 0]]
    assert rows.labels[0].tolist()[:5] == [2, 3, 4, 6, 7] and rows.loss_mask[0].tolist()[:5] == [
        0,
        1,
        1,
        1,
        1,
    ]
    assert rows.position_ids[0].tolist()[:5] == [0, 1, 2, 0, 1]
    mask = attention_mask(rows.segments)[0, 0]
    assert not mask[4, 3] and mask[4, 2] and mask[3, 4]  # own example, earlier only


def test_packed_loss_equals_separate_examples(tiny_ckpt):
    """Megatron's local attention honours the mask: each example's token losses in a packed row
    equal those of the example run alone."""
    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    model, _ = build_from_checkpoint(str(tiny_ckpt), BuildOptions(params_dtype=torch.float32))
    model.eval()
    g = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.randint(0, 128000, (n,), generator=g).tolist(), [1] * n) for n in (9, 13, 7)
    ]
    rows = pack(examples, seq_length=32, pad_id=0)
    with torch.no_grad():
        packed = model(
            rows.tokens, rows.position_ids, attention_mask(rows.segments), labels=rows.labels
        )
        at = 0
        for ex in examples:
            n = len(ex.ids) - 1
            ids = torch.tensor([ex.ids])
            alone = model(ids[:, :-1], torch.arange(n)[None], None, labels=ids[:, 1:])
            assert torch.allclose(packed[0, at : at + n], alone[0], atol=1e-5)
            at += n


def test_neftune_noise_only_in_training(tiny_ckpt):
    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.posttrain import neftune

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    model, _ = build_from_checkpoint(str(tiny_ckpt), BuildOptions(params_dtype=torch.float32))
    tokens = torch.randint(0, 128000, (2, 16), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(16).expand(2, -1)

    def loss(train: bool) -> torch.Tensor:
        model.train(train)
        with torch.no_grad():
            return model(tokens[:, :-1], pos[:, :-1], None, labels=tokens[:, 1:])

    clean_train, clean_eval = loss(True), loss(False)
    handle = neftune.attach(model, 5.0, 15)
    noisy_train, noisy_eval = loss(True), loss(False)
    handle.remove()
    assert torch.equal(clean_eval, noisy_eval) and torch.equal(clean_train, clean_eval)
    assert not torch.allclose(noisy_train, clean_train)


def test_sft_run_learns_the_answers_and_reports_bad_records(tmp_path, tiny_ckpt):
    data = write_sft(tmp_path / "sft.jsonl")
    metrics = tmp_path / "m.jsonl"
    flags = list(SMALL)
    out = ok(
        run(
            [
                "posttrain_motif.py",
                "sft",
                "--load",
                str(tiny_ckpt),
                "--save",
                str(tmp_path / "s"),
                "--sft-data",
                str(data),
                "--train-iters",
                "12",
                "--neftune-alpha",
                "5",
                "--metrics-file",
                str(metrics),
                *flags,
            ]
        )
    )
    assert "40 examples, 3 skipped" in out
    rejects = [
        json.loads(x)["reason"] for x in (tmp_path / "s/sft_rejects.jsonl").read_text().splitlines()
    ]
    assert sorted(rejects)[0] == "empty completion" and "not JSON" in rejects
    losses = [json.loads(x)["loss"] for x in metrics.read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses


def test_curriculum_runs_datasets_in_order_with_their_lr(tmp_path, tiny_ckpt):
    low, high = (
        write_sft(tmp_path / "low.jsonl", 16, bad=False),
        write_sft(tmp_path / "high.jsonl", 8, bad=False),
    )
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"curriculum:\n  - {{data: {low}, iters: 3, lr: 0.002}}\n  - {{data: {high}, iters: 2, lr: 0.0005}}\nlr-decay-style: constant\n"
    )
    metrics = tmp_path / "m.jsonl"
    flags = ["--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4"]
    ok(
        run(
            [
                "posttrain_motif.py",
                "sft",
                "--config",
                str(config),
                "--load",
                str(tiny_ckpt),
                "--save",
                str(tmp_path / "s"),
                "--metrics-file",
                str(metrics),
                *flags,
            ]
        )
    )
    lrs = [json.loads(x)["lr"] for x in metrics.read_text().splitlines()]
    assert lrs == pytest.approx([0.002] * 3 + [0.0005] * 2)


def test_sft_with_neftune_follows_tp1_at_tp2(tmp_path, tiny_ckpt):
    """The noise is drawn alike on every TP rank, so TP=2 trains the same model as TP=1."""
    data = write_sft(tmp_path / "sft.jsonl", 16, bad=False)
    flags = list(SMALL)
    flags += [
        "--sft-data",
        str(data),
        "--train-iters",
        "3",
        "--neftune-alpha",
        "5",
        "--load",
        str(tiny_ckpt),
    ]
    curves = []
    for name, extra, nproc in (("tp1", [], 1), ("tp2", ["--tensor-model-parallel-size", "2"], 2)):
        metrics = tmp_path / f"{name}.jsonl"
        ok(
            run(
                [
                    "posttrain_motif.py",
                    "sft",
                    *flags,
                    *extra,
                    "--save",
                    str(tmp_path / name),
                    "--metrics-file",
                    str(metrics),
                ],
                nproc=nproc,
            )
        )
        curves.append([json.loads(x)["loss"] for x in metrics.read_text().splitlines()])
    assert max(abs(a - b) for a, b in zip(*curves, strict=True)) < 1e-5


def sft_losses(tmp_path, ckpt, name: str, *flags: str, nproc: int = 1) -> list[float]:
    metrics = tmp_path / f"{name}.jsonl"
    args = ["posttrain_motif.py", "sft", "--load", str(ckpt), "--save", str(tmp_path / name)]
    ok(run([*args, "--metrics-file", str(metrics), *flags], nproc=nproc))
    return [json.loads(x)["loss"] for x in metrics.read_text().splitlines() if '"loss"' in x]


def test_microbatch_size_leaves_sft_losses_unchanged(tmp_path, tiny_ckpt):
    """Assistant answers from 2 to ~40 tokens: each microbatch holds a very different number of
    loss tokens, and the step is still the global batch's per-token mean (1e-5)."""
    lines = []
    for i in range(16):
        answer = (
            "네." if i % 2 else " ".join(["서울은 한국의 수도이고 큰 도시입니다."] * (1 + i % 5))
        )
        lines.append({"prompt": f"질문 {i}: 한국의 수도는?", "completion": answer})
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    flags = ["--sft-data", str(data), "--train-iters", "4", "--seq-length", "64", "--lr", "3e-3"]
    flags += ["--global-batch-size", "4"]
    one = sft_losses(tmp_path, tiny_ckpt, "mbs1", *flags, "--micro-batch-size", "1")
    four = sft_losses(tmp_path, tiny_ckpt, "mbs4", *flags, "--micro-batch-size", "4")
    assert len(one) == 4
    assert max(abs(a - b) for a, b in zip(one, four, strict=True)) < 1e-5


def test_thd_cu_seqlens_describe_the_dense_mask():
    """Transformer Engine's THD inputs for packed rows (one sequence of all the rows of a
    microbatch, cut at every example and at each row's padding) block exactly what the local
    spec's dense mask blocks."""
    from motif_megatron.model.packed import distinct_rows, packed_seq_params

    g = torch.Generator().manual_seed(0)
    examples = [
        Example(torch.randint(0, 100, (n,), generator=g).tolist(), [1] * n)
        for n in (9, 13, 7, 20, 5, 3)
    ]
    rows = pack(examples, seq_length=24, pad_id=0)
    params = packed_seq_params(distinct_rows(rows.segments))
    cu = params.cu_seqlens_q
    b, s = rows.segments.shape
    assert params.qkv_format == "thd" and cu.dtype == torch.int32
    assert torch.equal(cu, params.cu_seqlens_kv) and int(cu[-1]) == b * s
    assert params.max_seqlen_q == int((cu[1:] - cu[:-1]).max())
    allowed = torch.zeros(b * s, b * s, dtype=torch.bool)
    for start, end in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True):
        allowed[start:end, start:end] = torch.ones(end - start, end - start).tril().bool()
    dense = torch.block_diag(*[~m[0] for m in attention_mask(rows.segments)])
    assert torch.equal(allowed, dense)
    # positions restart where the sequences do (TE's rotary takes them from cu_seqlens)
    starts = torch.zeros(b * s, dtype=torch.bool)
    starts[cu[:-1].long()] = True
    assert torch.equal(starts, rows.position_ids.reshape(-1) == 0)


def test_neftune_scale_uses_the_row_length(tiny_ckpt):
    """alpha / sqrt(L d) with L the configured row length, whatever the embedding's first
    dimension (sequence parallelism divides it by TP, THD packing multiplies it by the rows)."""
    from motif_megatron import parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.posttrain import neftune

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    model, args = build_from_checkpoint(str(tiny_ckpt), BuildOptions(params_dtype=torch.float32))
    tokens = torch.randint(0, 128000, (2, 15), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(15).expand(2, -1)
    model.train()
    with torch.no_grad():
        clean = model.embedding(tokens, pos)
        handle = neftune.attach(model, 5.0, 64)
        noise = model.embedding(tokens, pos) - clean
        handle.remove()
    bound = 5.0 / (64 * args.hidden_size) ** 0.5
    assert clean.shape[0] == 15 and 0.95 * bound < float(noise.abs().max()) <= bound * (1 + 1e-6)
