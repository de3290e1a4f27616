"""KenLM perplexity, CCNet style: one normalisation and one SentencePiece model for train and score.

Training uses KenLM's own ``lmplz`` and ``build_binary`` (never a re-implementation); they are not
on any package registry as binaries, so the install step ``make kenlm`` (``tools/build_kenlm.py``)
builds them once from the PyPI ``kenlm`` source tarball into :func:`bin_dir`, and
:func:`find_binaries` finds them there or on ``PATH``. Scoring uses the ``kenlm`` Python module. A model ``M.arpa``/``M.bin`` sits beside ``M.json``, which names the
SentencePiece model and normalisation it was trained with, so scoring can never silently use
another (mismatched normalisation ruins perplexities without any error).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

from motif_megatron.errors import UserError

NORMALIZATION = "ccnet-nfc-v1"
KENLM_VERSION = "0.3.0"
_DIGIT = re.compile(r"\d")
_SPACE = re.compile(r"\s+")


def normalize(line: str) -> str:
    """CCNet's normalisation adapted to Hangul: NFC (never NFD), lower case, digits to 0,
    punctuation dropped, whitespace folded."""
    line = unicodedata.normalize("NFC", line).lower()
    line = _DIGIT.sub("0", line)
    line = "".join(ch for ch in line if not unicodedata.category(ch).startswith("P"))
    return _SPACE.sub(" ", line).strip()


def bin_dir() -> Path:
    """Built once per machine and user, like pip's wheel cache (the build takes minutes)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "motif-megatron" / f"kenlm-{KENLM_VERSION}" / "bin"


def _find(tool: str) -> Path | None:
    local = bin_dir() / tool
    if local.is_file():
        return local
    found = shutil.which(tool)
    return Path(found) if found else None


def find_binaries() -> tuple[Path, Path]:
    """Paths of ``lmplz`` and ``build_binary`` (the built ones, else ``PATH``'s)."""
    lmplz, build_binary = _find("lmplz"), _find("build_binary")
    if not (lmplz and build_binary):
        raise UserError(
            "KenLM's lmplz and build_binary are not built: run `make kenlm` "
            "(python tools/build_kenlm.py) once, or put them on PATH"
        )
    return lmplz, build_binary


def train(
    texts: list[str],
    out_prefix: str | Path,
    order: int = 5,
    vocab_size: int = 8000,
    memory: str = "20%",
    binary: bool = True,
) -> Path:
    """Train SentencePiece + a KenLM ``order``-gram on ``texts``; returns the model path."""
    import sentencepiece as spm

    lmplz, build_binary = find_binaries()
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [n for t in texts for line in t.splitlines() if (n := normalize(line))]
    if not lines:
        raise UserError("no text to train KenLM on after normalisation")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "normalized.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus),
            model_prefix=str(out_prefix) + ".sp",
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=0.9995,
            hard_vocab_limit=False,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=True,
            seed_sentencepiece_size=100000,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=str(out_prefix) + ".sp.model")
        pieces = Path(tmp) / "pieces.txt"
        with open(pieces, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(" ".join(sp.encode(line, out_type=str)) + "\n")
        arpa = out_prefix.with_suffix(".arpa")
        with open(pieces, "rb") as src, open(arpa, "wb") as dst:
            subprocess.run(
                [str(lmplz), "-o", str(order), "-S", memory, "-T", tmp, "--discount_fallback"],
                stdin=src,
                stdout=dst,
                stderr=subprocess.PIPE,
                check=True,
            )
    model = arpa
    if binary:
        model = out_prefix.with_suffix(".bin")
        subprocess.run(
            [str(build_binary), str(arpa), str(model)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    meta = {
        "sentencepiece": Path(str(out_prefix) + ".sp.model").name,
        "order": order,
        "normalization": NORMALIZATION,
        "lines": len(lines),
    }
    out_prefix.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return model


class KenLMScorer:
    """Document perplexity: ``10 ** (-sum(log10 p) / tokens)`` over normalised, tokenised lines."""

    def __init__(self, model: str | Path) -> None:
        model = Path(model)
        meta_path = model.with_suffix(".json")
        if not model.is_file():
            raise UserError(f"KenLM model {model} not found")
        if not meta_path.is_file():
            raise UserError(f"{meta_path} missing: train the model with tools/train_kenlm.py")
        meta = json.loads(meta_path.read_text())
        if meta.get("normalization") != NORMALIZATION:
            raise UserError(
                f"{model} was trained with normalisation {meta.get('normalization')!r}, "
                f"this version scores with {NORMALIZATION!r}: retrain it"
            )
        try:
            import kenlm
        except ImportError:
            raise UserError(
                "the perplexity stage needs the kenlm module: pip install kenlm"
            ) from None
        import sentencepiece as spm

        self.model = kenlm.Model(str(model))
        self.sp = spm.SentencePieceProcessor(model_file=str(model.parent / meta["sentencepiece"]))

    def perplexity(self, text: str) -> float:
        log10, tokens = 0.0, 0
        for line in text.splitlines():
            line = normalize(line)
            if not line:
                continue
            pieces = " ".join(self.sp.encode(line, out_type=str))
            log10 += self.model.score(pieces, bos=True, eos=True)
            tokens += len(pieces.split()) + 1
        return 10.0 ** (-log10 / tokens) if tokens else float("inf")
