"""Megatron-LM's FLOPs count of a training step: one function for the planner's days, the
trainer's TFLOP/s per GPU and the benches' MFU."""

from __future__ import annotations

from motif_megatron.model.llama import LlamaArgs

PEAK_BF16 = (
    ("H200 NVL", 835e12),
    ("H200", 989.4e12),
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989.4e12),
    ("A100", 312e12),
    ("B200", 2250e12),
    ("L40S", 362e12),
)
"""Dense bf16 tensor-core peaks per device from the data sheets, FLOP/s, the more specific
part first (an H200 NVL or an H100 PCIe is not an SXM part)."""


def peak_flops(device_name: str) -> float | None:
    """The data sheet's dense bf16 peak of a device (``torch.cuda.get_device_name()``), or None
    for a device not in the table (a CPU)."""
    return next((peak for part, peak in PEAK_BF16 if part in device_name), None)


def train_flops(args: LlamaArgs, batch: int, seq: int, vocab: int) -> float:
    """FLOPs of one training step by Megatron-LM core_v0.16.1's ``num_floating_point_operations``
    (megatron/training/training.py, dense GQA + SwiGLU branch, core attention halved for the
    causal mask): 12 B s L h^2 ((1 + g/n + s/(2h)) q/h + 1.5 f/h + V / (2 L h))."""
    h, n, g = args.hidden_size, args.num_attention_heads, args.num_key_value_heads
    layers = args.num_hidden_layers
    q_ratio = args.head_dim * n / h
    attention = (1 + g / n + seq / (2 * h)) * q_ratio
    mlp = 1.5 * args.intermediate_size / h
    logits = vocab / (2 * layers * h)
    return 12 * batch * seq * layers * h * h * (attention + mlp + logits)
