#!/usr/bin/env python
"""Training tokens/s of our Megatron-Core engine vs HF ``transformers`` ``LlamaForCausalLM``
(sdpa attention) with a plain torch AdamW loop: same shape, same machine, same run.

  .venv/bin/python bench/train_throughput.py            # ANCHORS.md shape: 4 x 256, seq 256, batch 4, vocab 32k

The two loops alternate, ``--rounds`` times, and each reports its median; the ratio above 1.0
means ours is faster. Model-FLOPs utilisation uses Megatron-LM's FLOPs formula
(``num_floating_point_operations``: GQA attention, SwiGLU, logits) against this machine's
measured fp32 GEMM rate, since a CPU has no datasheet peak.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def gemm_rate(n: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 matmul FLOP/s: the 'peak' MFU is relative to."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start)


def timed(step, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=688)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    from motif_megatron import parallel
    from motif_megatron.errors import quiet_library_warnings
    from motif_megatron.model.builder import BuildOptions, build_model
    from motif_megatron.model.flops import train_flops
    from motif_megatron.model.llama import LlamaArgs
    from motif_megatron.model.schedule import Batch
    from motif_megatron.training.engine import (
        OptimConfig,
        build_optimizer,
        train_step,
        wrap_ddp,
    )

    quiet_library_warnings()
    hf_config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.groups,
        max_position_embeddings=args.seq,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))

    hf = LlamaForCausalLM._from_config(hf_config, attn_implementation="sdpa", dtype=torch.float32)
    hf.train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.01, betas=(0.9, 0.95))

    def hf_step() -> None:
        loss = hf(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    llama = LlamaArgs.from_hf_config(hf_config.to_dict())
    model = build_model(
        llama, BuildOptions(params_dtype=torch.float32, make_vocab_size_divisible_by=1)
    )
    optim = OptimConfig(lr=1e-4)
    ddps = wrap_ddp([model], optim)
    optimizer = build_optimizer(ddps, optim)
    batch = Batch(
        tokens=tokens[:, :-1],
        labels=tokens[:, 1:],
        loss_mask=torch.ones(args.batch, args.seq),
        position_ids=torch.arange(args.seq).expand(args.batch, -1),
    )

    def our_step() -> None:
        train_step(ddps, optimizer, batch, args.batch)

    for step in (our_step, hf_step):  # warm up allocator and kernels
        step()
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(timed(our_step, args.steps))
        theirs.append(timed(hf_step, args.steps))
    tokens_per_step = args.batch * args.seq
    our_tps, hf_tps = (
        tokens_per_step / statistics.median(ours),
        tokens_per_step / statistics.median(theirs),
    )
    flops = train_flops(llama, args.batch, args.seq, args.vocab)
    peak = gemm_rate()
    print(
        f"shape: {args.layers} layers x {args.hidden} hidden, ffn {args.ffn}, heads {args.heads}/{args.groups}, "
        f"seq {args.seq}, batch {args.batch}, vocab {args.vocab}, fp32, {torch.get_num_threads()} threads"
    )
    print(
        f"HF LlamaForCausalLM (sdpa) + torch AdamW: {hf_tps:.0f} tokens/s, MFU {flops * hf_tps / tokens_per_step / peak:.1%}"
    )
    print(
        f"motif-megatron (Megatron-Core engine):   {our_tps:.0f} tokens/s, MFU {flops * our_tps / tokens_per_step / peak:.1%}"
    )
    print(
        f"ratio ours/HF: {our_tps / hf_tps:.2f}x (target >= 1.0x); MFU against a measured fp32 GEMM rate of {peak / 1e9:.0f} GFLOP/s"
    )
    parallel.shutdown()


if __name__ == "__main__":
    main()
