#!/usr/bin/env python
"""Build KenLM's ``lmplz`` and ``build_binary`` once, the install step behind ``make kenlm``.

  python tools/build_kenlm.py

They are on no package registry as binaries: this downloads the PyPI ``kenlm`` source tarball,
installs Debian's Boost packages when they are missing (as root, with apt-get), and builds the two
programs with cmake into the folder ``motif_megatron.data.kenlm`` looks in (the user's cache).
Does nothing when they are already there.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from motif_megatron.data.kenlm import KENLM_VERSION, bin_dir
from motif_megatron.errors import UserError, run_cli

BOOST_PACKAGES = (
    "libboost-program-options-dev",
    "libboost-system-dev",
    "libboost-thread-dev",
    "libboost-test-dev",
)


def _boost_present() -> bool:
    return (
        Path("/usr/include/boost/program_options.hpp").is_file()
        and Path("/usr/include/boost/thread.hpp").is_file()
    )


def build(log=print) -> tuple[Path, Path]:
    """Paths of the built ``lmplz`` and ``build_binary``, building them when missing."""
    if all((bin_dir() / tool).is_file() for tool in ("lmplz", "build_binary")):
        return bin_dir() / "lmplz", bin_dir() / "build_binary"
    if not _boost_present():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise UserError(
                "KenLM's lmplz needs Boost: apt-get install " + " ".join(BOOST_PACKAGES)
            )
        log("installing Boost (Debian packages) for KenLM ...")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *BOOST_PACKAGES],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    for tool in ("cmake", "make", "g++"):
        if not shutil.which(tool):
            raise UserError(f"building KenLM needs {tool}: apt-get install cmake build-essential")
    log(
        f"building KenLM {KENLM_VERSION} lmplz/build_binary from the PyPI source tarball (~2-3 min) ..."
    )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",  # the source tarball of kenlm only: its build tools come as wheels
                "kenlm",
                f"kenlm=={KENLM_VERSION}",
                "-d",
                tmp,
            ],
            check=True,
        )
        archive = next(Path(tmp).glob("kenlm-*.tar.gz"))
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        source = next(p for p in Path(tmp).iterdir() if p.is_dir() and p.name.startswith("kenlm"))
        build = source / "build"
        build.mkdir()
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        subprocess.run(
            ["cmake", "..", "-DBoost_USE_STATIC_LIBS=ON", "-DCMAKE_BUILD_TYPE=Release"],
            cwd=build,
            check=True,
            **quiet,
        )
        subprocess.run(
            ["make", f"-j{os.cpu_count() or 1}", "lmplz", "build_binary"],
            cwd=build,
            check=True,
            **quiet,
        )
        bin_dir().mkdir(parents=True, exist_ok=True)
        for tool in ("lmplz", "build_binary"):
            shutil.copy2(build / "bin" / tool, bin_dir() / tool)
    return bin_dir() / "lmplz", bin_dir() / "build_binary"


@run_cli
def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    lmplz, build_binary = build()
    print(f"KenLM: {lmplz} and {build_binary}")


if __name__ == "__main__":
    main()
