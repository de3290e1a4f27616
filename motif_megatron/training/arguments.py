"""The trainer's configuration: one dataclass, Megatron-LM flag names, and a YAML file with the same keys.

Each field is a flag (``micro_batch_size`` -> ``--micro-batch-size``) with its help text in the
field metadata. ``--config run.yaml`` supplies any of them (keys with dashes or underscores);
flags given on the command line win over the file. Only ``pretrain_motif.py`` reads argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from motif_megatron.errors import UserError


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class StagePlan:
    """One entry of a stage schedule: which parameters train, and until when."""

    name: str
    """A stage name (see ``training/stages.py``) or ``regex:PATTERN``."""
    iters: int | None = None
    """Iterations in this stage; None with ``plateau`` advances on a converged loss."""
    plateau: bool = False
    """Advance when the training loss stops improving (``--plateau-patience``)."""
    lr: float | None = None
    """A peak LR for this stage (default: ``--lr``)."""


@dataclass(frozen=True)
class TrainConfig:
    # model and parallelism
    load: str | None = _opt(None, "checkpoint to start from (a converted or grown checkpoint)")
    save: str | None = _opt(None, "checkpoint root to write; a run resumes from it if it holds one")
    tensor_model_parallel_size: int = _opt(1, "tensor-parallel size")
    pipeline_model_parallel_size: int = _opt(1, "pipeline-parallel size")
    transformer_impl: str = _opt(
        "auto",
        "layer implementation: transformer_engine (GPU), local, or auto (TE when CUDA has it)",
        choices=("auto", "transformer_engine", "local"),
    )
    bf16: bool = _opt(False, "train in bf16 with fp32 main weights (GPU clusters)")
    use_distributed_optimizer: bool = _opt(False, "shard optimizer state over data parallel")
    sequence_parallel: bool = _opt(False, "sequence parallelism (needs Transformer Engine)")
    make_vocab_size_divisible_by: int = _opt(128, "pad the vocabulary to a multiple of this * TP")
    # data
    data_path: tuple[str, ...] = _opt(
        (), "blend: 'w1 prefix1 w2 prefix2 ...' or prefixes", nargs="+"
    )
    split: str = _opt("969,30,1", "train,valid,test proportions of each shard")
    data_cache_path: str | None = _opt(None, "where Megatron's dataset index caches go")
    seq_length: int = _opt(1024, "tokens per sample")
    micro_batch_size: int = _opt(1, "samples per microbatch per data-parallel rank")
    global_batch_size: int = _opt(8, "samples per iteration over all data-parallel ranks")
    eod_mask_loss: bool = _opt(False, "no loss on end-of-document tokens")
    # optimisation
    train_iters: int = _opt(100, "iterations to train in total (over all stages)")
    lr: float = _opt(3e-4, "peak learning rate")
    min_lr: float = _opt(0.0, "learning rate at the end of the decay")
    lr_warmup_iters: int = _opt(0, "linear warmup iterations (restarted at every stage)")
    lr_decay_iters: int | None = _opt(None, "decay iterations (default: the stage's length)")
    lr_decay_style: str = _opt(
        "cosine",
        "learning-rate decay",
        choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"),
    )
    weight_decay: float = _opt(0.01, "AdamW weight decay (not on norms or frozen vocab rows)")
    adam_beta1: float = _opt(0.9, "AdamW beta1")
    adam_beta2: float = _opt(0.95, "AdamW beta2")
    adam_eps: float = _opt(1e-8, "AdamW epsilon")
    clip_grad: float = _opt(1.0, "global gradient-norm clip (0 disables)")
    seed: int = _opt(1234, "seed for weights of new modules, data order and dropout")
    # stages
    stage: str = _opt("full", "the stage to train (see README); a YAML 'stages' list overrides it")
    stages: tuple[StagePlan, ...] = _opt(
        (), "YAML only: [{name, iters | plateau, lr}] in order", cli=False
    )
    plateau_patience: int = _opt(20, "iterations without a new best smoothed loss before advancing")
    plateau_min_delta: float = _opt(
        1e-3, "a smaller improvement of the smoothed loss counts as none"
    )
    plateau_smoothing: float = _opt(0.9, "EMA factor of the loss the plateau detector watches")
    msg_ramp_iters: int = _opt(0, "ramp MSG masks from 0 to 1 linearly over this many iterations")
    msg_ramp_start: int = _opt(0, "iteration at which the MSG ramp starts")
    # LoRA
    lora_rank: int = _opt(8, "LoRA rank of the adapters the LoRA stages train")
    lora_alpha: float = _opt(32.0, "LoRA alpha (scale alpha/rank)")
    lora_target_modules: tuple[str, ...] = _opt(
        ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"),
        "modules that get adapters",
        nargs="+",
    )
    qlora: bool = _opt(False, "4-bit base weights under LoRA (bitsandbytes, CUDA only)")
    # checkpoints and logging
    save_interval: int | None = _opt(None, "save every this many iterations (and at the end)")
    no_load_optim: bool = _opt(False, "resume weights only (e.g. at a different TP/PP)")
    eval_interval: int | None = _opt(
        None, "evaluate on the validation split every this many iterations"
    )
    eval_iters: int = _opt(2, "validation batches per evaluation")
    log_interval: int = _opt(1, "print a log line every this many iterations")
    metrics_file: str | None = _opt(None, "append one JSON line per iteration (and per evaluation)")
    tensorboard_dir: str | None = _opt(None, "write TensorBoard events here")
    exit_interval: int | None = _opt(None, "stop (after saving) at the first multiple of this")

    @property
    def plan(self) -> tuple[StagePlan, ...]:
        """The stage schedule: the YAML list, or ``--stage`` for all ``train_iters``."""
        return self.stages or (StagePlan(self.stage, self.train_iters),)

    def check(self, world_size: int) -> None:
        """Gather every problem with the configuration and raise them together."""
        problems = []
        if not self.data_path:
            problems.append("--data-path is required")
        if self.load is None and not (
            self.save and (Path(self.save) / "motif_model.json").exists()
        ):
            problems.append(
                "--load is required (a checkpoint from tools/convert_hf.py or expand_checkpoint.py)"
            )
        mp = self.tensor_model_parallel_size * self.pipeline_model_parallel_size
        dp = world_size // mp if world_size % mp == 0 else 0
        if dp and self.global_batch_size % (self.micro_batch_size * dp):
            problems.append(
                f"--global-batch-size {self.global_batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size} x data-parallel size {dp}"
            )
        from motif_megatron.training.stages import NAMES

        for plan in self.plan:
            if plan.name not in NAMES and not plan.name.startswith("regex:"):
                problems.append(f"unknown stage {plan.name!r}; choose one of {', '.join(NAMES)}")
            if plan.iters is None and not plan.plateau:
                problems.append(f"stage {plan.name}: give 'iters' or 'plateau: true'")
        if self.lora_rank <= 0:
            problems.append(f"--lora-rank {self.lora_rank} must be positive")
        if problems:
            raise UserError("; ".join(problems))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp):
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="YAML file whose keys are these flags' names")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        meta = dict(f.metadata)
        if not meta.pop("cli", True):
            continue
        kind = _base_type(hints[f.name])
        kwargs = {
            "help": meta.pop("help") + f" (default: {f.default})",
            "default": argparse.SUPPRESS,
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs=meta.pop("nargs", "+"), type=str)
        else:
            kwargs["type"] = kind
        kwargs.update(meta)
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def _from_mapping(values: dict, source: str) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in names:
            raise UserError(f"{source}: unknown key {key!r}")
        if name == "stages":
            try:
                value = tuple(StagePlan(**s) for s in value)
            except TypeError as exc:
                raise UserError(f"{source}: bad stages entry ({exc})") from None
        elif name in ("data_path", "lora_target_modules"):
            value = tuple(str(v) for v in (value.split() if isinstance(value, str) else value))
        out[name] = value
    return out


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """Flags over YAML over defaults."""
    namespace = vars(build_parser(description).parse_args(argv))
    values = {}
    config = namespace.pop("config", None)
    if config:
        try:
            loaded = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--config {config}: {exc}") from None
        values.update(_from_mapping(loaded, config))
    values.update(
        _from_mapping(
            {k: tuple(v) if isinstance(v, list) else v for k, v in namespace.items()}, "flags"
        )
    )
    return TrainConfig(**values)
