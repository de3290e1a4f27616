"""datatrove's quality filters with per-language settings: Gopher quality, C4 and FineWeb.

Korean uses FineWeb-2's tuned thresholds for ``kor_Hang`` (the fineweb-2 repository's
``configs/kor_Hang.yml``; datatrove 0.10.1 ships the filters, not these numbers) and its Kiwi
morpheme stop words, which datatrove's Korean word tokenizer (Kiwi) produces; English uses
datatrove's defaults (FineWeb's). Each filter is the datatrove block itself under a plain name,
so its removals are written and counted like every other filter's.
"""

from __future__ import annotations

from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherQualityFilter

from motif_megatron.data.filters import QUALITY_FILTERS
from motif_megatron.errors import UserError

KOREAN_STOP_WORDS = [
    *("의", "다", "이", "는", "에", "을", "한", "년", "하", "은", "를"),
    *("했", "고", "에서", "가", "있", "으로", "인", "월", "로", "되"),
]
"""FineWeb-2's ``kor_Hang`` stop words: Kiwi morphemes."""

SETTINGS: dict[str, dict[str, dict]] = {
    "ko": {
        "gopher": {
            "min_avg_word_length": 1,
            "max_avg_word_length": 6,
            "max_non_alpha_words_ratio": 0.791,
            "stop_words": KOREAN_STOP_WORDS,
        },
        "fineweb": {"line_punct_thr": 0.062, "new_line_ratio": 0.196},
        "c4": {},
    },
    "en": {"gopher": {}, "fineweb": {}, "c4": {}},
}

_CLASSES = dict(
    zip(QUALITY_FILTERS, (GopherQualityFilter, C4QualityFilter, FineWebQualityFilter), strict=True)
)


def _kiwi() -> None:
    """datatrove's Korean word tokenizer is Kiwi's ``sbg`` model, which kiwipiepy-model ships
    up to 0.21: say so in one line rather than fail in a worker."""
    try:
        from kiwipiepy import Kiwi

        Kiwi(model_type="sbg")
    except (ImportError, OSError):
        raise UserError(
            "Korean quality filters need Kiwi with its sbg model: "
            "pip install 'kiwipiepy<0.22' 'kiwipiepy-model<0.22' (the quality extra)"
        ) from None


def quality_filters(names: list[str], language: str | None) -> list:
    """The datatrove filters ``names`` for ``language`` (``ko`` or ``en``), named
    ``<name>_quality`` in the report."""
    if names and language not in SETTINGS:
        raise UserError(f"--quality-filters needs --language ko or en, not {language!r}")
    unknown = sorted(set(names) - set(_CLASSES))
    if unknown:
        raise UserError(f"--quality-filters {' '.join(unknown)}: use {', '.join(QUALITY_FILTERS)}")
    if names and language == "ko":
        _kiwi()
    filters = []
    for name in names:
        block = _CLASSES[name](language=language, **SETTINGS[language][name])
        block.name = f"{name}_quality"
        filters.append(block)
    return filters
