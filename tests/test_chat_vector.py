"""Chat Vector on plain and grown checkpoints: the formula bitwise in fp32, old slices only on a
grown target, and shapes that cannot be mapped refused before anything is written."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ok, run

from motif_megatron.checkpoint import layout
from motif_megatron.checkpoint.convert import read_hf_config
from motif_megatron.checkpoint.dist import CheckpointReader
from motif_megatron.checkpoint.hf_io import HFWeights
from motif_megatron.growth import msg
from motif_megatron.model.llama import LlamaArgs

SCALE = 0.75


@pytest.fixture(scope="module")
def chat_hf(tmp_path_factory, llama3_tokenizer):
    """The "instruct" model: the tiny base's shape, other weights."""
    from motif_megatron.model.presets import random_hf_model

    return random_hf_model(
        tmp_path_factory.mktemp("chat") / "tiny", "tiny", llama3_tokenizer, seed=1
    )


def _apply(tiny_hf, chat, target, out, scale=SCALE):
    flags = [
        "--base",
        str(tiny_hf),
        "--chat",
        str(chat),
        "--target",
        str(target),
        "--out",
        str(out),
    ]
    return run(["tools/chat_vector.py", *flags, "--scale", str(scale)])


def _deltas(tiny_hf, chat_hf):
    """chat - base per base layer in Megatron's layout (fp32), and of the embedding/head/norm."""
    base, chat, args = HFWeights(tiny_hf), HFWeights(chat_hf), read_hf_config(tiny_hf)
    layers = [
        {
            p.ckpt_key: layout.to_megatron(
                p,
                [chat.get(n).float() - base.get(n).float() for n in layout.hf_layer_names(p, i)],
                args,
            )
            for p in layout.LAYER_PARAMS
        }
        for i in range(args.num_hidden_layers)
    ]
    others = {
        m: chat.get(h).float() - base.get(h).float()
        for m, h in (layout.EMBEDDING, layout.OUTPUT, layout.FINAL_NORM)
    }
    return layers, others


def test_unchanged_target_gets_exactly_scale_times_the_vector(
    tmp_path, tiny_hf, chat_hf, tiny_ckpt
):
    ok(_apply(tiny_hf, chat_hf, tiny_ckpt, tmp_path / "out"))
    layers, others = _deltas(tiny_hf, chat_hf)
    before, after = CheckpointReader(tiny_ckpt), CheckpointReader(tmp_path / "out")
    for i, deltas in enumerate(layers):
        for p in layout.LAYER_PARAMS:
            key = layout.layer_ckpt_key(p)
            expected = before.get(key, i).float() + SCALE * deltas[p.ckpt_key]
            assert after.dtypes[key] == torch.float32
            assert torch.equal(after.get(key, i), expected), (i, key)
    for key, d in others.items():
        old, new = before.get(key), after.get(key)
        assert torch.equal(new[: len(d)], old[: len(d)] + SCALE * d), key
        assert torch.equal(new[len(d) :], old[len(d) :])  # Megatron's vocabulary padding rows
    record = json.loads((tmp_path / "out/motif_model.json").read_text())["growth"]
    assert record["chat_vector"]["scale"] == SCALE


def test_grown_target_takes_the_vector_on_its_old_slices_only(tmp_path, tiny_hf, chat_hf, widened):
    """LlamaPro depth + MSG width + vocabulary growth in one target (``conftest.WIDENED``)."""
    grown = widened
    ok(_apply(tiny_hf, chat_hf, grown, tmp_path / "out"))
    args = LlamaArgs.load(grown)
    plan = msg.WidthPlan(read_hf_config(tiny_hf), 80, 224, 10, 2, args.growth["msg"]["tp_layout"])
    layers, others = _deltas(tiny_hf, chat_hf)
    before, after = CheckpointReader(grown), CheckpointReader(tmp_path / "out")
    new_blocks = args.growth["llama_pro_layers"]
    old_layers = [j for j in range(args.num_hidden_layers) if j not in new_blocks]
    assert new_blocks == [2, 5] and len(old_layers) == len(layers)
    for p in layout.LAYER_PARAMS:
        key = layout.layer_ckpt_key(p)
        for j in new_blocks:  # LlamaPro blocks: untouched
            assert torch.equal(after.get(key, j), before.get(key, j)), (j, key)
        for i, j in enumerate(old_layers):
            # a ones-tensor placed like the weights marks the old slice of the grown tensor
            ones = torch.ones_like(layers[i][p.ckpt_key])
            old = msg.grow_layer_tensor(p, ones, plan, None).bool()
            assert old.any() and not old.all()
            placed = msg.grow_layer_tensor(p, layers[i][p.ckpt_key], plan, None)
            target, result = before.get(key, j), after.get(key, j)
            assert torch.equal(result[old], (target.float() + SCALE * placed)[old]), (j, key)
            assert torch.equal(result[~old], target[~old]), (j, key)
    for key, d in others.items():
        old, new = before.get(key), after.get(key)
        rows, cols = (d.shape[0], d.shape[1]) if d.dim() == 2 else (d.shape[0], None)
        index = (slice(0, rows), slice(0, cols)) if cols else (slice(0, rows),)
        assert torch.equal(new[index], old[index] + SCALE * d), key
        untouched = torch.ones_like(new, dtype=torch.bool)
        untouched[index] = False
        assert torch.equal(new[untouched], old[untouched]), key  # new rows and columns
    mask = next(k for k in before.shapes if k.endswith("msg_m"))
    assert torch.equal(after.get(mask), before.get(mask))


def test_shapes_that_cannot_be_mapped_are_refused_before_writing(
    tmp_path, tiny_hf, chat_hf, tiny_ckpt, llama3_tokenizer
):
    from motif_megatron.model.presets import random_hf_model

    wide = random_hf_model(tmp_path / "wide", "tiny", llama3_tokenizer, hidden_size=96)
    result = _apply(tiny_hf, wide, tiny_ckpt, tmp_path / "out")
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --chat is not the shape of --base")
    )
    # a target whose width differs with no growth record
    result = _apply(wide, wide, tiny_ckpt, tmp_path / "out2")
    assert result.returncode == 2 and not (tmp_path / "out2").exists()
    assert "records no MSG growth" in result.stderr.strip().splitlines()[-1]
