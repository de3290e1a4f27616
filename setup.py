"""motif-megatron: Korean (and other language) adaptation of Llama models on Megatron-Core."""

from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import find_packages, setup

ParallelCompile("NPY_NUM_BUILD_JOBS").install()  # the C++ sources on every core (default)

EVAL = ["lm-eval==0.4.13", "accelerate"]
S3 = ["s3fs>=2023.12.2"]  # datatrove's bound: unbounded, pip backtracks to 0.4 beside boto3
QUALITY = ["ftfy", "kiwipiepy<0.22", "kiwipiepy-model<0.22"]
CPU_TORCH = "torch==2.13.0"  # the CPU wheel this project is developed and tested with

setup(
    name="motif-megatron",
    version="0.1.0",
    description="Grow an English Llama into a strong Korean+English model on Megatron-Core",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["motif_megatron", "motif_megatron.*"]),
    # the local lm-eval task definitions (YAMLs and their prompt helpers)
    package_data={"motif_megatron.eval": ["tasks/*.yaml", "tasks/*_yaml", "tasks/*.py"]},
    ext_modules=[
        Pybind11Extension(
            "motif_megatron._helpers", ["csrc/helpers.cpp"], cxx_std=17, extra_compile_args=["-O3"]
        ),
        Pybind11Extension(
            "motif_megatron._minhash", ["csrc/minhash.cpp"], cxx_std=17, extra_compile_args=["-O3"]
        ),
    ],
    cmdclass={"build_ext": build_ext},
    install_requires=[
        "torch>=2.6",
        # the releases that pass: 0.16.1 the whole suite (Python 3.11, the dev extra pins it),
        # 0.17.1, 0.18.2 and 0.19.2 the parity subset on Python 3.12 (`make test-compat`);
        # the .0 releases between them were not tried
        "megatron-core>=0.16.1,<0.20,!=0.17.0,!=0.18.0,!=0.19.0",
        "psutil",  # megatron's checkpoint writer hangs without it
        "pybind11>=2.12",
        "transformers>=4.45",
        "safetensors",
        "tokenizers",
        "sentencepiece",
        "datasets",
        "numpy",
        "tqdm",
        "pyyaml",
        "gigatoken",  # Rust tokeniser, ids identical to HF tokenizers (checked in tests)
        "datasketch>=2.0",  # the affine32 MinHash scheme our signatures equal
        # the corpus pipeline's stages and executors (local, Slurm; Ray with the ray extra);
        # pinned: the dedup stages' on-disk formats are read by our blocks
        "datatrove==0.10.1",
        "orjson",  # datatrove's JSONL writer
        "matplotlib",
        "zstandard",
        "pyarrow",
        "protobuf",  # SentencePiece model editing (Llama-2-style vocabulary expansion)
        "tensorboard",  # the trainer writes TensorBoard events
    ],
    extras_require={
        # CPU development and CI: pin the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
        "cpu": [CPU_TORCH],
        "dev": [
            CPU_TORCH,
            "megatron-core==0.16.1",  # the release the whole suite runs on
            "pytest>=8",
            "pytest-xdist>=3.6",  # make test runs two workers
            "ruff==0.17.6",  # pinned: the format check must not move under CI
            "import-linter==2.17",  # the layer contracts (make lint)
            "kenlm",
            "ray",  # the corpus pipeline's Ray executor, tested on a local Ray
            "bitsandbytes",
            *EVAL,
            *QUALITY,
            *S3,
            "moto[s3,server]",  # a local S3 endpoint for the corpus stage's fsspec output test
        ],
        # lm-eval (pinned: task names and the model API move between releases); accelerate for
        # its hf model
        "eval": EVAL,
        # GPU clusters: Transformer Engine from PyPI, in the range megatron-core 0.16.1 declares
        # (its dev extra); apex is built from source (see README)
        "gpu": ["transformer-engine[pytorch]>=2.9.0a0,<2.12.0", "bitsandbytes"],
        # datatrove's quality filters in Korean (Kiwi words; datatrove asks for its sbg model,
        # which kiwipiepy-model ships up to 0.21) and FTFY repair
        "quality": QUALITY,
        # KenLM perplexity scoring (the lmplz trainer is built from source by tools/train_kenlm.py)
        "kenlm": ["kenlm"],
        "ray": ["ray"],
        # the corpus stage's --output on S3 (any other fsspec backend: its own package)
        "s3": S3,
    },
)
