"""Each filter fires each of its reasons on a tiny text, and keeps clean text."""

from __future__ import annotations

import numpy as np
import pytest

from motif_megatron.data.filters.repetition import RepetitionFilter
from motif_megatron.data.filters.text import (
    HangulRatioFilter,
    LatinRatioFilter,
    LengthFilter,
    NumericSequenceFilter,
)
from motif_megatron.data.thresholds import PerplexityThresholds

CLEAN_KO = "한국어 문서는 여러 문장으로 이루어져 있습니다. 이 문장은 필터를 통과해야 합니다. 날씨가 좋습니다."


@pytest.mark.parametrize(
    ("flt", "text", "reason"),
    [
        (LengthFilter(min_chars=20), "짧은 글", "min_chars"),
        (LengthFilter(max_chars=10, min_chars=None), "아주 긴 문서입니다 정말로", "max_chars"),
        (LengthFilter(min_chars=None, min_words=5), "단어 세개", "min_words"),
        (
            HangulRatioFilter(0.5),
            "This page was never translated into Korean at all.",
            "hangul_ratio",
        ),
        (LatinRatioFilter(0.5), CLEAN_KO, "latin_ratio"),
        (
            NumericSequenceFilter(),
            "국도는 1호선, 2호선, 4호선, 13호선, 15호선, 18호선, 21호선 입니다",
            "numeric_frac",
        ),
        (
            NumericSequenceFilter(max_numeric_frac=None, max_run=10),
            "목록 " + " ".join(map(str, range(86, 106))) + " 끝 " + CLEAN_KO,
            "numeric_run",
        ),
        (
            RepetitionFilter(),
            "반복되는 문단\n\n반복되는 문단\n\n반복되는 문단\n\n다른 문단",
            "dup_para_frac",
        ),
        (
            RepetitionFilter(dup_para_frac=None),
            "긴 반복 문단 " * 20 + "\n\n" + "긴 반복 문단 " * 20 + "\n\n짧음",
            "dup_para_char_frac",
        ),
        (
            RepetitionFilter(dup_para_frac=None, dup_para_char_frac=None),
            "같은 줄\n같은 줄\n같은 줄\n다른 줄",
            "dup_line_frac",
        ),
        (
            RepetitionFilter(dup_para_frac=None, dup_para_char_frac=None, dup_line_frac=None),
            "아주 긴 같은 줄입니다 정말로\n아주 긴 같은 줄입니다 정말로\n짧은 줄 하나\n짧은 줄 둘\n짧은 줄 셋",
            "dup_line_char_frac",
        ),
        (
            RepetitionFilter(
                dup_para_frac=None,
                dup_para_char_frac=None,
                dup_line_frac=None,
                dup_line_char_frac=None,
            ),
            "가나 다라 " * 10 + "마바 사아 자차 카타",
            "top_2gram_frac",
        ),
        (
            RepetitionFilter(
                dup_para_frac=None,
                dup_para_char_frac=None,
                dup_line_frac=None,
                dup_line_char_frac=None,
                top_ngram={},
            ),
            " ".join(f"w{i}" for i in range(10)) * 2 + " " + " ".join(f"u{i}" for i in range(10)),
            "dup_5gram_frac",
        ),
    ],
)
def test_filter_fires(flt, text, reason):
    assert flt.check(text) == reason


@pytest.mark.parametrize(
    "flt", [LengthFilter(), HangulRatioFilter(), NumericSequenceFilter(), RepetitionFilter()]
)
def test_clean_korean_is_kept(flt):
    assert flt.check(CLEAN_KO) is None


def test_numeric_run_needs_adjacent_numbers():
    numbered = " ".join(
        f"{i}. 항목 설명" for i in range(1, 30)
    )  # a numbered list, not a number dump
    assert NumericSequenceFilter(max_numeric_frac=None).check(numbered) is None


def test_trimmed_mean_thresholds_drop_both_tails():
    rng = np.random.default_rng(0)
    core = np.exp(rng.normal(5.0, 0.3, size=1000))
    scores = np.concatenate([core, [1.5, 2.0], [1e5, 3e5]])  # repetition-like and noise-like
    low, high = PerplexityThresholds(trim=0.1, k=3.0).bounds(scores)
    assert low > 2.0 and high < 1e5
    assert ((core >= low) & (core <= high)).mean() > 0.95  # trimmed std is ~0.66 sigma
    assert PerplexityThresholds(method="fixed", low=1, high=9).bounds(scores) == (1, 9)
    low, high = PerplexityThresholds(method="percentile").bounds(scores)
    assert low == pytest.approx(np.percentile(scores, 5)) and high == pytest.approx(
        np.percentile(scores, 95)
    )


def test_merged_score_summaries_give_the_bounds_of_all_scores(tmp_path):
    """Per-task summaries, merged (one through a file), give the bounds all scores in memory
    give, within the documented (1 + k) bin widths of log-perplexity (2^-10 each)."""
    from functools import reduce

    from motif_megatron.data.thresholds import WIDTH, ScoreSummary

    rng = np.random.default_rng(1)
    scores = np.concatenate(
        [np.exp(rng.normal(5.5, 0.6, 200_000)), np.exp(rng.normal(9, 2, 3_000)), [np.inf, 1.0]]
    )
    rng.shuffle(scores)
    summaries = []
    for part in np.array_split(scores, [10, 5_000, 90_000, 150_000]):
        summary = ScoreSummary()
        summary.add(part)
        summaries.append(summary)
    summaries[0].save(tmp_path / "task0.npz")
    summaries[0] = ScoreSummary.load(tmp_path / "task0.npz")
    merged = reduce(ScoreSummary.merge, summaries)
    assert merged.count.sum() == len(scores) - 1  # the infinite score is left out, as bounds does
    for thresholds, slack in (
        (PerplexityThresholds(trim=0.1, k=2.0), 3),
        (PerplexityThresholds(trim=0.05, k=3.0), 4),
        (PerplexityThresholds(trim=0.0, k=2.0), 3),
        (PerplexityThresholds(method="percentile"), 1),
    ):
        exact = np.log(thresholds.bounds(scores))
        approx = np.log(thresholds.bounds_from(merged))
        assert np.abs(approx - exact).max() <= slack * WIDTH, (thresholds, exact, approx)
    assert PerplexityThresholds(method="fixed", low=1, high=9).bounds_from(merged) == (1, 9)
    assert PerplexityThresholds().bounds_from(ScoreSummary()) == (None, None)
