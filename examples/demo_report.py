"""The demo's report: ``report.json`` (the keys outside checks read) and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path

from motif_megatron.eval.evaluate import task_scores, task_table

ENGLISH_MARGIN = 0.5
"""The final English perplexity may exceed the base's by this share (the seed's 'without losing
its English', at toy scale)."""


def write_report(out: Path, summary: dict, evaluation: dict) -> dict:
    base, final, plain = evaluation["base"], evaluation["final"], evaluation["baseline"]
    report = {
        "korean_ppl_base": base["ko"]["ppl"],
        "korean_ppl_final": final["ko"]["ppl"],
        "english_ppl_base": base["en"]["ppl"],
        "english_ppl_final": final["en"]["ppl"],
        "korean_ppl_baseline": plain["ko"]["ppl"],
        "english_ppl_baseline": plain["en"]["ppl"],
        "token_ratio": final["token_ratio"]["ko"],
        "english_margin": ENGLISH_MARGIN,
        "evaluation": evaluation,
        **summary,
    }
    report["korean_improved"] = report["korean_ppl_final"] < 0.5 * report["korean_ppl_base"]
    report["english_kept"] = (
        report["english_ppl_final"] <= (1 + ENGLISH_MARGIN) * report["english_ppl_base"]
    )
    rows = "\n".join(
        f"| {label} | {row['ko']['ppl']:.1f} | {row['en']['ppl']:.1f} | {row['token_ratio']['ko']:.3f} |"
        for label, row in evaluation.items()
    )
    watch = json.loads((out / "ckpt_kto" / "safety_watch.json").read_text())
    scores = task_scores(evaluation)
    report["lm_eval"] = scores or None
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(
        f"""# motif-megatron demo report

A tiny Llama pretrained on English stands in for Llama-3; it is grown (LlamaPro + MSG + Korean
vocabulary), continually pretrained on a 9:1 Korean:English blend, fine-tuned (SFT + NEFTune) and
aligned (KTO). Perplexity is per token of the base Llama-3 tokenizer on held-out text, so models
with different tokenizers compare. The baseline is plain full fine-tuning of the base with the
same budget and no growth.

| model | Korean ppl | English ppl | Korean token ratio |
|---|---|---|---|
{rows}

- Korean perplexity: {report["korean_ppl_base"]:.1f} -> {report["korean_ppl_final"]:.1f}
  ({"falls clearly" if report["korean_improved"] else "does NOT fall by half"}).
- English perplexity: {report["english_ppl_base"]:.1f} -> {report["english_ppl_final"]:.1f}
  ({"within" if report["english_kept"] else "OUTSIDE"} the stated margin of +{ENGLISH_MARGIN:.0%}
  of the base); the baseline ends at {report["english_ppl_baseline"]:.1f}.
- Korean token ratio of the expanded tokenizer: {report["token_ratio"]:.3f} (tokens per base token).
- Growth is function-preserving: max |logit diff| grown vs base
  {summary["growth"]["max_abs_diff_grown_vs_base"]:.2e}.
- Safety watch (share of answers hitting the lexicon): before KTO {watch["before"]["rate"]:.0%},
  after {watch["after"]["rate"]:.0%}.

{_lm_eval_section(scores, list(evaluation))}

![evaluation](evaluation/evaluation.png)
![continual pretraining](cpt_loss.png)
![base pretraining](base_loss.png)
""",
        encoding="utf-8",
    )
    return report


def _lm_eval_section(scores: dict[str, dict[str, float]], labels: list[str]) -> str:
    if not scores:
        return (
            "lm-eval tasks were not run: no benchmark files (README 'Benchmarks for lm-eval'; "
            "`examples/demo.py --benchmark-dir`)."
        )
    table = "\n".join(task_table(scores, labels))
    return f"lm-eval on local benchmark files (`evaluation/samples/` per document):\n\n{table}"
