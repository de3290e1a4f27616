"""Download the wheels ``bench/gpu_env.sh`` installs on a GPU machine without network, for that
machine's Python, and split them into parts of at most ``--part-mb`` (one device transfer each).

``bench/gpu_requirements.txt`` is resolved with its dependencies; megatron-core is fetched alone
(its dependency on torch would pull a multi-GB CUDA build: the machine brings its own torch).
A wheel larger than a part is cut into pieces (``NAME.whl.piece-K``, each in a part of its own)
with ``NAME.whl.sha256`` (its SHA-256 and piece count); ``--join DIR`` (run by gpu_env.sh on the
GPU machine) puts each such wheel back together once all its pieces are there and checks it.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
MEGATRON = "megatron-core==0.16.1"


def download(python_version: str, dest: Path, *requirement: str, deps: bool = True) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
    cmd += ["--python-version", python_version, "--dest", str(dest)]
    cmd += [flag for p in PLATFORMS for flag in ("--platform", p)]
    subprocess.run([*cmd, *([] if deps else ["--no-deps"]), *requirement], check=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def cut(wheel: Path, part_bytes: int) -> list[Path]:
    """An oversized wheel as pieces of ``part_bytes`` beside it, and its checksum file."""
    pieces = []
    with wheel.open("rb") as f:
        while chunk := f.read(part_bytes):
            pieces.append(wheel.with_name(f"{wheel.name}.piece-{len(pieces) + 1}"))
            pieces[-1].write_bytes(chunk)
    wheel.with_name(f"{wheel.name}.sha256").write_text(f"{sha256(wheel)} {len(pieces)}\n")
    wheel.unlink()
    return pieces


def join(folder: Path) -> list[str]:
    """Each cut wheel under ``folder`` whose pieces are all there, joined into ``folder/joined``
    and checked against its SHA-256; returns one line per cut wheel (joined or still missing)."""
    lines = []
    for manifest in sorted(folder.rglob("*.whl.sha256")):
        digest, count = manifest.read_text().split()
        name = manifest.name[: -len(".sha256")]
        pieces = [next(folder.rglob(f"{name}.piece-{k}"), None) for k in range(1, int(count) + 1)]
        if None in pieces:
            lines.append(f"{name}: {pieces.count(None)} of {count} pieces not here yet")
            continue
        target = folder / "joined" / name
        target.parent.mkdir(exist_ok=True)
        with target.open("wb") as out:
            for piece in pieces:
                out.write(piece.read_bytes())
        if sha256(target) != digest:
            target.unlink()
            raise SystemExit(f"{name}: joined pieces do not match its SHA-256; carry them again")
        lines.append(f"{name}: joined and checked")
    return lines


def split(staging: Path, out: Path, part_bytes: int) -> list[Path]:
    """Largest first, each wheel into the first part with room (first-fit decreasing); a wheel
    larger than a part is cut into pieces first (:func:`cut`)."""
    for wheel in [w for w in staging.glob("*.whl") if w.stat().st_size > part_bytes]:
        cut(wheel, part_bytes)
    files = [*staging.glob("*.whl"), *staging.glob("*.whl.piece-*"), *staging.glob("*.sha256")]
    wheels = sorted(files, key=lambda p: p.stat().st_size, reverse=True)
    parts: list[list[Path]] = []
    sizes: list[int] = []
    for wheel in wheels:
        size = wheel.stat().st_size
        k = next((i for i, used in enumerate(sizes) if used + size <= part_bytes), None)
        if k is None:
            parts.append([])
            sizes.append(0)
            k = len(parts) - 1
        parts[k].append(wheel)
        sizes[k] += size
    folders = []
    for i, part in enumerate(parts, 1):
        folder = out / f"part-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        for wheel in part:
            shutil.move(str(wheel), folder / wheel.name)
        folders.append(folder)
    return folders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (X.Y)")
    p.add_argument("--out", default=str(ROOT / "bench/wheels"), help="folder for the parts")
    p.add_argument("--part-mb", type=int, default=60, help="largest part in MB")
    p.add_argument("--join", metavar="DIR", help="join the cut wheels under DIR (GPU machine)")
    args = p.parse_args()
    if args.join:
        print("\n".join(join(Path(args.join))))
        return
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    staging = out / "staging"
    download(args.python_version, staging, "-r", str(ROOT / "bench/gpu_requirements.txt"))
    download(args.python_version, staging, MEGATRON, deps=False)
    for folder in split(staging, out, args.part_mb * 1_000_000):
        files = [f for f in folder.iterdir() if f.is_file()]
        mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"{folder}: {len(files)} files, {mb:.1f} MB")
    staging.rmdir()


if __name__ == "__main__":
    main()
