#!/usr/bin/env python
"""Peak RSS of a staged run against a one-stage run of the same length (target: within 10%).

At a stage boundary the trainer builds a new model chunk, DDP buffers and optimizer for the next
stage; it must free the previous ones first, or an 8B model runs out of memory at the first EEVE
boundary. Both runs train the same random Llama (real Llama-3 vocabulary, so the embedding and
output layer dominate like at 8B) on the bundled Korean corpus for the same iterations:

  one stage:     full x 6
  three stages:  full x 2 -> regex:decoder x 2 -> full x 2

  .venv/bin/python bench/stage_memory.py [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from convert_memory import peak_rss_mb  # noqa: E402

from motif_megatron.model.presets import random_hf_model  # noqa: E402
from motif_megatron.tokenizer.bundled import unpack  # noqa: E402

STAGED = """stages:
  - {name: full, iters: 2}
  - {name: 'regex:decoder', iters: 2}
  - {name: full, iters: 2}
"""


def prepare(tmp: Path, hidden: int, layers: int) -> tuple[Path, str]:
    """A converted random Llama and a Korean shard of its tokenizer."""
    tokenizer = unpack("llama3", tmp / "tok")
    hf = random_hf_model(
        tmp / "hf",
        "tiny",
        tokenizer,
        hidden_size=hidden,
        intermediate_size=hidden * 11 // 4,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
    )
    python = sys.executable
    subprocess.run(
        [python, "tools/convert_hf.py", "import", "--hf-dir", str(hf), "--out", str(tmp / "ck")],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    import lzma

    corpus = tmp / "ko.jsonl"
    corpus.write_bytes(
        lzma.decompress((ROOT / "examples/data/corpus/ko-libreoffice-help.jsonl.xz").read_bytes())
    )
    subprocess.run(
        [
            *(python, "tools/preprocess_data.py", "--input", str(corpus)),
            *("--output-prefix", str(tmp / "ko"), "--tokenizer-model", str(hf), "--append-eod"),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return tmp / "ck", str(tmp / "ko_text_document")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt, data = prepare(tmp, args.hidden, args.layers)
        (tmp / "staged.yaml").write_text(STAGED)
        base = [sys.executable, "pretrain_motif.py", "--load", str(ckpt), "--data-path", data]
        base += ["--seq-length", "64", "--micro-batch-size", "1", "--global-batch-size", "2"]
        base += ["--train-iters", "6", "--lr", "1e-3"]
        one = peak_rss_mb([*base, "--save", str(tmp / "one")])
        three = peak_rss_mb(
            [*base, "--save", str(tmp / "three"), "--config", str(tmp / "staged.yaml")]
        )
    ratio = three / one
    print(f"model: hidden {args.hidden}, {args.layers} layers, Llama-3 vocabulary (fp32, Adam)")
    print(f"peak RSS one stage (full x 6):                 {one:8.0f} MB")
    print(f"peak RSS three stages (full, decoder, full):   {three:8.0f} MB")
    print(f"ratio three/one: {ratio:.3f} (target <= 1.10) {'OK' if ratio <= 1.10 else 'OVER'}")


if __name__ == "__main__":
    main()
