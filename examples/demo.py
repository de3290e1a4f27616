#!/usr/bin/env python
"""The README's main job: the whole Motif recipe at toy scale on bundled data (CPU only).

1. Filter and deduplicate the bundled Korean and English corpora (reports of what went and why);
   hold out 10% of each for evaluation.
2. Expand the real Llama-3 tokenizer with Korean tokens (token ratio before/after).
3. Megatron shards with a 9:1 Korean:English blend.
4. A base model: a tiny Llama pretrained on the English corpus (no weights can be downloaded),
   exported to HF and imported again like a real base; TP/PP equivalence against HF.
5. Growth: LlamaPro depth + MSG width + vocabulary, with the equivalence check.
6. Continual pretraining through the stage schedule with the MSG ramp; finalize; SFT with NEFTune;
   KTO with cached reference log-probs and the safety watch.
7. Export to HF, evaluate against the base and a plain full fine-tuning baseline of the same
   budget, and write ``report.md`` / ``report.json`` with plots.

Every step is one of the project's commands with files in and out, so each can be rerun alone;
a failure names its step.
"""

from __future__ import annotations

import argparse
import json
import lzma
import subprocess
import sys
import time
from pathlib import Path

from demo_report import ENGLISH_MARGIN, write_report

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TORCHRUN = str(Path(PYTHON).parent / "torchrun")


class StepFailed(Exception):
    pass


def step(name: str, cmd: list[str]) -> str:
    print(f"\n=== {name}\n$ {' '.join(cmd)}", flush=True)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise StepFailed(f"step '{name}' failed (exit {proc.returncode})")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "", flush=True)
    print(f"--- {name}: {time.time() - start:.1f}s", flush=True)
    return proc.stdout


def last_diff(stdout: str) -> float:
    return float(stdout.strip().splitlines()[-1].split("=", 1)[1])


def hold_out(kept: Path, train: Path, heldout: Path, share: float = 0.1) -> None:
    """The last ``share`` of the kept documents (at least 5) are for evaluation only."""
    lines = kept.read_text(encoding="utf-8").splitlines()
    cut = len(lines) - max(5, int(len(lines) * share))
    heldout.parent.mkdir(parents=True, exist_ok=True)
    train.write_text("\n".join(lines[:cut]) + "\n", encoding="utf-8")
    heldout.write_text("\n".join(lines[cut:]) + "\n", encoding="utf-8")


def prepare_corpus(out: Path, tokenizer: Path) -> dict:
    """Filter + dedup the bundled corpora, hold out 10%, tokenise the rest, blend 9:1 ko:en."""
    prefixes = {}
    for lang, name in (("ko", "ko-libreoffice-help"), ("en", "en-python-docs")):
        raw = out / "raw" / f"{name}.jsonl"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_bytes(
            lzma.decompress((ROOT / f"examples/data/corpus/{name}.jsonl.xz").read_bytes())
        )
        filtered = out / "corpus" / lang
        step(
            f"filter and deduplicate the {lang} corpus",
            [
                PYTHON,
                "tools/preprocess_corpus.py",
                "--input",
                str(raw),
                "--output",
                str(filtered),
                "--language",
                lang,
                "--workers",
                "2",
            ],
        )
        hold_out(
            filtered / "kept" / "kept_00000.jsonl",
            filtered / "train.jsonl",
            out / "heldout" / f"{lang}.jsonl",
        )
        step(
            f"tokenise the kept {lang} training documents into Megatron shards",
            [
                PYTHON,
                "tools/preprocess_data.py",
                "--input",
                str(filtered / "train.jsonl"),
                "--output-prefix",
                str(out / "shards" / lang),
                "--tokenizer-model",
                str(tokenizer),
                "--append-eod",
                "--workers",
                "2",
            ],
        )
        prefixes[lang] = str(out / "shards" / f"{lang}_text_document")
    step(
        "blend 9:1 Korean:English",
        [
            PYTHON,
            "tools/mix_data.py",
            "--group",
            "ko",
            "9",
            prefixes["ko"],
            "--group",
            "en",
            "1",
            prefixes["en"],
            "--output",
            str(out / "shards" / "blend.json"),
        ],
    )
    return {
        lang: json.loads((out / "corpus" / lang / "report.json").read_text()) for lang in prefixes
    }


def grow_model(out: Path, tokenizer: Path, ckpt: Path) -> dict:
    """Expand the tokenizer with Korean tokens, then grow the model: LlamaPro depth + MSG width +
    vocabulary in one pass, and check the grown model still computes the base function."""
    kept = out / "corpus" / "ko" / "train.jsonl"
    step(
        "train a Korean BPE tokenizer",
        [
            PYTHON,
            "tools/train_tokenizer.py",
            "--input",
            str(kept),
            "--vocab-size",
            "4000",
            "--out",
            str(out / "tok_ko"),
            "--base",
            str(tokenizer),
        ],
    )
    step(
        "expand the Llama-3 tokenizer",
        [
            PYTHON,
            "tools/expand_tokenizer.py",
            "--base",
            str(tokenizer),
            "--new",
            str(out / "tok_ko"),
            "--corpus",
            str(kept),
            "--min-count",
            "20",
            "--out",
            str(out / "tok_expanded"),
        ],
    )
    step(
        "token ratio report",
        [
            PYTHON,
            "tools/tokenizer_report.py",
            "--base",
            str(tokenizer),
            "--tokenizer",
            str(out / "tok_expanded"),
            "--text",
            f"ko={out / 'heldout' / 'ko.jsonl'}",
            "--text",
            f"en={out / 'heldout' / 'en.jsonl'}",
            "--out",
            str(out / "tokenizer_report"),
        ],
    )
    grown = out / "ckpt_grown"
    step(
        "grow: LlamaPro depth + MSG width + vocabulary",
        [
            PYTHON,
            "tools/expand_checkpoint.py",
            "--load",
            str(ckpt),
            "--save",
            str(grown),
            "--depth-add",
            "2",
            "--hidden-size",
            "96",
            "--ffn-hidden-size",
            "240",
            "--num-attention-heads",
            "12",
            "--num-query-groups",
            "2",
            "--tokenizer",
            str(out / "tok_expanded"),
            "--init",
            "subword-mean",
        ],
    )
    diff = last_diff(
        step(
            "grown (masks at 0) vs base at TP=2",
            [
                TORCHRUN,
                "--standalone",
                "--nproc_per_node=2",
                "tools/check_equivalence.py",
                "--load",
                str(ckpt),
                "--load-b",
                str(grown),
                "--tp",
                "2",
                "--atol",
                "1e-5",
            ],
        )
    )
    ratio = json.loads((out / "tokenizer_report" / "tokenizer_report.json").read_text())[
        "languages"
    ]
    return {
        "max_abs_diff_grown_vs_base": diff,
        "token_ratio_ko": ratio["ko"]["token_ratio"],
        "token_ratio_en": ratio["en"]["token_ratio"],
    }


def continual_pretraining(out: Path, grown: Path) -> dict:
    """Shards of the expanded tokenizer, 9:1 Korean:English, then the staged run of
    examples/configs/demo.yaml at TP=2 (LlamaPro blocks, then all with the MSG ramp), then
    finalize the masks."""
    prefixes = {}
    for lang in ("ko", "en"):
        step(
            f"tokenise the kept {lang} documents with the expanded tokenizer",
            [
                PYTHON,
                "tools/preprocess_data.py",
                "--input",
                str(out / "corpus" / lang / "train.jsonl"),
                "--output-prefix",
                str(out / "shards_expanded" / lang),
                "--tokenizer-model",
                str(out / "tok_expanded"),
                "--append-eod",
                "--workers",
                "2",
            ],
        )
        prefixes[lang] = str(out / "shards_expanded" / f"{lang}_text_document")
    run_dir, metrics = out / "ckpt_cpt", out / "cpt_metrics.jsonl"
    step(
        "continual pretraining: llama-pro stage, then full with the MSG ramp (TP=2)",
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node=2",
            "pretrain_motif.py",
            "--config",
            "examples/configs/demo.yaml",
            "--load",
            str(grown),
            "--save",
            str(run_dir),
            "--data-path",
            "0.9",
            prefixes["ko"],
            "0.1",
            prefixes["en"],
            "--metrics-file",
            str(metrics),
        ],
    )
    step(
        "plot the loss curve",
        [
            PYTHON,
            "tools/plot_metrics.py",
            str(metrics),
            "--out",
            str(out / "cpt_loss.png"),
            "--smooth",
            "5",
        ],
    )
    final = out / "ckpt_cpt_final"
    step(
        "finalize: drop the MSG masks (now at 1)",
        [
            PYTHON,
            "tools/expand_checkpoint.py",
            "--load",
            str(run_dir),
            "--save",
            str(final),
            "--finalize",
        ],
    )
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return {
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "mean_loss_first_5": sum(losses[:5]) / 5,
        "mean_loss_last_5": sum(losses[-5:]) / 5,
        "stages": sorted({r["stage"] for r in records if "stage" in r}),
        "final_msg_mask": records[-1].get("msg_mask"),
    }


def equivalence(base: Path, ckpt: Path, layout: list[str]) -> float:
    """Megatron logits vs HF at a TP/PP layout (two torchrun processes on gloo unless TP=PP=1)."""
    launcher = [PYTHON] if not layout else [TORCHRUN, "--standalone", "--nproc_per_node=2"]
    name = f"forward at {' '.join(layout) or 'TP=1'} vs HF"
    cmd = [
        *launcher,
        "tools/check_equivalence.py",
        "--hf-dir",
        str(base),
        "--load",
        str(ckpt),
        *layout,
        "--atol",
        "1e-4",
    ]
    return last_diff(step(name, cmd))


def sample_texts(n: int = 4) -> list[str]:
    texts = []
    for corpus in ("ko-libreoffice-help", "en-python-docs"):
        raw = lzma.decompress((ROOT / f"examples/data/corpus/{corpus}.jsonl.xz").read_bytes())
        lines = raw.decode().splitlines()[:n]
        texts += [json.loads(line)["text"][:400] for line in lines]
    return texts


def compare_hf(base: Path, exported: Path, texts: list[str]) -> dict:
    """HF logits of the original and the exported model on real Korean and English text."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(exported, local_files_only=True)
    a = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    b = AutoModelForCausalLM.from_pretrained(exported, local_files_only=True)
    diffs, tokens = [], 0
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids
            tokens += ids.numel()
            diffs.append(float((a(ids).logits - b(ids).logits).abs().max()))
    before = {k: v for f in sorted(base.glob("*.safetensors")) for k, v in load_file(f).items()}
    after = {k: v for f in sorted(exported.glob("*.safetensors")) for k, v in load_file(f).items()}
    bitwise = before.keys() == after.keys() and all(
        torch.equal(before[k], after[k]) for k in before
    )
    return {
        "texts": len(texts),
        "tokens": tokens,
        "hf_logit_max_abs_diff": max(diffs),
        "weights_bitwise_identical": bitwise,
    }


def train(name: str, config: str, load: Path, save: Path, data: list[str], *flags: str) -> Path:
    """``pretrain_motif.py`` under torchrun (2 processes: data parallel unless the config splits
    the model); returns the metrics file."""
    metrics = save.with_suffix(".jsonl")
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "pretrain_motif.py", "--config", config]
    cmd += ["--load", str(load), "--save", str(save), "--data-path", *data]
    step(name, [*cmd, "--metrics-file", str(metrics), *flags])
    return metrics


def make_base(out: Path, tokenizer: Path, preset: str) -> Path:
    """A random tiny Llama with the real tokenizer, pretrained on the English shard, exported to
    HF and imported again: the demo's stand-in for a downloaded base model."""
    init_hf, init, pretrained = out / "hf_init", out / "ckpt_init", out / "ckpt_pretrain_en"
    step(
        "create a random tiny Llama with the real tokenizer",
        [
            PYTHON,
            "-c",
            "from motif_megatron.model.presets import random_hf_model; "
            f"random_hf_model({str(init_hf)!r}, {preset!r}, {str(tokenizer)!r}, seed=0)",
        ],
    )
    step(
        "import HF -> Megatron",
        [PYTHON, "tools/convert_hf.py", "import", "--hf-dir", str(init_hf), "--out", str(init)],
    )
    metrics = train(
        "pretrain the base on English (stands in for Llama-3)",
        "examples/configs/demo_base.yaml",
        init,
        pretrained,
        [str(out / "shards" / "en_text_document")],
    )
    step(
        "plot the base pretraining",
        [
            PYTHON,
            "tools/plot_metrics.py",
            str(metrics),
            "--out",
            str(out / "base_loss.png"),
            "--smooth",
            "10",
        ],
    )
    step(
        "export the base to HF",
        [
            PYTHON,
            "tools/convert_hf.py",
            "export",
            "--load",
            str(pretrained),
            "--out",
            str(out / "hf_base"),
        ],
    )
    step(
        "import the HF base like a downloaded model",
        [
            PYTHON,
            "tools/convert_hf.py",
            "import",
            "--hf-dir",
            str(out / "hf_base"),
            "--out",
            str(out / "ckpt_base"),
        ],
    )
    return out / "ckpt_base"


def baseline(out: Path, base: Path) -> Path:
    """The forgetting comparison: plain full fine-tuning of the base on the same 9:1 blend
    (its own tokenizer, no growth), with the continual-pretraining budget."""
    shards = out / "shards"
    blend = ["0.9", str(shards / "ko_text_document"), "0.1", str(shards / "en_text_document")]
    train(
        "baseline: full fine-tuning of the base, same budget",
        "examples/configs/demo_baseline.yaml",
        base,
        out / "ckpt_baseline",
        blend,
    )
    return out / "ckpt_baseline"


def posttrain(out: Path, cpt: Path) -> Path:
    """SFT with NEFTune on the bundled instructions, then KTO on the bundled feedback, then HF."""
    data = ROOT / "examples" / "data" / "posttrain"
    common = ["--config", "examples/configs/demo_sft.yaml"]
    launch = [TORCHRUN, "--standalone", "--nproc_per_node=2", "posttrain_motif.py"]
    step(
        "SFT with NEFTune (alpha 5)",
        [
            *launch,
            "sft",
            *common,
            "--load",
            str(cpt),
            "--save",
            str(out / "ckpt_sft"),
            "--sft-data",
            str(data / "sft.jsonl"),
            "--neftune-alpha",
            "5",
            "--metrics-file",
            str(out / "sft_metrics.jsonl"),
        ],
    )
    step(
        "KTO with cached reference log-probs and the safety watch",
        [
            *launch,
            "kto",
            *common,
            "--load",
            str(out / "ckpt_sft"),
            "--save",
            str(out / "ckpt_kto"),
            "--kto-data",
            str(data / "kto.jsonl"),
            "--train-iters",
            "10",
            "--lr",
            "5e-5",
            "--metrics-file",
            str(out / "kto_metrics.jsonl"),
        ],
    )
    step(
        "export the final model to HF",
        [
            PYTHON,
            "tools/convert_hf.py",
            "export",
            "--load",
            str(out / "ckpt_kto"),
            "--out",
            str(out / "hf_final"),
        ],
    )
    return out / "ckpt_kto"


def evaluate(out: Path, checkpoints: dict[str, Path], lm_eval: list[str]) -> dict:
    cmd = [PYTHON, "tools/evaluate.py", "--out", str(out / "evaluation"), "--max-docs", "40"]
    cmd += [f"--load={label}={path}" for label, path in checkpoints.items()]
    cmd += [
        f"--text=ko={out / 'heldout' / 'ko.jsonl'}",
        f"--text=en={out / 'heldout' / 'en.jsonl'}",
        *lm_eval,
    ]
    what = "held-out Korean and English" + (" and lm-eval tasks" if lm_eval else "")
    step(f"evaluate on {what}", cmd)
    return json.loads((out / "evaluation" / "evaluation.json").read_text())["checkpoints"]


def lm_eval_flags(folder: str | None, tasks: str, limit: int) -> list[str]:
    """``tools/evaluate.py`` flags for the lm-eval tasks, or none (with a note) when the
    benchmark files are not there: nothing here can download them."""
    from motif_megatron.errors import UserError
    from motif_megatron.eval import benchmarks

    spec = benchmarks.TaskSpec(tasks.split(","), folder)
    try:
        benchmarks.check_files(spec)
    except UserError as exc:
        print(f"lm-eval tasks skipped: {exc}", flush=True)
        return []
    return [f"--tasks={tasks}", f"--benchmark-dir={spec.folder}", f"--limit={limit}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="outputs/demo", help="output folder")
    parser.add_argument(
        "--preset", default="tiny", help="model shape (motif_megatron.model.presets)"
    )
    parser.add_argument(
        "--benchmark-dir",
        help="benchmark files for the lm-eval tasks (README 'Benchmarks for lm-eval'; default: "
        "$MOTIF_BENCHMARKS, else data/benchmarks); without them the tasks are skipped",
    )
    parser.add_argument(
        "--tasks", default="local_korean,local_english", help="lm-eval tasks when files exist"
    )
    parser.add_argument("--limit", type=int, default=10, help="lm-eval documents per task")
    args = parser.parse_args()
    lm_eval = lm_eval_flags(args.benchmark_dir, args.tasks, args.limit)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, exported = out / "tokenizer", out / "hf_export"
    started = time.time()
    try:
        step(
            "unpack the bundled Llama-3 tokenizer",
            [
                PYTHON,
                "-c",
                f"from motif_megatron.tokenizer.bundled import unpack; unpack('llama3', {str(tokenizer)!r})",
            ],
        )
        corpus = prepare_corpus(out, tokenizer)
        ckpt = make_base(out, tokenizer, args.preset)
        base = out / "hf_base"
        tp1 = equivalence(base, ckpt, [])
        tp2 = equivalence(base, ckpt, ["--tp", "2"])
        pp2 = equivalence(base, ckpt, ["--pp", "2"])
        step(
            "export Megatron -> HF",
            [PYTHON, "tools/convert_hf.py", "export", "--load", str(ckpt), "--out", str(exported)],
        )
        print(
            "\n=== compare exported HF model with the base on real Korean and English text",
            flush=True,
        )
        roundtrip = compare_hf(base, exported, sample_texts())
        growth = grow_model(out, tokenizer, ckpt)
        training = continual_pretraining(out, out / "ckpt_grown")
        plain = baseline(out, ckpt)
        final = posttrain(out, out / "ckpt_cpt_final")
        evaluation = evaluate(
            out,
            {"base": ckpt, "baseline": plain, "continual": out / "ckpt_cpt_final", "final": final},
            lm_eval,
        )
    except StepFailed as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        sys.exit(1)
    summary = {
        "corpus": {
            lang: {
                k: r[k]
                for k in ("input", "kept", "filtered", "rejected", "input_chars", "kept_chars")
            }
            for lang, r in corpus.items()
        },
        "growth": growth,
        "continual_pretraining": training,
        "max_abs_diff_tp1": tp1,
        "max_abs_diff_tp2": tp2,
        "max_abs_diff_pp2": pp2,
        **roundtrip,
        "seconds": round(time.time() - started, 1),
    }
    (out / "roundtrip.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_report(out, summary, evaluation)
    print(json.dumps({k: v for k, v in report.items() if k != "evaluation"}, indent=2))
    ok = (
        max(tp1, tp2, pp2) < 1e-4
        and roundtrip["weights_bitwise_identical"]
        and roundtrip["hf_logit_max_abs_diff"] == 0.0
        and growth["max_abs_diff_grown_vs_base"] < 1e-5
        and training["final_msg_mask"] == 1.0
    )
    print(
        f"\nKorean perplexity {report['korean_ppl_base']:.1f} -> {report['korean_ppl_final']:.1f} "
        f"({'fell by more than half' if report['korean_improved'] else 'did NOT fall by half'}); "
        f"English {report['english_ppl_base']:.1f} -> {report['english_ppl_final']:.1f} "
        f"({'within' if report['english_kept'] else 'OUTSIDE'} +{ENGLISH_MARGIN:.0%})"
    )
    print(f"{'PASS' if ok else 'FAIL'}: wrote {out / 'report.md'} and {out / 'report.json'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
