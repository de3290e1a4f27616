#!/usr/bin/env python
"""Peak memory of streamed HF <-> Megatron conversion on a generated ~1B-parameter Llama.

Reference measured in the same run: ``safetensors.torch.load_file`` of every shard, i.e. what a
converter that materialises the whole model first (as Megatron-LM's HF loaders do) costs at the least. Reports peak RSS of each process, the largest single tensor,
the checkpoint size, and the streaming overhead in units of the largest tensor after subtracting
the fixed cost of a process that imports the same libraries and converts a tiny model.

  .venv/bin/python bench/convert_memory.py --layers 16 --hidden 2048 --ffn 5632
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from motif_megatron.checkpoint.hf_io import SafetensorsWriter  # noqa: E402


def write_random_llama(
    out: Path,
    layers: int,
    hidden: int,
    ffn: int,
    heads: int,
    kv: int,
    vocab: int,
    dtype: torch.dtype,
) -> tuple[int, int]:
    """An HF Llama directory with random weights, written tensor by tensor; (bytes, largest)."""
    d = hidden // heads
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * d, hidden),
            p + "self_attn.k_proj.weight": (kv * d, hidden),
            p + "self_attn.v_proj.weight": (kv * d, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * d),
            p + "mlp.gate_proj.weight": (ffn, hidden),
            p + "mlp.up_proj.weight": (ffn, hidden),
            p + "mlp.down_proj.weight": (hidden, ffn),
        }
    writer = SafetensorsWriter(out, [(n, s, dtype) for n, s in shapes.items()], 2 * 1024**3)
    gen = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        writer.write(name, (torch.randn(shape, generator=gen) * 0.02).to(dtype))
    writer.close()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 4096,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "tie_word_embeddings": False,
    }
    (out / "config.json").write_text(json.dumps(config))
    size = {
        n: torch.Size(s).numel() * torch.empty((), dtype=dtype).element_size()
        for n, s in shapes.items()
    }
    # the largest tensor the converter holds: fc1 = [gate; up] of one layer, or the embedding
    return sum(size.values()), max(max(size.values()), 2 * ffn * hidden * 2)


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak RSS (MB) of one child process, run alone."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return int(out.stdout.strip()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--ffn", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    tool = str(ROOT / "tools" / "convert_hf.py")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total, largest = write_random_llama(
            tmp / "hf",
            args.layers,
            args.hidden,
            args.ffn,
            args.heads,
            args.kv_heads,
            args.vocab,
            dtype,
        )
        write_random_llama(tmp / "hf_small", 2, 64, 128, 4, 2, 256, dtype)
        base_import = peak_rss_mb(
            [
                sys.executable,
                tool,
                "import",
                "--hf-dir",
                str(tmp / "hf_small"),
                "--out",
                str(tmp / "ck_small"),
            ]
        )
        base_export = peak_rss_mb(
            [
                sys.executable,
                tool,
                "export",
                "--load",
                str(tmp / "ck_small"),
                "--out",
                str(tmp / "out_small"),
            ]
        )
        imp = peak_rss_mb(
            [sys.executable, tool, "import", "--hf-dir", str(tmp / "hf"), "--out", str(tmp / "ck")]
        )
        exp = peak_rss_mb(
            [sys.executable, tool, "export", "--load", str(tmp / "ck"), "--out", str(tmp / "out")]
        )
        hf = peak_rss_mb(
            [
                sys.executable,
                "-c",
                "import sys, pathlib; from safetensors.torch import "
                "load_file; t = [{k: v.clone() for k, v in load_file(f).items()} for f in "
                "pathlib.Path(sys.argv[1]).glob('*.safetensors')]",
                str(tmp / "hf"),
            ]
        )
    mb = 1024**2
    rows = [("import (streamed)", imp, base_import), ("export (streamed)", exp, base_export)]
    print(f"model: {total / mb:.0f} MB {args.dtype}, largest tensor {largest / mb:.0f} MB")
    print(f"reference: load-everything (safetensors load_file + materialise) peak RSS {hf:.0f} MB")
    for name, peak, base in rows:
        over = (peak - base) * mb / largest
        print(
            f"{name}: peak RSS {peak:.0f} MB = {peak / hf:.2f}x load-everything; fixed overhead "
            f"{base:.0f} MB; above it {over:.2f}x the largest tensor (target < 1.5x)"
        )


if __name__ == "__main__":
    main()
