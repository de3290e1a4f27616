#!/usr/bin/env bash
# Prints the Python that `make gpu-check` runs bench/gpu_check.py with, preparing it first.
#
# - .venv when its torch sees CUDA (a GPU machine set up with `make venv` and a CUDA torch);
# - else, on a machine whose own python3 has a CUDA torch (and maybe nothing else), .venv-gpu:
#   a virtualenv over that Python's packages (its torch) with everything else installed offline
#   from the wheels under bench/wheels (`make gpu-wheels` fetches them, in parts that each fit
#   one transfer; already-installed versions are kept), then this project without dependencies;
# - else (no CUDA anywhere) .venv or python3, where gpu_check.py says so in one line and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

if [ -x .venv/bin/python ] && cuda .venv/bin/python; then echo .venv/bin/python; exit 0; fi
SYS=${GPU_PYTHON:-python3}
if ! cuda "$SYS"; then  # no CUDA anywhere: gpu_check.py says so and exits 0
  if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo "$SYS"; fi
  exit 0
fi
if [ ! -x .venv-gpu/bin/python ]; then
  "$SYS" -m venv --system-site-packages .venv-gpu >&2
fi
PY=.venv-gpu/bin/python
if [ -d bench/wheels ]; then  # wheels cut into pieces: joined and checked once all are here
  "$SYS" bench/gpu_wheels.py --join bench/wheels >&2
fi
wheels=$(find bench/wheels -name '*.whl' 2>/dev/null | sort)
if [ -n "$wheels" ]; then
  # shellcheck disable=SC2086
  $PY -m pip install --quiet --no-index --no-deps $wheels >&2
fi
if ! $PY -c 'import motif_megatron._helpers' 2>/dev/null; then
  if ! $PY -c 'import pybind11, setuptools' 2>/dev/null; then
    echo "gpu-env: pybind11/setuptools not installed yet (another part of bench/wheels)" >&2
    echo "$PY"
    exit 0
  fi
  $PY -m pip install --quiet --no-index --no-deps --no-build-isolation -e . >&2
fi
echo "$PY"
