"""The trainer's configuration: one dataclass, Megatron-LM flag names, and a YAML file with the same keys.

Each field is a flag (``micro_batch_size`` -> ``--micro-batch-size``) with its help text in the
field metadata. ``--config run.yaml`` supplies any of them (keys with dashes or underscores);
flags given on the command line win over the file. Only ``pretrain_motif.py`` reads argv.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from motif_megatron import cli
from motif_megatron.cli import option
from motif_megatron.errors import UserError


@dataclass(frozen=True)
class StagePlan:
    """One entry of a stage schedule: which parameters train, and until when."""

    name: str
    """A stage name (see ``training/stages.py``) or ``regex:PATTERN``."""
    iters: int | None = None
    """Iterations in this stage; None with ``plateau`` advances on a converged loss, and None
    on the last stage runs it to ``--train-iters``."""
    plateau: bool = False
    """Advance when the training loss stops improving (``--plateau-patience``)."""
    lr: float | None = None
    """A peak LR for this stage (default: ``--lr``)."""


@dataclass(frozen=True)
class TrainConfig:
    # model and parallelism
    load: str | None = option(None, "checkpoint to start from (a converted or grown checkpoint)")
    save: str | None = option(
        None, "checkpoint root to write; a run resumes from it if it holds one"
    )
    tensor_model_parallel_size: int = option(1, "tensor-parallel size")
    pipeline_model_parallel_size: int = option(1, "pipeline-parallel size")
    num_layers_per_virtual_pipeline_stage: int | None = option(
        None, "layers per virtual pipeline stage: the interleaved schedule's model chunks"
    )
    context_parallel_size: int = option(
        1, "context-parallel size (split each sequence over ranks; not on the local spec)"
    )
    transformer_impl: str = option(
        "auto",
        "layer implementation: transformer_engine (GPU), local, or auto (TE when CUDA has it)",
        choices=("auto", "transformer_engine", "local"),
    )
    bf16: bool = option(False, "train in bf16 with fp32 main weights (GPU clusters)")
    use_distributed_optimizer: bool = option(False, "shard optimizer state over data parallel")
    sequence_parallel: bool = option(False, "sequence parallelism (needs Transformer Engine)")
    attention_backend: str = option(
        "auto",
        "core attention (Megatron-LM's names): on the local spec flash/auto is torch's "
        "scaled_dot_product_attention, unfused/local Megatron-Core's; TE picks its own",
        choices=("flash", "fused", "unfused", "local", "auto"),
    )
    rope_fusion: bool = option(True, "fused RoPE (Transformer Engine's kernel; off without it)")
    bias_swiglu_fusion: bool = option(True, "fused SwiGLU (a torch.jit kernel on CUDA)")
    masked_softmax_fusion: bool = option(
        True, "fused scale-mask-softmax (Transformer Engine's attention; off without it)"
    )
    gradient_accumulation_fusion: bool = option(
        True, "weight gradients accumulated into main_grad in the GEMM (Transformer Engine)"
    )
    cross_entropy_loss_fusion: bool = option(False, "fused vocab-parallel cross entropy (CUDA)")
    cross_entropy_fusion_impl: str = option(
        "native",
        "the fused cross entropy's kernel: native (Megatron-Core's) or te",
        choices=("native", "te"),
    )
    make_vocab_size_divisible_by: int = option(128, "pad the vocabulary to a multiple of this * TP")
    recompute_granularity: str | None = option(
        None,
        "activation recomputation: full (whole layers) or selective (core attention)",
        choices=("full", "selective"),
    )
    recompute_method: str | None = option(
        None,
        "with full: uniform (every --recompute-num-layers layers as one unit) or block "
        "(the first --recompute-num-layers layers of each stage)",
        choices=("uniform", "block"),
    )
    recompute_num_layers: int | None = option(None, "layers per recompute unit (full only)")
    overlap_grad_reduce: bool = option(
        False, "overlap the data-parallel gradient reduce with the backward pass (NCCL)"
    )
    overlap_param_gather: bool = option(
        False, "overlap the distributed optimizer's parameter all-gather with the forward (NCCL)"
    )
    # data
    data_path: tuple[str, ...] = option(
        (), "blend: 'w1 prefix1 w2 prefix2 ...' or prefixes", nargs="+"
    )
    data_args_path: str | None = option(
        None, "file holding the --data-path value (tools/mix_data.py --data-args-path)"
    )
    split: str = option("969,30,1", "train,valid,test proportions of each shard")
    data_cache_path: str | None = option(None, "where Megatron's dataset index caches go")
    seq_length: int = option(1024, "tokens per sample")
    micro_batch_size: int = option(1, "samples per microbatch per data-parallel rank")
    global_batch_size: int = option(8, "samples per iteration over all data-parallel ranks")
    eod_mask_loss: bool = option(False, "no loss on end-of-document tokens")
    # optimisation
    train_iters: int = option(100, "iterations to train in total (over all stages)")
    lr: float = option(3e-4, "peak learning rate")
    min_lr: float = option(0.0, "learning rate at the end of the decay")
    decoupled_lr: float | None = option(
        None, "peak LR of the input embedding and output layer (default: --lr)"
    )
    decoupled_min_lr: float | None = option(
        None, "final LR of the input embedding and output layer (default: --min-lr)"
    )
    lr_warmup_iters: int = option(0, "linear warmup iterations (restarted at every stage)")
    lr_decay_iters: int | None = option(None, "decay iterations (default: the stage's length)")
    lr_decay_style: str = option(
        "cosine",
        "learning-rate decay",
        choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"),
    )
    weight_decay: float = option(0.01, "AdamW weight decay (not on norms or frozen vocab rows)")
    adam_beta1: float = option(0.9, "AdamW beta1")
    adam_beta2: float = option(0.95, "AdamW beta2")
    adam_eps: float = option(1e-8, "AdamW epsilon")
    clip_grad: float = option(1.0, "global gradient-norm clip (0 disables)")
    seed: int = option(1234, "seed for weights of new modules, data order and dropout")
    # stages
    stage: str = option(
        "full", "the stage to train (see README); a YAML 'stages' list overrides it"
    )
    stages: tuple[StagePlan, ...] = option(
        (), "YAML only: [{name, iters | plateau, lr}] in order", cli=False
    )
    plateau_patience: int = option(
        20, "iterations without a new best smoothed loss before advancing"
    )
    plateau_min_delta: float = option(
        1e-3, "a smaller improvement of the smoothed loss counts as none"
    )
    plateau_smoothing: float = option(0.9, "EMA factor of the loss the plateau detector watches")
    msg_ramp_iters: int = option(0, "ramp MSG masks from 0 to 1 linearly over this many iterations")
    msg_ramp_start: int = option(0, "iteration at which the MSG ramp starts")
    # LoRA
    lora_rank: int = option(8, "LoRA rank of the adapters the LoRA stages train")
    lora_alpha: float = option(32.0, "LoRA alpha (scale alpha/rank)")
    lora_target_modules: tuple[str, ...] = option(
        ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"),
        "modules that get adapters",
        nargs="+",
    )
    qlora: bool = option(False, "4-bit NF4 base weights under LoRA (bitsandbytes)")
    # checkpoints and logging
    save_interval: int | None = option(None, "save every this many iterations (and at the end)")
    keep_latest_checkpoints: int = option(
        0, "delete older iteration checkpoints under --save, keeping the latest N (0: keep all)"
    )
    no_load_optim: bool = option(False, "resume weights only (e.g. at a different TP/PP)")
    async_save: bool = option(
        False,
        "write checkpoints from forked processes while training goes on (torch_dist); each is "
        "published when every rank has written it",
    )
    ckpt_fully_parallel_save: bool = option(
        True, "spread the writing of replicated tensors over the data-parallel ranks"
    )
    ckpt_fully_parallel_load: bool = option(
        False, "each data-parallel rank reads part of the checkpoint and they exchange the rest"
    )
    override_opt_param_scheduler: bool = option(
        False,
        "on resume, take the LR schedule (lr, min-lr, warmup, decay) from the flags, keeping the "
        "checkpoint's step count",
        flag="--override-opt_param-scheduler",
    )
    use_checkpoint_opt_param_scheduler: bool = option(
        False,
        "on resume, keep the checkpoint's LR schedule whatever the flags say",
        flag="--use-checkpoint-opt_param-scheduler",
    )
    exit_signal_handler: bool = option(
        False,
        "on SIGTERM or SIGUSR1 (Slurm's preemption and --signal), finish the iteration, save "
        "and exit 3 (stopped before --train-iters; the same command resumes)",
    )
    exit_duration_in_mins: float | None = option(
        None, "save and exit 3 once the run has trained this many minutes"
    )
    check_for_nan_in_loss_and_grad: bool = option(
        True, "stop at a NaN/Inf loss or gradient norm, in one line, without saving that iteration"
    )
    distributed_timeout_minutes: int = option(
        10, "timeout of collectives (a rank waiting longer for the others fails the job)"
    )
    allow_partial: bool = option(
        False, "start from a checkpoint saved before its run's --train-iters (a cut run)"
    )
    eval_interval: int | None = option(
        None, "evaluate on the validation split every this many iterations"
    )
    eval_iters: int = option(2, "validation batches per evaluation")
    log_interval: int = option(1, "print a log line every this many iterations")
    metrics_file: str | None = option(
        None, "append one JSON line per iteration (and per evaluation)"
    )
    tensorboard_dir: str | None = option(None, "write TensorBoard events here")
    exit_interval: int | None = option(
        None, "stop (after saving, exit 3) at the first multiple of this iteration"
    )

    def blend(self) -> tuple[str, ...]:
        """``--data-path``, or the words of ``--data-args-path`` (Megatron-LM's format)."""
        if not self.data_args_path:
            return self.data_path
        try:
            return tuple(Path(self.data_args_path).read_text().split())
        except OSError as exc:
            raise UserError(f"--data-args-path {self.data_args_path}: {exc.strerror}") from None

    @property
    def plan(self) -> tuple[StagePlan, ...]:
        """The stage schedule: the YAML list, or ``--stage`` for all ``train_iters``."""
        return self.stages or (StagePlan(self.stage, self.train_iters),)

    def check(self, world_size: int, require_data_path: bool = True) -> None:
        """Gather every problem with the configuration and raise them together."""
        problems = []
        if self.data_path and self.data_args_path:
            problems.append("--data-path and --data-args-path exclude each other")
        elif not self.blend() and require_data_path:
            problems.append("--data-path (or --data-args-path) is required")
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
        elif dp:
            problems += self._check_interleaved(
                self.global_batch_size // self.micro_batch_size // dp
            )
        from motif_megatron.training.stages import NAMES, known, uses_lora

        for plan in self.plan:
            if not known(plan.name):
                problems.append(
                    f"unknown stage {plan.name!r}; choose one of {', '.join(NAMES)} or A+B of them"
                )
            if plan.iters is None and not plan.plateau and plan is not self.plan[-1]:
                problems.append(f"stage {plan.name}: give 'iters' or 'plateau: true'")
        problems += self._check_recompute()
        from motif_megatron.model.builder import te_available

        local = self.transformer_impl == "local" or not te_available()
        if self.attention_backend == "fused" and local:
            problems.append(
                "--attention-backend fused is Transformer Engine's; the local spec runs flash "
                "(torch's scaled_dot_product_attention) or unfused"
            )
        if self.cross_entropy_loss_fusion and self.cross_entropy_fusion_impl == "te" and local:
            problems.append(
                "--cross-entropy-fusion-impl te is Transformer Engine's kernel; this run has none "
                "(use native)"
            )
        if self.context_parallel_size != 1:
            problems.append(
                f"--context-parallel-size {self.context_parallel_size}: this trainer does not "
                "split sequences over ranks (Megatron-Core does it only in Transformer Engine's "
                "attention, with batches and losses split per CP rank, not wired here); "
                "train at --context-parallel-size 1"
            )
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            problems.append(
                "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler "
                "exclude each other"
            )
        if self.overlap_param_gather and not self.use_distributed_optimizer:
            problems.append("--overlap-param-gather needs --use-distributed-optimizer")
        if self.lora_rank <= 0:
            problems.append(f"--lora-rank {self.lora_rank} must be positive")
        lora_stages = [p.name for p in self.plan if uses_lora(p.name)]
        if lora_stages and self.sequence_parallel:
            problems.append(
                f"stage {lora_stages[0]}: LoRA adapters do not follow --sequence-parallel's "
                "gathers and scatters yet; train the LoRA stage without --sequence-parallel"
            )
        if problems:
            raise UserError("; ".join(problems))

    def fusions(self) -> dict[str, object]:
        """The fusions asked for, as ``BuildOptions`` fields (the builder keeps those the
        machine has kernels for)."""
        names = ("rope_fusion", "bias_swiglu_fusion", "masked_softmax_fusion")
        names += ("gradient_accumulation_fusion", "cross_entropy_loss_fusion")
        return {n: getattr(self, n) for n in (*names, "cross_entropy_fusion_impl")}

    def _check_interleaved(self, microbatches: int) -> list[str]:
        """Megatron-Core's interleaved schedule runs the microbatches in groups of PP."""
        pp = self.pipeline_model_parallel_size
        if self.num_layers_per_virtual_pipeline_stage is None or pp == 1:
            return []
        if microbatches % pp:
            return [
                f"the interleaved schedule runs microbatches in groups of PP={pp}; this batch has "
                f"{microbatches} per rank (--global-batch-size / (--micro-batch-size x DP)): "
                f"make it a multiple of {pp}"
            ]
        return []

    def virtual_pipeline_size(self, num_layers: int) -> int:
        """Model chunks per pipeline rank (Megatron-LM's ``virtual_pipeline_model_parallel_size``)
        for a model of ``num_layers``; 1 without ``--num-layers-per-virtual-pipeline-stage``."""
        per_chunk = self.num_layers_per_virtual_pipeline_stage
        if per_chunk is None:
            return 1
        if self.pipeline_model_parallel_size == 1:
            raise UserError(
                "--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size > 1"
            )
        per_stage, rest = divmod(num_layers, self.pipeline_model_parallel_size)
        if rest or per_chunk < 1 or per_stage % per_chunk:
            raise UserError(
                f"--num-layers-per-virtual-pipeline-stage {per_chunk} must divide the "
                f"{num_layers} layers / --pipeline-model-parallel-size "
                f"{self.pipeline_model_parallel_size} of each pipeline stage"
            )
        return per_stage // per_chunk

    def _check_recompute(self) -> list[str]:
        """Megatron-Core's rules for the recompute flags, as flag names."""
        granularity, method, layers = (
            self.recompute_granularity,
            self.recompute_method,
            self.recompute_num_layers,
        )
        if granularity == "full" and (method is None or layers is None):
            return [
                "--recompute-granularity full needs --recompute-method uniform|block and "
                "--recompute-num-layers N"
            ]
        if granularity != "full" and (method is not None or layers is not None):
            return [
                "--recompute-method and --recompute-num-layers go with --recompute-granularity full"
            ]
        if layers is not None and layers < 1:
            return [f"--recompute-num-layers {layers} must be positive"]
        return []


def build_parser(description: str, configs: tuple[type, ...] = (TrainConfig,)):
    """One flag per field of each config dataclass, plus ``--config``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML file whose keys are these flags' names")
    for cls in configs:
        cli.add_fields(parser, cls)
    return parser


def _convert(cls: type, name: str, value, source: str):
    """YAML/flag value -> the field's type (tuples of strings, lists of dataclasses)."""
    hint = cli.base_type(typing.get_type_hints(cls)[name])
    if typing.get_origin(hint) is not tuple:
        return value
    item = typing.get_args(hint)[0]
    if dataclasses.is_dataclass(item):
        try:
            return tuple(item(**entry) for entry in value)
        except TypeError as exc:
            raise UserError(f"{source}: bad {name} entry ({exc})") from None
    return tuple(str(v) for v in (value.split() if isinstance(value, str) else value))


def _from_mapping(values: dict, source: str, configs: tuple[type, ...]) -> list[dict]:
    out: list[dict] = [{} for _ in configs]
    for key, value in values.items():
        name = key.replace("-", "_")
        owner = next(
            (i for i, c in enumerate(configs) if name in {f.name for f in dataclasses.fields(c)}),
            None,
        )
        if owner is None:
            raise UserError(f"{source}: unknown key {key!r}")
        out[owner][name] = _convert(configs[owner], name, value, source)
    return out


def parse_configs(
    argv: list[str] | None, description: str, configs: tuple[type, ...] = (TrainConfig,)
) -> tuple:
    """One instance per config dataclass: flags over YAML over defaults."""
    namespace = vars(build_parser(description, configs).parse_args(argv))
    values: list[dict] = [{} for _ in configs]
    config = namespace.pop("config", None)
    if config:
        try:
            loaded = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise UserError(f"--config {config}: {exc}") from None
        for target, found in zip(values, _from_mapping(loaded, config, configs), strict=True):
            target.update(found)
    for target, found in zip(values, _from_mapping(namespace, "flags", configs), strict=True):
        target.update(found)
    return tuple(cls(**v) for cls, v in zip(configs, values, strict=True))


def parse_args(argv: list[str] | None = None, description: str = "") -> TrainConfig:
    """The trainer's configuration from flags and ``--config``."""
    return parse_configs(argv, description)[0]
