#!/usr/bin/env python
"""Convert between HF Llama checkpoints and Megatron-Core distributed checkpoints.

  python tools/convert_hf.py import --hf-dir HF --out CKPT --tp 2 --pp 1
  python tools/convert_hf.py export --load CKPT --out HF

Both directions stream tensor by tensor, keep the native dtype, and produce checkpoints that load
at any TP/PP. Import also copies the tokenizer and writes ``motif_model.json``.
"""

import argparse

from motif_megatron.errors import quiet_library_warnings, run_cli
from motif_megatron.memory import return_freed_memory


def parse_args() -> argparse.Namespace:
    from motif_megatron.cli import add_fields
    from motif_megatron.training.arguments import TrainConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF directory -> Megatron checkpoint")
    imp.add_argument(
        "--hf-dir", required=True, help="HF model directory (config.json + safetensors)"
    )
    imp.add_argument("--out", required=True, help="checkpoint root to write")
    imp.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel size the checkpoint is meant for "
        "(validated, and sets the vocab padding; any TP can load it)",
    )
    imp.add_argument(
        "--pp", type=int, default=1, help="pipeline-parallel size the checkpoint is meant for"
    )
    imp.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=128,
        help="pad the vocabulary to a multiple of this times --tp (Megatron-LM's rule)",
    )
    exp = sub.add_parser("export", help="Megatron checkpoint -> HF directory")
    exp.add_argument("--load", required=True, help="checkpoint root (or one iteration folder)")
    exp.add_argument("--out", required=True, help="HF directory to write")
    exp.add_argument("--max-shard-size-gb", type=float, default=5.0, help="safetensors shard size")
    add_fields(exp, TrainConfig, only=("allow_partial",))
    return parser.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    quiet_library_warnings()
    return_freed_memory()  # streamed: keep peak RSS near the largest tensor
    from motif_megatron.checkpoint import convert

    if args.command == "import":
        out = convert.import_hf(
            args.hf_dir, args.out, args.tp, args.pp, args.make_vocab_size_divisible_by
        )
        print(f"wrote Megatron checkpoint {out}")
    else:
        shard_bytes = int(args.max_shard_size_gb * 1024**3)
        allow_partial = getattr(args, "allow_partial", False)
        out = convert.export_hf(args.load, args.out, shard_bytes, allow_partial)
        print(f"wrote HF model {out}")


if __name__ == "__main__":
    main()
