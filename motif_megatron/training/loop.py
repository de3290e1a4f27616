"""The continual-pretraining loop: stages, MSG ramp, evaluation, checkpoints, resume.

``Trainer(config).train()`` runs the whole schedule. Each stage gets a fresh model wrapper,
optimizer and LR schedule (Megatron DDP keeps only trainable parameters in its buffers, and EEVE
trains each stage as its own run): at a stage boundary the current weights move into a newly
built model chunk, the stage's trainable set is applied, and DDP and the optimizer are rebuilt.

A run whose ``--save`` root holds a training checkpoint resumes from it (``--load`` is then only
the starting point it had); the batch of iteration ``i`` is a function of ``i``, and optimizer,
scheduler, RNG, stage and plateau state are restored, so the losses continue bitwise. Optimizer
and RNG state restore at any data-parallel size; a changed LR schedule needs
``--override-opt_param-scheduler`` or ``--use-checkpoint-opt_param-scheduler``; a changed
``--train-iters`` only when the data order stays the same.

A run stopped before ``--train-iters`` (``--exit-signal-handler``, ``--exit-duration-in-mins``,
``--exit-interval``) saves, keeps its signal handlers until that save is published, and raises
:class:`StoppedEarly` (exit status 3); that save records why it was made, which is how
``examples/slurm/launch.sh`` tells a stop from a failure when a launcher hides the status. A NaN
or Inf loss or gradient norm stops the run at once with nothing saved
(``--check-for-nan-in-loss-and-grad``, on by default as in Megatron-LM).
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from motif_megatron import device, parallel
from motif_megatron.checkpoint import dist as ckpt
from motif_megatron.compat import cpu
from motif_megatron.errors import StoppedEarly, UserError
from motif_megatron.model import lora, schedule
from motif_megatron.model.builder import BuildOptions, build_chunks, model_vocab_size
from motif_megatron.model.flops import peak_flops, train_flops
from motif_megatron.model.llama import LlamaArgs
from motif_megatron.tokenizer.files import copy_tokenizer
from motif_megatron.training import checkpointing, engine, preemption, schedules, stages
from motif_megatron.training.arguments import StagePlan, TrainConfig
from motif_megatron.training.batches import BatchSource
from motif_megatron.training.metrics import TIMERS, Metrics


def _layout(tp: int, pp: int, vpp: int) -> str:
    return f"TP={tp} PP={pp}" + (f" VPP={vpp}" if vpp > 1 else "")


def _eod(args: LlamaArgs) -> int:
    eos = args.hf_config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is None:
        raise UserError("the checkpoint's config has no eos_token_id (needed as end-of-document)")
    return int(eos)


class Trainer:
    """``data(trainer) -> (train, valid)`` replaces the GPT pretraining data (post-training passes
    its own batch sources); each of ``model_hooks`` is called with every model chunk built;
    ``objective`` is the engine's forward step (next-token loss unless post-training says)."""

    def __init__(
        self,
        config: TrainConfig,
        data: Callable[[Trainer], tuple] | None = None,
        model_hooks: tuple[Callable[[torch.nn.Module], object], ...] = (),
        objective: Callable = schedule.lm_objective,
    ) -> None:
        self.cfg = config
        self.data, self.model_hooks, self.objective = data, model_hooks, objective
        self.plan: tuple[StagePlan, ...] = config.plan
        self.resume_iteration = checkpointing.latest_iteration(config.save)
        source = config.save if self.resume_iteration is not None else config.load
        self.root = ckpt.root_of(source)
        self.args = LlamaArgs.load(self.root)
        dtype = torch.bfloat16 if config.bf16 else torch.float32
        spec = {"transformer_engine": "te"}.get(config.transformer_impl, config.transformer_impl)
        self.vpp = config.virtual_pipeline_size(self.args.num_hidden_layers)
        self.options = BuildOptions(
            tp=config.tensor_model_parallel_size,
            pp=config.pipeline_model_parallel_size,
            vpp=self.vpp,
            spec=spec,
            params_dtype=dtype,
            make_vocab_size_divisible_by=config.make_vocab_size_divisible_by,
            sequence_parallel=config.sequence_parallel,
            recompute_granularity=config.recompute_granularity,
            recompute_method=config.recompute_method,
            recompute_num_layers=config.recompute_num_layers,
            attention_backend=config.attention_backend,
            **config.fusions(),
        )
        self.overlap = engine.Overlap(config.overlap_grad_reduce, config.overlap_param_gather)
        self.optim = engine.OptimConfig(
            lr=config.lr,
            min_lr=config.min_lr,
            decoupled_lr=config.decoupled_lr,
            decoupled_min_lr=config.decoupled_min_lr,
            weight_decay=config.weight_decay,
            adam_beta1=config.adam_beta1,
            adam_beta2=config.adam_beta2,
            adam_eps=config.adam_eps,
            clip_grad=config.clip_grad,
            use_distributed_optimizer=config.use_distributed_optimizer,
        )
        self.iteration = 0
        self.stopped: str | None = None  # why this run stops before --train-iters
        self.stage_index = 0
        self.stage_start = 0
        self.plateau = self._new_plateau()
        self._release_fields()

    # ----------------------------------------------------------------------------- setup
    def _new_plateau(self) -> schedules.Plateau:
        c = self.cfg
        return schedules.Plateau(c.plateau_patience, c.plateau_min_delta, c.plateau_smoothing)

    def _setup_parallel(self) -> None:
        from megatron.core import parallel_state

        cfg = self.cfg
        parallel.initialize(
            parallel.ParallelConfig(
                cfg.tensor_model_parallel_size,
                cfg.pipeline_model_parallel_size,
                cfg.distributed_timeout_minutes,
                self.vpp,
            ),
            seed=cfg.seed,
        )
        cfg.check(torch.distributed.get_world_size(), require_data_path=self.data is None)
        if cfg.use_distributed_optimizer and not torch.cuda.is_available():
            raise UserError(
                "--use-distributed-optimizer needs CUDA (Megatron's distributed optimizer wraps "
                "CUDA tensors only); drop it on CPU"
            )
        if (cfg.overlap_grad_reduce or cfg.overlap_param_gather) and (
            torch.distributed.get_backend() != "nccl"
        ):
            raise UserError(
                "--overlap-grad-reduce / --overlap-param-gather need NCCL (asynchronous bucket "
                f"collectives on CUDA streams); this run is on {torch.distributed.get_backend()}"
            )
        if self.resume_iteration is None and cfg.load:
            ckpt.check_complete(cfg.load, cfg.allow_partial)
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.is_rank0 = torch.distributed.get_rank() == 0

    def _setup_data(self) -> None:
        from motif_megatron.data.gpt import GPTDataConfig, build_datasets, data_order

        self.data_order = None  # post-training sources do not depend on --train-iters
        if self.data is not None:
            self.train_data, self.valid_data = self.data(self)
            return
        cfg = self.cfg
        evals = (
            (cfg.train_iters // cfg.eval_interval + 1) * cfg.eval_iters if cfg.eval_interval else 0
        )
        cache = cfg.data_cache_path or (str(Path(cfg.save) / "data_cache") if cfg.save else None)
        train, valid, _ = build_datasets(
            GPTDataConfig(
                data_path=cfg.blend(),
                seq_length=cfg.seq_length,
                eod=_eod(self.args),
                vocab_size=model_vocab_size(self.args, self.options),
                split=cfg.split,
                seed=cfg.seed,
                cache_dir=cache,
                eod_mask_loss=cfg.eod_mask_loss,
            ),
            (cfg.train_iters * cfg.global_batch_size, evals * cfg.global_batch_size, 0),
        )
        shape = (cfg.global_batch_size, cfg.micro_batch_size, self.dp_rank, self.dp_size)
        self.data_order = data_order(train)
        self.train_data = BatchSource(train, *shape)
        self.valid_data = BatchSource(valid, *shape) if valid is not None else None

    def _enter_stage(self, weights: list[dict] | None = None, load: str | None = None) -> None:
        """Build the model chunks for the current stage from in-memory ``weights`` (one state
        dict per chunk) or a ``load`` checkpoint (or neither, when a training checkpoint is
        loaded next)."""
        plan = self.plan[self.stage_index]
        cfg = self.cfg
        adapters = None
        if stages.uses_lora(plan.name):
            adapters = lora.LoRAConfig(
                cfg.lora_rank, cfg.lora_alpha, cfg.lora_target_modules, cfg.seed, cfg.qlora
            )
        self.chunks = build_chunks(self.args, replace(self.options, lora=adapters))
        if load is not None:
            with contextlib.ExitStack() as stack:
                for chunk in self.chunks:
                    stack.enter_context(lora.base_checkpoint(chunk))
                ckpt.load_model(self.chunks, load)
        for i, chunk in enumerate(self.chunks):
            if weights is not None:
                lora.load_base(chunk, weights[i])
                lora.quantize_base(chunk, lora.base_from_state_dict(weights[i]))
            elif load is not None:
                lora.quantize_base(chunk, ckpt.base_from_checkpoint(chunk, load, True))
            for hook in self.model_hooks:
                hook(chunk)
        self.stages = [stages.resolve(plan.name, chunk, self.args) for chunk in self.chunks]
        for stage, chunk in zip(self.stages, self.chunks, strict=True):
            stage.apply(chunk)
        self.ddps = engine.wrap_ddp(self.chunks, self.optim, self.overlap)
        row_masks = {name for stage in self.stages for name in stage.row_masks}
        self.optimizer = engine.build_optimizer(
            self.ddps, replace(self.optim, lr=plan.lr or self.optim.lr), row_masks
        )
        stage_iters = plan.iters or (self.cfg.train_iters - self.stage_start)
        self.scheduler = schedules.build_lr_scheduler(
            self.optimizer,
            plan.lr or self.cfg.lr,
            self.cfg.min_lr,
            self.cfg.lr_warmup_iters,
            self.cfg.lr_decay_iters or stage_iters,
            self.cfg.lr_decay_style,
        )

    def _loop_state(self) -> dict:
        return {
            "iteration": self.iteration,
            "stage_index": self.stage_index,
            "stage_start": self.stage_start,
            "stage_names": [p.name for p in self.plan],
            "plateau": self.plateau.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "global_batch_size": self.cfg.global_batch_size,
            "train_iters": self.cfg.train_iters,
            "stopped": self.stopped,
            "data_order": self.data_order,
            "decoupled_lr": [self.cfg.decoupled_lr, self.cfg.decoupled_min_lr],
            "world": [
                self.cfg.tensor_model_parallel_size,
                self.cfg.pipeline_model_parallel_size,
                self.dp_size,
            ],
            "vpp": self.vpp,
        }

    def _start(self) -> None:
        """Load the starting weights, or everything from the run's own last checkpoint."""
        cfg = self.cfg
        if cfg.save and Path(cfg.save).is_dir():
            for folder in checkpointing.remove_unfinished(cfg.save):
                self.metrics.event(f"removed {folder.name}, a save killed before it was published")
        if self.resume_iteration is None:
            self._enter_stage(load=cfg.load)
            self.metrics.resume_at(0)
            return
        if cfg.load and ckpt.root_of(cfg.load).resolve() != Path(cfg.save).resolve():
            self.metrics.event(
                f"--save {cfg.save} holds this run's checkpoint (iteration "
                f"{self.resume_iteration}): resuming from it; --load {cfg.load} is not read"
            )
        state = checkpointing.load_loop_state(cfg.save, self.resume_iteration)
        self._check_resumable(state)
        self.iteration, self.stage_index = state["iteration"], state["stage_index"]
        self.stage_start = state["stage_start"]
        self.plateau = schedules.Plateau(**state["plateau"])
        self._enter_stage()
        tp, pp, dp = state["world"]
        vpp = state.get("vpp", 1)
        now = [cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, self.vpp]
        same_mp = [tp, pp, vpp] == now
        with_optim = same_mp and not cfg.no_load_optim
        checkpointing.load(
            cfg.save,
            self.iteration,
            self.chunks,
            self.optimizer if with_optim else None,
            with_rng=same_mp,
            fully_parallel=cfg.ckpt_fully_parallel_load,
        )
        folder = ckpt.iteration_dir(cfg.save, self.iteration)
        for chunk in self.chunks:
            lora.quantize_base(chunk, ckpt.base_from_checkpoint(chunk, folder, False))
        loaded = ["weights", "stage", "data position"]
        missing = []
        if with_optim:
            loaded += ["optimizer state", "RNG"]
        elif cfg.no_load_optim:
            missing.append("optimizer state, RNG and LR schedule (--no-load-optim)")
        else:
            missing.append(
                f"optimizer state and RNG (saved at {_layout(tp, pp, vpp)}: they reshard over "
                "data parallel only)"
            )
        if not cfg.no_load_optim:
            loaded.append(self._load_scheduler(state["scheduler"]))
        self.metrics.resume_at(self.iteration)
        self.metrics.event(
            f"resumed {cfg.save} at iteration {self.iteration}, stage "
            f"{self.plan[self.stage_index].name}; saved at {_layout(tp, pp, vpp)} DP={dp}, now "
            f"{_layout(*now)} DP={self.dp_size}; loaded: {', '.join(loaded)}"
            + (f"; not loaded: {'; '.join(missing)}" if missing else "")
        )

    def _check_resumable(self, state: dict) -> None:
        cfg = self.cfg
        if state["stage_names"] != [p.name for p in self.plan]:
            raise UserError(
                f"--save {cfg.save} was trained with stages {state['stage_names']}; "
                "resume with the same stage schedule or use a new --save"
            )
        saved_gbs = state.get("global_batch_size", cfg.global_batch_size)
        if saved_gbs != cfg.global_batch_size:
            raise UserError(
                f"--save {cfg.save} was trained with --global-batch-size {saved_gbs}; resume "
                "with the same (the data position is counted in global batches)"
            )
        saved_iters = state.get("train_iters", cfg.train_iters)
        if saved_iters != cfg.train_iters and state.get("data_order") != self.data_order:
            raise UserError(
                f"--save {cfg.save} was trained with --train-iters {saved_iters}; at "
                f"--train-iters {cfg.train_iters} Megatron's shuffle spans another number of "
                "epochs and the data order would change: resume with the same --train-iters, "
                f"or start a new --save with --load {cfg.save} --allow-partial"
            )
        # the optimizer's parameter groups carry these LRs: a changed value would split them
        decoupled = state.get("decoupled_lr", [None, None])
        if decoupled != [cfg.decoupled_lr, cfg.decoupled_min_lr]:
            raise UserError(
                f"--save {cfg.save} was trained with --decoupled-lr {decoupled[0]} "
                f"--decoupled-min-lr {decoupled[1]}; resume with the same or use a new --save"
            )

    def _load_scheduler(self, saved: dict) -> str:
        """Restore the LR schedule, refusing (Megatron-LM's rule) a changed one unless a flag
        says which side wins; returns what was loaded, for the log line."""
        cfg = self.cfg
        now = self.scheduler.state_dict()
        keys = ("max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style")
        differ = [f"{k} {saved[k]} -> {now[k]}" for k in keys if saved[k] != now[k]]
        if differ and not (
            cfg.override_opt_param_scheduler or cfg.use_checkpoint_opt_param_scheduler
        ):
            raise UserError(
                f"--save {cfg.save}: this run's LR schedule differs from the checkpoint's "
                f"({', '.join(differ)}); pass --override-opt_param-scheduler to use the new "
                "values or --use-checkpoint-opt_param-scheduler to keep the checkpoint's"
            )
        self.scheduler.override_opt_param_scheduler = cfg.override_opt_param_scheduler
        self.scheduler.use_checkpoint_opt_param_scheduler = not cfg.override_opt_param_scheduler
        self.scheduler.load_state_dict(saved)
        if differ and cfg.override_opt_param_scheduler:
            return f"LR schedule step {saved['num_steps']} (values overridden: {', '.join(differ)})"
        return f"LR schedule step {saved['num_steps']}"

    # ----------------------------------------------------------------------------- loop
    def _stage_done(self) -> bool:
        plan = self.plan[self.stage_index]
        ran = self.iteration - self.stage_start
        if plan.iters is not None and ran >= plan.iters:
            return True
        return plan.plateau and self.plateau.since_best >= self.plateau.patience

    def _advance_stage(self) -> bool:
        """Move to the next stage; False when the schedule is finished."""
        if self.stage_index + 1 >= len(self.plan):
            return False
        reason = "plateau" if self.plan[self.stage_index].plateau else "iterations"
        engine.sync_params(self.ddps)
        weights = [
            {
                k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
                for k, v in lora.merged_state_dict(chunk).items()
            }
            for chunk in self.chunks
        ]
        self._release()
        self.stage_index += 1
        self.stage_start = self.iteration
        self.plateau = self._new_plateau()
        self._enter_stage(weights=weights)
        self.metrics.event(
            f"stage -> {self.plan[self.stage_index].name} at iteration {self.iteration} ({reason})"
        )
        return True

    def _release(self) -> None:
        """Free the stage's model, DDP buffers, optimizer and schedule before the next stage
        builds its own (they hold several copies of the weights)."""
        self._release_fields()
        gc.collect()  # DDP hooks and the model config's sync functions form reference cycles
        torch.cuda.empty_cache()

    def _release_fields(self) -> None:
        """No model chunks, DDP wrappers, per-chunk stages, optimizer or schedule."""
        self.chunks, self.ddps, self.stages = [], [], []
        self.optimizer = self.scheduler = None

    def _set_msg_mask(self) -> float | None:
        if not self.args.growth.get("msg"):
            return None
        from motif_megatron.model.masked import mask_value, set_mask

        if self.cfg.msg_ramp_iters > 0:
            m = schedules.msg_mask(self.iteration, self.cfg.msg_ramp_start, self.cfg.msg_ramp_iters)
            for chunk in self.chunks:
                set_mask(chunk, m)
        return mask_value(self.chunks[0])

    def _save(self) -> None:
        if not self.cfg.save:
            return
        with engine.timed(self.timers, "save-checkpoint"):
            self._save_now()

    def _save_now(self) -> None:
        engine.sync_params(self.ddps)
        iteration = self.iteration

        def published() -> None:
            if self.is_rank0:
                self.args.save(self.cfg.save)
                tokenizer = self.root / "tokenizer"
                if tokenizer.is_dir() and Path(self.cfg.save).resolve() != self.root.resolve():
                    copy_tokenizer(tokenizer, Path(self.cfg.save) / "tokenizer")
            self.metrics.event(f"saved checkpoint at iteration {iteration} to {self.cfg.save}")
            if self.cfg.keep_latest_checkpoints > 0:
                removed = checkpointing.retain(self.cfg.save, self.cfg.keep_latest_checkpoints)
                if removed:
                    names = ", ".join(p.name for p in removed)
                    self.metrics.event(f"removed old checkpoints {names}")

        self.saver.save(iteration, self.chunks, self.optimizer, self._loop_state(), published)

    def _evaluate(self) -> None:
        if self.valid_data is None:
            return
        engine.sync_params(self.ddps)
        losses = [
            engine.eval_loss(
                self.ddps,
                self.valid_data.batch(
                    self.iteration // self.cfg.eval_interval * self.cfg.eval_iters + i
                ),
                self.cfg.micro_batch_size,
                self.objective,
            )
            for i in range(self.cfg.eval_iters)
        ]
        self.metrics.evaluation(self.iteration, sum(losses) / len(losses))

    def _step(self) -> dict:
        with engine.timed(self.timers, "batch-generator"):
            batch = self.train_data.batch(self.iteration)
        result = engine.train_step(
            self.ddps,
            self.optimizer,
            batch,
            self.cfg.micro_batch_size,
            lambda i, chunk: self.stages[i].mask_gradients(chunk),
            self.objective,
            self.timers,
        )
        self.scheduler.step(increment=1)
        rows = getattr(batch, "rows_per_sample", 1)  # KTO: each example's row and its KL row
        return {**result, "real_tokens": batch.real_tokens(), "rows_per_sample": rows}

    def _real_tokens(self, here: int) -> int:
        """The global batch's tokens that are not padding (this rank's, summed over DP)."""
        from megatron.core import parallel_state

        count = device.to_device(torch.tensor([here], dtype=torch.float64))
        torch.distributed.all_reduce(count, group=parallel_state.get_data_parallel_group())
        return int(count.item())

    def _check_finite(self, result: dict) -> None:
        """Megatron-LM's ``--check-for-nan-in-loss-and-grad``: the loss and the global gradient
        norm (the same on every rank) must be finite; a run that met a NaN stops before logging
        or saving the iteration, so the checkpoints on disk all predate it."""
        norm = result["grad_norm"]
        bad = {"loss": result["loss"], "gradient norm": None if norm is None else float(norm)}
        bad = {k: v for k, v in bad.items() if v is not None and not math.isfinite(v)}
        if bad:
            self.saver.wait()  # an earlier iteration's save in flight is still published
            found = ", ".join(f"{k} {v}" for k, v in bad.items())
            last = checkpointing.latest_iteration(self.cfg.save)
            kept = f"its last checkpoint is iteration {last}" if last else "no checkpoint saved"
            raise UserError(
                f"iteration {self.iteration}: {found}; stopped without saving it, {kept} "
                "(--no-check-for-nan-in-loss-and-grad trains on)"
            )

    def train(self) -> None:
        cfg = self.cfg
        # the handlers cover start-up and loading, and stay until the last save is published: a
        # signal then (the SIGTERM after Slurm's USR1, a scancel) is recorded, not fatal
        with preemption.ExitConditions(cfg.exit_signal_handler, cfg.exit_duration_in_mins) as exits:
            self._run(exits)

    def _run(self, exits: preemption.ExitConditions) -> None:
        cfg = self.cfg
        self._setup_parallel()
        self.metrics = Metrics(
            cfg.metrics_file, cfg.tensorboard_dir, cfg.log_interval, cfg.train_iters, self.is_rank0
        )
        from megatron.core.timers import Timers

        self.timers = Timers(0, "max")
        self.metrics.event(
            f"{parallel.hosts()}: "
            f"{_layout(cfg.tensor_model_parallel_size, cfg.pipeline_model_parallel_size, self.vpp)}"
            f" DP={self.dp_size}"
        )
        asked = [name for name, on in cfg.fusions().items() if on is True]
        if asked and cpu.needed():
            self.metrics.event(
                f"on the CPU these fusions are off (CUDA kernels): {', '.join(asked)}"
            )
        self._setup_data()
        self.saver = checkpointing.Saver(
            cfg.save, cfg.ckpt_fully_parallel_save, cfg.async_save and bool(cfg.save)
        )
        self._start()
        try:
            self._loop(exits)
            engine.sync_params(self.ddps)  # callers use the trained model next
            periodic = cfg.save_interval and self.iteration % cfg.save_interval == 0
            if cfg.save and not (periodic or self.stopped):
                self._save()
            self.saver.wait()
        finally:
            self.metrics.close()
        if self.stopped:
            saved = f"saved to {cfg.save}" if cfg.save else "nothing saved (no --save)"
            later = f" ({', '.join(exits.later)} recorded after it)" if exits.later else ""
            raise StoppedEarly(
                f"{self.stopped} at iteration {self.iteration} of --train-iters {cfg.train_iters}; "
                f"{saved}: the same command resumes it{later}"
            )

    def _loop(self, exits: preemption.ExitConditions) -> None:
        """Train to ``--train-iters`` (or the end of the stage schedule), or until a stop
        (``self.stopped``), whose iteration it saves."""
        cfg = self.cfg
        tokens_per_iter = cfg.global_batch_size * cfg.seq_length
        vocab = model_vocab_size(self.args, self.options)
        flops_per_device = train_flops(self.args, cfg.global_batch_size, cfg.seq_length, vocab) / (
            torch.distributed.get_world_size()
        )
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
        peak = peak_flops(gpu)
        while self.iteration < cfg.train_iters:
            if self._stage_done() and not self._advance_stage():
                break
            mask = self._set_msg_mask()
            lr = self.optimizer.param_groups[0]["lr"]
            start = time.perf_counter()
            result = self._step()
            elapsed = time.perf_counter() - start
            real = self._real_tokens(result["real_tokens"])
            flops = flops_per_device * result["rows_per_sample"]
            self.iteration += 1
            if cfg.check_for_nan_in_loss_and_grad:
                self._check_finite(result)
            self.plateau.update(result["loss"])
            self.metrics.iteration(
                {
                    "iteration": self.iteration,
                    "loss": result["loss"],
                    "lr": lr,
                    "grad_norm": None
                    if result["grad_norm"] is None
                    else float(result["grad_norm"]),
                    "stage": self.stages[0].name,
                    "msg_mask": mask,
                    "real_tokens": real,  # not padding; KTO's KL rows included
                    "tokens_per_s": real / elapsed,
                    # Megatron-LM's "throughput per GPU": its FLOPs count over the step's time
                    "tflops_per_device": flops / elapsed / 1e12,
                    "mfu": flops / elapsed / peak if peak else None,
                    "tokens": self.iteration * tokens_per_iter,
                    "skipped": result["skipped"],
                    "timers_ms": {
                        name: self.timers(name, log_level=0).elapsed(reset=True) * 1000
                        for name in TIMERS
                    },
                    **{
                        name.replace(" ", "_"): value
                        for name, value in list(result["reports"].items())[1:]
                    },
                }
            )
            if cfg.eval_interval and self.iteration % cfg.eval_interval == 0:
                self._evaluate()
            reason = exits.check()
            if cfg.exit_interval and self.iteration % cfg.exit_interval == 0:
                reason = f"--exit-interval {cfg.exit_interval}"
            if reason and self.iteration < cfg.train_iters:
                self.stopped = reason
                where = "saving and exiting" if cfg.save else "exiting (no --save: nothing saved)"
                self.metrics.event(f"{reason} at iteration {self.iteration}: {where}")
            if self.stopped or (cfg.save_interval and self.iteration % cfg.save_interval == 0):
                self._save()
            self.saver.poll()
            if self.stopped:
                return
