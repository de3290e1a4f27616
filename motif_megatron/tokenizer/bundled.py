"""The Llama-3 tokenizer shipped (xz-compressed) in ``examples/data`` for tests and the demo.

No hub is reachable at run time, so the project carries the real tokenizer files (Meta Llama 3
Community Licence, see ``examples/data/README.md``) and unpacks them on first use.
"""

from __future__ import annotations

import lzma
from pathlib import Path

from motif_megatron.errors import UserError

BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "data" / "tokenizers"


def unpack(name: str, dest: str | Path) -> Path:
    """Decompress bundled tokenizer ``name`` (e.g. ``llama3``) into ``dest`` once; returns ``dest``."""
    src, dest = BUNDLED / name, Path(dest)
    files = sorted(src.glob("*.xz"))
    if not files:
        raise UserError(f"no bundled tokenizer at {src}: run from a clone of motif-megatron")
    dest.mkdir(parents=True, exist_ok=True)
    for file in files:
        target = dest / file.name.removesuffix(".xz")
        if not target.is_file() or target.stat().st_mtime < file.stat().st_mtime:
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(lzma.decompress(file.read_bytes()))
            tmp.replace(target)
    return dest
