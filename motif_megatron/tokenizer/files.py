"""The files that make a tokenizer directory, as HF writes them, plus our expansion record."""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "new_tokens.json",  # an expanded tokenizer's record (the vocabulary growth reads it)
)


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    """Copy whichever tokenizer files exist; returns the names copied."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied
