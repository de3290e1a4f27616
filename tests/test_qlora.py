"""QLoRA's library path on the CPU (bitsandbytes' NF4 runs here; the CLI still asks for CUDA, as
production QLoRA does): the adapted layers are built without their base and quantize it layer by
layer as it is read; the quantized layer computes exactly the dequantized base plus the adapter,
gradients reach only the adapters, and merging and saving keep the function."""

from __future__ import annotations

import weakref

import pytest
import torch

pytest.importorskip("bitsandbytes")


def test_nf4_base_with_adapters(tiny_ckpt, tmp_path):
    import bitsandbytes.functional as bnbf

    from motif_megatron import parallel
    from motif_megatron.checkpoint import dist
    from motif_megatron.checkpoint.dist import build_from_checkpoint
    from motif_megatron.model import lora
    from motif_megatron.model.builder import BuildOptions, build_model

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    plain_model, args = build_from_checkpoint(
        str(tiny_ckpt), BuildOptions(params_dtype=torch.float32)
    )
    plain = plain_model.state_dict()
    config = lora.LoRAConfig(rank=4, alpha=8.0, nf4=True)
    model = build_model(args, BuildOptions(params_dtype=torch.float32, lora=config))
    adapted = {n: m for n, m in model.named_modules() if isinstance(m, lora._LoRAMixin)}
    assert adapted and all(m.weight.numel() == 0 for m in adapted.values())  # no base built
    with lora.base_checkpoint(model):
        dist.load_model(model, tiny_ckpt)  # embeddings and norms; the bases stay unread
    assert all(m.weight.numel() == 0 for m in adapted.values())

    source, alive = dist.base_from_checkpoint(model, tiny_ckpt, True), []

    def read(name, module):  # one base resident at a time: the previous one is gone
        assert all(ref() is None for ref in alive), f"{name}: an earlier base is still resident"
        tensor = source(name, module)
        alive.append(weakref.ref(tensor))
        return tensor

    assert lora.quantize_base(model, read) == len(adapted) == len(alive)
    assert lora.quantize_base(model, read) == 0  # nothing left to read
    # what NF4 keeps of each base weight, put back in full precision
    expected = {
        name: bnbf.dequantize_4bit(
            *bnbf.quantize_4bit(plain[f"{name}.weight"].float().contiguous(), quant_type="nf4")
        )
        for name in adapted
    }
    for m in adapted.values():  # a non-zero B so the adapters matter
        torch.nn.init.normal_(m.lora_b, std=0.02, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(11).expand(2, -1)

    def loss(net):
        return net(tokens[:, :-1], pos, None, labels=tokens[:, 1:]).float().mean()

    quantized = loss(model)
    quantized.backward()
    fc1 = model.decoder.layers[0].mlp.linear_fc1
    assert fc1.lora_a.grad is not None and fc1.lora_b.grad.abs().sum() > 0
    assert fc1.weight.grad is None
    merged = lora.merged_state_dict(model)
    # a save holds the dequantized base once with the adapters; a plain model folds them in
    dist.save(model.sharded_state_dict(), tmp_path / "q")
    args.save(tmp_path / "q")
    reader = dist.CheckpointReader(tmp_path / "q", merge_adapters=False)
    key = "decoder.layers.self_attention.linear_qkv."
    base = expected["decoder.layers.0.self_attention.linear_qkv"]
    assert torch.equal(reader.get(key + "weight", 0), base)
    assert reader.get(key + "lora_scale", 0).item() == 2.0
    assert torch.allclose(
        dist.CheckpointReader(tmp_path / "q").get(key + "weight", 0),
        merged["decoder.layers.0.self_attention.linear_qkv.weight"],
    )
    with torch.no_grad():  # the same model with the dequantized weights as plain parameters
        for name, m in adapted.items():
            m.lora_nf4 = None
            m.weight.data = expected[name].clone()
        reference = loss(model)
        assert torch.allclose(quantized, reference, atol=1e-6)
        plain_model.load_state_dict(merged)
        assert torch.allclose(loss(plain_model), reference, atol=1e-5)
        dist.load_model(plain_model, tmp_path / "q")
        assert torch.allclose(loss(plain_model), reference, atol=1e-5)
