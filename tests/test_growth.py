"""Growth transforms preserve the function: LlamaPro depth (exact) and vocabulary resize."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bundled_corpus, expand, finalize, max_abs_diff, ok, run

from motif_megatron.checkpoint.dist import CheckpointReader


@pytest.mark.compat
@pytest.mark.parametrize(("nproc", "layout"), [(1, []), (2, ["--tp", "2"]), (2, ["--pp", "2"])])
def test_depth_growth_is_exact(tiny_ckpt, grown, nproc, layout):
    """``conftest.grown`` (+2 LlamaPro blocks, new vocabulary rows) computes the base's logits
    over the base vocabulary, at TP1, TP2 and PP2."""
    out = ok(
        run(
            [
                "tools/check_equivalence.py",
                "--load",
                str(tiny_ckpt),
                "--load-b",
                str(grown),
                *layout,
                "--atol",
                "1e-6",
            ],
            nproc=nproc,
        )
    )
    assert max_abs_diff(out) < 1e-6


def test_depth_growth_records_new_blocks_and_exports(tmp_path, tiny_hf, grown):
    args = json.loads((grown / "motif_model.json").read_text())
    assert args["num_hidden_layers"] == 6 and args["growth"]["llama_pro_layers"] == [2, 5]
    reader = CheckpointReader(grown)
    for layer in (2, 5):
        assert not reader.get("decoder.layers.self_attention.linear_proj.weight", layer).any()
        assert not reader.get("decoder.layers.mlp.linear_fc2.weight", layer).any()
        assert torch.equal(
            reader.get("decoder.layers.self_attention.linear_qkv.weight", layer),
            reader.get("decoder.layers.self_attention.linear_qkv.weight", layer - 1),
        )
    ok(run(["tools/convert_hf.py", "export", "--load", str(grown), "--out", str(tmp_path / "hf")]))
    out = ok(
        run(
            [
                "tools/check_equivalence.py",
                "--hf-dir",
                str(tmp_path / "hf"),
                "--load",
                str(grown),
                "--atol",
                "1e-4",
            ]
        )
    )
    assert max_abs_diff(out) < 1e-4
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 128000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_hf, local_files_only=True)(ids).logits
        big = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True)(
            ids
        ).logits
    assert big.shape[-1] > base.shape[-1]  # the new Korean rows
    assert (base - big[..., : base.shape[-1]]).abs().max() < 1e-5


def test_impossible_growth_is_refused(tmp_path, tiny_ckpt):
    result = run(
        [
            "tools/expand_checkpoint.py",
            "--load",
            str(tiny_ckpt),
            "--save",
            str(tmp_path / "x"),
            "--depth-add",
            "3",
        ]
    )
    assert result.returncode == 2 and "must divide num_hidden_layers=4" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def expanded_tokenizer(expanded):
    return expanded[0] / "expanded"


@pytest.mark.parametrize(
    "init", ["random", "mean", "mean-resizing", "subword-mean", "first-subword", "decompose"]
)
def test_vocabulary_growth_keeps_old_rows(tmp_path, tiny_ckpt, expanded_tokenizer, init):
    out = tmp_path / "vocab"
    expand(str(tiny_ckpt), str(out), "--tokenizer", str(expanded_tokenizer), "--init", init)
    info = json.loads((expanded_tokenizer / "new_tokens.json").read_text())
    old, new = CheckpointReader(tiny_ckpt), CheckpointReader(out)
    v_old = json.loads((tiny_ckpt / "motif_model.json").read_text())["vocab_size"]
    assert (
        json.loads((out / "motif_model.json").read_text())["vocab_size"]
        == info["summary"]["vocab_size"]
    )
    for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
        before, after = old.get(key), new.get(key)
        assert torch.equal(after[:v_old], before[:v_old])  # old rows bit-identical
        assert after.shape[0] % 128 == 0 and after.shape[0] >= info["summary"]["vocab_size"]
        token = next(t for t in info["tokens"] if t["text"] and len(t["pieces"]) > 1)
        row, pieces = after[token["id"]], before[token["pieces"]]
        first = (key.startswith("output") and init == "decompose") or init == "first-subword"
        if init == "subword-mean" or (init == "decompose" and not first):
            assert torch.allclose(row, pieces.mean(0))
        elif first:
            assert torch.equal(row, pieces[0])
        elif init == "mean":
            assert torch.allclose(row, before[:v_old].mean(0), atol=1e-6)
    if init == "subword-mean":  # old tokens' logits are unchanged
        result = ok(
            run(
                [
                    "tools/check_equivalence.py",
                    "--load",
                    str(tiny_ckpt),
                    "--load-b",
                    str(out),
                    "--atol",
                    "1e-5",
                ]
            )
        )
        assert max_abs_diff(result) < 1e-5


WIDTH_CASES = {
    "hidden": ["--hidden-size", "96"],
    "ffn": ["--ffn-hidden-size", "240"],
    "heads_in_groups": ["--num-attention-heads", "12", "--num-query-groups", "2"],
    "new_groups": ["--num-attention-heads", "16", "--num-query-groups", "4"],
    "combined_with_depth": [
        "--hidden-size",
        "80",
        "--ffn-hidden-size",
        "208",
        "--num-attention-heads",
        "16",
        "--num-query-groups",
        "4",
        "--depth-add",
        "2",
    ],
}


@pytest.fixture(scope="module")
def width_cases(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("width")
    for name, flags in WIDTH_CASES.items():
        expand(str(tiny_ckpt), str(root / name), *flags, "--tp", "2")
    return root


@pytest.mark.compat
@pytest.mark.parametrize(("nproc", "layout"), [(1, []), (2, ["--tp", "2"])])
def test_width_growth_is_exact_at_mask_zero(tiny_ckpt, width_cases, nproc, layout):
    """Every width case against the base in one launch per layout (the last line is the largest
    difference; each case has a line of its own)."""
    cases = [str(width_cases / case) for case in WIDTH_CASES]
    compare = ["tools/check_equivalence.py", "--load", str(tiny_ckpt), "--load-b", *cases]
    out = ok(run([*compare, *layout, "--atol", "1e-5"], nproc=nproc))
    assert all(any(line.startswith(f"{case}: ") for line in out.splitlines()) for case in cases)
    assert max_abs_diff(out) < 1e-5


def _probe(ckpt, mask, *extra):
    out = ok(run(["tests/scripts/msg_probe.py", "--load", str(ckpt), "--mask", str(mask), *extra]))
    return json.loads(out.strip().splitlines()[-1])


def test_masks_gate_new_parameters_and_finalize(tmp_path, tiny_ckpt, width_cases):
    grown = width_cases / "combined_with_depth"
    closed, half = _probe(grown, 0.0), _probe(grown, 0.5)
    assert closed["fc1_new_rows"] == closed["fc2_new_rows"] == closed["embedding_new_cols"] == 0.0
    assert half["fc1_new_rows"] > 0 and half["fc2_new_rows"] > 0 and half["embedding_new_cols"] > 0
    assert half["loss"] != closed["loss"]  # at m > 0 the grown model computes something new
    opened = tmp_path / "opened"
    _probe(grown, 1.0, "--save", str(opened))
    refused = run(
        [
            "tools/expand_checkpoint.py",
            "--load",
            str(grown),
            "--save",
            str(tmp_path / "x"),
            "--finalize",
        ]
    )
    assert refused.returncode == 2 and "needs the MSG masks at 1" in refused.stderr
    final = tmp_path / "final"
    assert finalize(opened, final) < 1e-5
    ok(run(["tools/convert_hf.py", "export", "--load", str(final), "--out", str(tmp_path / "hf")]))
    out = ok(
        run(
            [
                "tools/check_equivalence.py",
                "--hf-dir",
                str(tmp_path / "hf"),
                "--load",
                str(opened),
                "--atol",
                "1e-4",
            ]
        )
    )
    assert max_abs_diff(out) < 1e-4


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--hidden-size", "32"], "smaller than the current 64"),
        (
            ["--num-attention-heads", "12", "--num-query-groups", "3", "--tp", "2"],
            "query groups 3 are not divisible by tp=2",
        ),
        (["--num-attention-heads", "9"], "not a multiple of query groups"),
    ],
)
def test_impossible_width_is_refused(tmp_path, tiny_ckpt, flags, needle):
    result = run(
        [
            "tools/expand_checkpoint.py",
            "--load",
            str(tiny_ckpt),
            "--save",
            str(tmp_path / "x"),
            *flags,
        ]
    )
    assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr


def test_vocab_init_report(tmp_path, tiny_ckpt, expanded_tokenizer):
    text, _ = bundled_corpus(tmp_path, "ko-libreoffice-help", n=12)
    ok(
        run(
            [
                "tools/vocab_init_report.py",
                "--load",
                str(tiny_ckpt),
                "--tokenizer",
                str(expanded_tokenizer),
                "--text",
                str(text),
                "--out",
                str(tmp_path / "rep"),
                "--methods",
                "random",
                "mean",
                "first-subword",
                "decompose",
            ],
            timeout=900,
        )
    )
    rows = json.loads((tmp_path / "rep/vocab_init.json").read_text())["methods"]
    assert all(r["kl_old_inputs"] >= 0 and 0 < r["loss_per_token"] < 20 for r in rows.values())
    # on old inputs only the output rows matter: decompose and first-subword share them
    assert rows["decompose"]["kl_old_inputs"] == pytest.approx(
        rows["first-subword"]["kl_old_inputs"], rel=1e-6
    )
    assert rows["decompose"]["loss_per_token"] != rows["first-subword"]["loss_per_token"]
    assert (tmp_path / "rep/vocab_init.png").stat().st_size > 0


def test_mean_inits_keep_kl_small_on_a_trained_base(tmp_path, tiny_ckpt, ko_data, expanded):
    """Hewitt's argument needs a base whose logits mean something: train the tiny model on Korean
    first, then mean-based output rows barely move the old next-token distribution while random
    rows take visible mass."""
    trained = tmp_path / "trained"
    flags = ["--seq-length", "64", "--micro-batch-size", "4", "--global-batch-size", "8"]
    flags += ["--train-iters", "40", "--lr", "1e-2"]
    ok(
        run(
            [
                "pretrain_motif.py",
                "--load",
                str(tiny_ckpt),
                "--save",
                str(trained),
                "--data-path",
                ko_data,
                *flags,
            ]
        )
    )
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in expanded[1][:12])
    )
    ok(
        run(
            [
                "tools/vocab_init_report.py",
                "--load",
                str(trained),
                "--tokenizer",
                str(expanded[0] / "expanded"),
                "--text",
                str(held_out),
                "--out",
                str(tmp_path / "rep"),
                "--methods",
                "random",
                "mean",
                "mean-resizing",
            ],
            timeout=900,
        )
    )
    rows = json.loads((tmp_path / "rep/vocab_init.json").read_text())["methods"]
    kl = {m: r["kl_old_inputs"] for m, r in rows.items()}
    assert kl["random"] > 0.05, kl
    assert kl["mean"] < 0.1 * kl["random"] and kl["mean-resizing"] < 0.1 * kl["random"], kl


def test_masks_stay_fp32_under_bf16(width_cases):
    """Under --bf16 the masks and RMSNorm denominators stay fp32 (a bf16 m = 0.3 would give
    d_old + m (d_new - d_old) = 73.5 here, and 4416 instead of 4403.2 at 4096 -> 5120)."""
    from motif_megatron import device, parallel
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model.builder import BuildOptions
    from motif_megatron.model.masked import MaskedRMSNorm, set_mask

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    model, args = build_from_checkpoint(
        str(width_cases / "hidden"), BuildOptions(params_dtype=torch.bfloat16)
    )
    set_mask(model, 0.3)
    masks = {n: b for n, b in model.named_buffers() if n.endswith("msg_m")}
    assert "embedding.msg_mask.msg_m" in masks and len(masks) > 2 * args.num_hidden_layers
    for name, mask in masks.items():
        assert mask.dtype == torch.float32 and mask.device == device.current(), name
        assert mask == torch.tensor(0.3), name
    assert model.decoder.layers[0].mlp.linear_fc1.weight.dtype == torch.bfloat16
    old, new = args.growth["msg"]["old_hidden"], args.hidden_size
    exact = torch.tensor(old + 0.3 * (new - old), dtype=torch.float64)
    norms = [m for m in model.modules() if isinstance(m, MaskedRMSNorm)]
    assert len(norms) == 2 * args.num_hidden_layers + 1
    x = torch.randn(3, new, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for norm in norms:
        dims = norm.dims()
        assert dims.dtype == torch.float32
        assert abs(float(dims) - float(exact)) <= float(exact) * 2**-23
        xf = x.double()
        ref = xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) / exact + norm.eps)
        ref = ref * norm.weight.double()
        torch.testing.assert_close(norm(x).double(), ref, rtol=2**-8, atol=1e-6)
