#!/usr/bin/env python
"""Compare a tokenizer with its base on held-out Korean and English text: Markdown + PNG + JSON.

  python tools/tokenizer_report.py --base llama3_tok --tokenizer tok/llama3-ko \
      --text ko=heldout_ko.jsonl --text en=heldout_en.jsonl --out reports/tokenizer

Reports the token ratio (new tokens / base tokens on the same text), fertility (tokens per word),
characters per token, encode throughput of both, and the most frequent added tokens.
"""

import argparse
import json
import time
from pathlib import Path

from motif_megatron.errors import UserError, run_cli


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="base HF tokenizer directory")
    p.add_argument("--tokenizer", required=True, help="expanded (or other) HF tokenizer directory")
    p.add_argument(
        "--text",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="held-out corpus per language, e.g. ko=heldout.jsonl (repeatable)",
    )
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args()


@run_cli
def main() -> None:
    args = parse_args()
    from tokenizers import Tokenizer

    from motif_megatron.data.readers import Document, iter_documents
    from motif_megatron.reports import write_report
    from motif_megatron.tokenizer.metrics import token_ratio, token_stats

    base = Tokenizer.from_file(str(Path(args.base) / "tokenizer.json"))
    new = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for spec in args.text:
        if "=" not in spec:
            raise UserError(f"--text {spec}: expected NAME=FILE")
        name, path = spec.split("=", 1)
        texts = [d.text for d in iter_documents(path) if isinstance(d, Document)]
        timing = {}
        stats = {}
        for label, tok in (("base", base), ("new", new)):
            start = time.perf_counter()
            stats[label] = token_stats(tok, texts)
            timing[label] = time.perf_counter() - start
        rows[name] = {
            "documents": len(texts),
            "token_ratio": token_ratio(stats["new"].tokens, stats["base"].tokens),
            "fertility_base": stats["base"].fertility,
            "fertility_new": stats["new"].fertility,
            "chars_per_token_base": stats["base"].chars_per_token,
            "chars_per_token_new": stats["new"].chars_per_token,
            "encode_speed_vs_base": timing["base"] / max(timing["new"], 1e-9),
        }
    added = []
    new_tokens = Path(args.tokenizer) / "new_tokens.json"
    if new_tokens.is_file():
        added = sorted(json.loads(new_tokens.read_text())["tokens"], key=lambda t: -t["count"])[:40]
    lines = [
        "# Tokenizer report",
        "",
        f"base `{args.base}` vs `{args.tokenizer}`",
        "",
        "| text | docs | token ratio | fertility base -> new | chars/token base -> new | encode speed vs base |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['documents']} | {r['token_ratio']:.3f} | {r['fertility_base']:.2f} -> "
            f"{r['fertility_new']:.2f} | {r['chars_per_token_base']:.2f} -> "
            f"{r['chars_per_token_new']:.2f} | {r['encode_speed_vs_base']:.2f}x |"
        )
    if added:
        lines += [
            "",
            "Most frequent added tokens: "
            + ", ".join(f"`{t['text']}` ({t['count']})" for t in added[:30] if t["text"]),
        ]
    record = {"languages": rows, "top_added": added}
    write_report(out, "tokenizer_report", record, lines, lambda plt: _draw(plt, rows))
    for name, r in rows.items():
        print(
            f"{name}: token ratio {r['token_ratio']:.3f}, fertility {r['fertility_base']:.2f} -> "
            f"{r['fertility_new']:.2f}"
        )


def _draw(plt, rows: dict):
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(rows)
    ax.bar(
        [n + " base" for n in names], [rows[n]["chars_per_token_base"] for n in names], color="grey"
    )
    ax.bar(
        [n + " new" for n in names],
        [rows[n]["chars_per_token_new"] for n in names],
        color="tab:blue",
    )
    ax.set_ylabel("characters per token")
    ax.set_title("token ratio: " + ", ".join(f"{n} {rows[n]['token_ratio']:.2f}" for n in names))
    return fig


if __name__ == "__main__":
    main()
