"""Download the wheels ``bench/gpu_env.sh`` installs on a GPU machine without network, for that
machine's Python, and split them into parts of at most ``--part-mb`` (one device transfer each).

``bench/gpu_requirements.txt`` is resolved with its dependencies; megatron-core is fetched alone
(its dependency on torch would pull a multi-GB CUDA build: the machine brings its own torch).
"""

from __future__ import annotations

import argparse
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


def split(staging: Path, out: Path, part_bytes: int) -> list[Path]:
    """Largest first, each wheel into the first part with room (first-fit decreasing)."""
    wheels = sorted(staging.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
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
    args = p.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    staging = out / "staging"
    download(args.python_version, staging, "-r", str(ROOT / "bench/gpu_requirements.txt"))
    download(args.python_version, staging, MEGATRON, deps=False)
    for folder in split(staging, out, args.part_mb * 1_000_000):
        mb = sum(w.stat().st_size for w in folder.glob("*.whl")) / 1e6
        print(f"{folder}: {len(list(folder.glob('*.whl')))} wheels, {mb:.1f} MB")
    staging.rmdir()


if __name__ == "__main__":
    main()
