#!/usr/bin/env python
"""Expansion time and peak RSS of depth + width + vocabulary growth in one streamed pass.

Generates a ~1B-parameter Llama (bf16), imports it, then grows it with LlamaPro depth, MSG width
and a vocabulary resize at once. Reports the time, the peak RSS of the growth process above the
fixed cost of the same growth on a tiny model, in units of the largest tensor (target < 1.5x),
and the checkpoint size.

  .venv/bin/python bench/growth_memory.py
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from convert_memory import peak_rss_mb, write_random_llama  # noqa: E402

from motif_megatron.checkpoint.dist import CheckpointReader  # noqa: E402


def fake_tokenizer(folder: Path, old_vocab: int, added: int) -> Path:
    """A new_tokens.json as tools/expand_tokenizer.py writes it (pieces under the old vocab)."""
    folder.mkdir(parents=True)
    tokens = [
        {"id": old_vocab + i, "text": f"t{i}", "pieces": [i % old_vocab, (7 * i) % old_vocab]}
        for i in range(added)
    ]
    (folder / "new_tokens.json").write_text(
        json.dumps({"summary": {"vocab_size": old_vocab + added}, "tokens": tokens})
    )
    return folder


def main() -> None:
    tool = str(ROOT / "tools")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total, largest = write_random_llama(
            tmp / "hf", 16, 2048, 5632, 16, 4, 32000, torch.bfloat16
        )
        write_random_llama(tmp / "hf_small", 4, 64, 128, 4, 2, 256, torch.bfloat16)
        for name in ("hf", "hf_small"):
            subprocess.run(
                [
                    sys.executable,
                    f"{tool}/convert_hf.py",
                    "import",
                    "--hf-dir",
                    str(tmp / name),
                    "--out",
                    str(tmp / f"ck_{name}"),
                ],
                check=True,
                capture_output=True,
            )
        grow = [sys.executable, f"{tool}/expand_checkpoint.py", "--depth-add", "4"]
        base = peak_rss_mb(
            [
                *grow,
                "--load",
                str(tmp / "ck_hf_small"),
                "--save",
                str(tmp / "g_small"),
                "--hidden-size",
                "80",
                "--ffn-hidden-size",
                "160",
                "--num-attention-heads",
                "8",
                "--tokenizer",
                str(fake_tokenizer(tmp / "tok_small", 256, 64)),
            ]
        )
        start = time.perf_counter()
        peak = peak_rss_mb(
            [
                *grow,
                "--load",
                str(tmp / "ck_hf"),
                "--save",
                str(tmp / "g"),
                "--hidden-size",
                "2304",
                "--ffn-hidden-size",
                "6144",
                "--num-attention-heads",
                "24",
                "--num-query-groups",
                "6",
                "--tokenizer",
                str(fake_tokenizer(tmp / "tok", 32000, 4000)),
            ]
        )
        seconds = time.perf_counter() - start
        grown = sum(f.stat().st_size for f in (tmp / "g").rglob("*") if f.is_file())
        reader = CheckpointReader(tmp / "g")
        grown_largest = max(
            math.prod(shape) * reader.dtypes[key].itemsize
            for key, shape in reader.shapes.items()
            if not key.startswith("decoder.layers.")
        )
    mb = 1024**2
    print(
        f"base checkpoint {total / mb:.0f} MB, grown {grown / mb:.0f} MB, largest tensor "
        f"{largest / mb:.0f} MB (grown shapes are ~1.3x larger)"
    )
    print(
        f"depth+width+vocab growth: {seconds:.1f}s, peak RSS {peak:.0f} MB; fixed overhead "
        f"{base:.0f} MB; above it {(peak - base) * mb / grown_largest:.2f}x the largest tensor "
        f"of the job (the grown embedding, {grown_largest / mb:.0f} MB; target < 1.5x), "
        f"{(peak - base) * mb / largest:.2f}x the largest base tensor"
    )


if __name__ == "__main__":
    main()
