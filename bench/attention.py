#!/usr/bin/env python
"""The local spec's core attention: torch's scaled_dot_product_attention (``--attention-backend
flash``, the default without Transformer Engine) vs Megatron-Core's unfused module, one training
step (forward and backward) of the same 4-layer model at long sequences.

  .venv/bin/python bench/attention.py                  # seq 2048 and 4096, batch 1

Each (backend, sequence) runs in its own process, so its peak RSS is its own; the step time is
the median of ``--steps`` after one warm-up. Ratios below 1.0 mean SDPA takes less.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def child(seq: int, backend: str, steps: int) -> dict:
    import torch

    from motif_megatron import parallel
    from motif_megatron.errors import quiet_library_warnings
    from motif_megatron.model.builder import BuildOptions, build_model
    from motif_megatron.model.llama import LlamaArgs
    from motif_megatron.model.presets import hf_config

    quiet_library_warnings()
    parallel.initialize(parallel.ParallelConfig(1, 1), seed=0)
    config = hf_config(
        "tiny", 1024, hidden_size=256, intermediate_size=688, max_position_embeddings=seq
    )
    args = LlamaArgs.from_hf_config({"model_type": "llama", **config})
    options = BuildOptions(params_dtype=torch.float32, attention_backend=backend)
    model = build_model(args, options)
    tokens = torch.randint(0, 1024, (1, seq), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(seq).unsqueeze(0)

    def step() -> float:
        start = time.perf_counter()
        model(tokens, positions, None, labels=tokens).mean().backward()
        return time.perf_counter() - start

    step()
    times = [step() for _ in range(steps)]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"step_s": statistics.median(times), "peak_rss_mb": peak_kb / 1024}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--child", nargs=2, metavar=("SEQ", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.steps)))
        return
    for seq in args.seqs:
        runs = {}
        for backend in ("flash", "unfused"):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(seq),
                backend,
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[backend] = json.loads(out.strip().splitlines()[-1])
        sdpa, unfused = runs["flash"], runs["unfused"]
        print(
            f"seq {seq}: SDPA {sdpa['step_s']:.2f} s, {sdpa['peak_rss_mb']:.0f} MB; unfused "
            f"{unfused['step_s']:.2f} s, {unfused['peak_rss_mb']:.0f} MB: time "
            f"{sdpa['step_s'] / unfused['step_s']:.2f}x, peak memory "
            f"{sdpa['peak_rss_mb'] / unfused['peak_rss_mb']:.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
