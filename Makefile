# Two entry points (see README): `make demo` runs the main job on bundled data, `make test` the suite.
# Both create and use the virtualenv at .venv.
VENV   := .venv
PY     := $(VENV)/bin/python
# the demo's packages (the library and KenLM's Python module), then the development tools on top
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed
# nodes of the local Slurm cluster the tests use (each a slurmd in its own network namespace)
SLURM_NODES ?= 2

.PHONY: venv kenlm demo test test-compat lint format clean slurm gpu-check gpu-wheels

$(RUNTIME): setup.py pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[kenlm]'
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# KenLM's lmplz and build_binary, built once from the PyPI source tarball (the demo's data step
# and the corpus tests use them)
kenlm: $(RUNTIME)
	$(PY) tools/build_kenlm.py

# the recipe with its arms (examples/recipes/demo.yaml); a rerun resumes and skips finished steps
demo: kenlm
	$(PY) tools/run_recipe.py examples/recipes/demo.yaml --out outputs/demo

# ruff, and the layer contracts of docs/architecture.md (pyproject.toml [tool.importlinter])
lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

# the local Slurm cluster for the Slurm tests (installed from Debian's packages when missing);
# if it cannot start, those tests skip and say why
slurm:
	bash examples/slurm/local_cluster.sh --nodes $(SLURM_NODES) || echo "slurm: the local cluster did not start; its tests will skip"

# two pytest-xdist workers: tests run one process each (OMP_NUM_THREADS=1), so a second worker
# uses the second core; --dist worksteal evens out the few long tests
test: lint slurm kenlm
	SLURM_NODES=$(SLURM_NODES) $(PY) -m pytest -q -n 2 --dist worksteal tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# the parity subset (conversion, growth exactness, TP/PP/VPP parity, resume: `-m compat`) with the
# newest megatron-core on Python 3.12, in its own virtualenv; torch for 3.12 comes from PyPI (a
# CUDA build, which runs on the CPU). The last result is in README.md.
COMPAT       := .venv-compat
COMPAT_PY    ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)
COMPAT_TORCH ?= 2.14.1
COMPAT_MCORE ?= 0.19.2

$(COMPAT)/.installed: setup.py pyproject.toml
	$(COMPAT_PY) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install --quiet --upgrade pip
	$(COMPAT)/bin/pip install --quiet torch==$(COMPAT_TORCH) megatron-core==$(COMPAT_MCORE) \
		'pytest>=8' 'pytest-xdist>=3.6' setuptools 'pybind11>=2.12'
	$(COMPAT)/bin/pip install --quiet --no-build-isolation -e .
	touch $@

test-compat: $(COMPAT)/.installed
	$(COMPAT)/bin/python -c 'import sys, torch, megatron.core as m; print("compat:", sys.version.split()[0], torch.__version__, m.__version__)'
	$(COMPAT)/bin/python -m pytest -q -n 2 --dist worksteal -m compat \
		tests/test_convert.py tests/test_growth.py tests/test_trainer.py

# the GPU path on one GPU (not part of `make test`): a table and outputs/gpu_check/gpu_check.json;
# one line and exit 0 without CUDA. Uses .venv, or the machine's own CUDA torch plus bench/wheels.
gpu-check:
	PY=$$(bash bench/gpu_env.sh) && $$PY bench/gpu_check.py --out outputs/gpu_check

# wheels for a GPU machine that has only Python and a CUDA torch (no network there): downloaded
# here for its Python version, split into parts of at most 60 MB (one device transfer each)
GPU_PYVER ?= 3.12
gpu-wheels: venv
	$(PY) bench/gpu_wheels.py --python-version $(GPU_PYVER) --out bench/wheels

format: venv
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .venv-gpu $(COMPAT) outputs build *.egg-info
