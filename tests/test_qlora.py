"""QLoRA's library path on the CPU (bitsandbytes' NF4 runs here; the CLI still asks for CUDA, as
production QLoRA does): the quantized layer computes exactly the dequantized base plus the
adapter, gradients reach only the adapters, merging and saving keep the function."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("bitsandbytes")


def test_nf4_base_with_adapters(tiny_ckpt):
    import bitsandbytes.functional as bnbf

    from motif_megatron import parallel
    from motif_megatron.model.builder import BuildOptions, build_from_checkpoint, build_model
    from motif_megatron.training import lora

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    plain_model, args = build_from_checkpoint(
        str(tiny_ckpt), BuildOptions(params_dtype=torch.float32)
    )
    options = BuildOptions(params_dtype=torch.float32, lora=lora.LoRAConfig(rank=4, alpha=8.0))
    model = build_model(args, options)
    lora.load_base(model, plain_model.state_dict())
    fc1 = model.decoder.layers[0].mlp.linear_fc1
    # what NF4 keeps of each base weight, put back in full precision
    expected = {
        name: bnbf.dequantize_4bit(
            *bnbf.quantize_4bit(
                m.weight.detach().float().contiguous(), quant_type="nf4", blocksize=64
            )
        )
        for name, m in model.named_modules()
        if isinstance(m, lora._LoRAMixin)
    }
    for m in model.modules():  # a non-zero B so the adapters matter
        if isinstance(m, lora._LoRAMixin):
            torch.nn.init.normal_(m.lora_b, std=0.02, generator=torch.Generator().manual_seed(1))
    tokens = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(11).expand(2, -1)

    def loss():
        return model(tokens[:, :-1], pos, None, labels=tokens[:, 1:]).float().mean()

    assert lora.quantize_base(model) == len(expected) and fc1.weight.numel() == 0
    quantized = loss()
    quantized.backward()
    assert fc1.lora_a.grad is not None and fc1.lora_b.grad.abs().sum() > 0
    assert fc1.weight.grad is None
    with torch.no_grad():  # the same model with the dequantized weights as plain parameters
        reference = {n: m for n, m in model.named_modules() if isinstance(m, lora._LoRAMixin)}
        for name, m in reference.items():
            m.lora_nf4 = None
            m.weight.data = expected[name].clone()
        plain = loss()
    assert torch.allclose(quantized, plain, atol=1e-6)
    plain_model.load_state_dict(lora.merged_state_dict(model))
    model = plain_model
    with torch.no_grad():
        assert torch.allclose(loss(), plain, atol=1e-5)
