"""Supervised fine-tuning on the trainer's engine: chat template, assistant-only loss, packing,
NEFTune, and a curriculum of datasets (EEVE: a large lower-quality set first, then a small
high-quality one), each with its own iteration count and learning rate.

Records that cannot train (bad JSON, missing fields, empty completions, examples longer than
``--seq-length``) are counted by reason, written to ``SAVE/sft_rejects.jsonl`` and skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from motif_megatron.cli import option
from motif_megatron.errors import UserError
from motif_megatron.model.schedule import Batch
from motif_megatron.posttrain import neftune
from motif_megatron.posttrain.chat import ChatEncoder, Example, read_records
from motif_megatron.posttrain.packing import pack
from motif_megatron.training.arguments import StagePlan, TrainConfig


@dataclass(frozen=True)
class CurriculumStep:
    data: str
    """A JSONL file of ``messages`` or ``prompt``/``completion`` records."""
    iters: int
    lr: float | None = None


@dataclass(frozen=True)
class SFTConfig:
    sft_data: tuple[str, ...] = option(
        (), "JSONL file(s), trained in order for equal shares of --train-iters", nargs="+"
    )
    curriculum: tuple[CurriculumStep, ...] = option(
        (), "YAML only: [{data, iters, lr}] in order", cli=False
    )
    neftune_alpha: float = option(0.0, "NEFTune noise alpha (TRL and the paper use 5; 0 disables)")
    chat_template: str | None = option(
        None, "a Jinja chat template file (default: the tokenizer's, else Llama-3's header format)"
    )

    def steps(self, train_iters: int) -> tuple[CurriculumStep, ...]:
        if self.curriculum:
            return self.curriculum
        if not self.sft_data:
            raise UserError("give --sft-data FILE ... or a YAML 'curriculum' list")
        share, extra = divmod(train_iters, len(self.sft_data))
        return tuple(
            CurriculumStep(path, share + (i < extra)) for i, path in enumerate(self.sft_data)
        )


def encode_file(
    path: str, encoder: ChatEncoder, seq_length: int
) -> tuple[list[Example], list[dict]]:
    """(examples, rejects with line numbers and reasons) of one JSONL file."""

    def convert(record: dict) -> Example:
        example = encoder.encode(record)
        if len(example.ids) > seq_length + 1:
            raise ValueError(f"{len(example.ids)} tokens, longer than --seq-length {seq_length}")
        return example

    return read_records(path, convert)


class SFTSource:
    """Packed rows of one dataset, shuffled once by seed, served by iteration like pretraining."""

    def __init__(
        self, examples: list[Example], seq_length: int, pad_id: int, seed: int, shape
    ) -> None:
        rows = pack(examples, seq_length, pad_id)
        order = torch.randperm(rows.tokens.shape[0], generator=torch.Generator().manual_seed(seed))
        self.rows = rows
        self.order = order
        self.global_batch_size, self.micro_batch_size, self.dp_rank, self.dp_size = shape

    def __len__(self) -> int:
        return len(self.order)

    def batch(self, iteration: int) -> Batch:
        from motif_megatron.training.batches import sample_indices

        picks = self.order[[i % len(self) for i in sample_indices(self, iteration)]]
        r = self.rows
        return Batch(
            tokens=r.tokens[picks],
            labels=r.labels[picks],
            loss_mask=r.loss_mask[picks],
            position_ids=r.position_ids[picks],
            segments=r.segments[picks],
        )


class Curriculum:
    """Dataset ``k`` serves the iterations of curriculum step ``k`` (counted from its start)."""

    def __init__(self, sources: list[SFTSource], iters: list[int]) -> None:
        self.sources, self.starts = sources, [sum(iters[:k]) for k in range(len(iters))]

    def batch(self, iteration: int) -> Batch:
        k = max(i for i, start in enumerate(self.starts) if start <= iteration)
        return self.sources[k].batch(iteration - self.starts[k])


def run(train: TrainConfig, sft: SFTConfig) -> None:
    """Fine-tune ``train.load`` on the curriculum with the trainer's loop (resume, logging...)."""
    from motif_megatron.training.loop import Trainer

    steps = sft.steps(train.train_iters)
    train = replace(
        train,
        stages=tuple(StagePlan(train.stage, iters=s.iters, lr=s.lr) for s in steps),
        train_iters=sum(s.iters for s in steps),
    )

    def data(trainer: Trainer):
        template = Path(sft.chat_template).read_text() if sft.chat_template else None
        encoder = ChatEncoder(trainer.root / "tokenizer", template)
        pad = encoder.tokenizer.pad_token_id
        pad = encoder.tokenizer.eos_token_id if pad is None else pad
        shape = (train.global_batch_size, train.micro_batch_size, trainer.dp_rank, trainer.dp_size)
        sources, all_rejects = [], []
        for k, step in enumerate(steps):
            examples, rejects = encode_file(step.data, encoder, train.seq_length)
            all_rejects += rejects
            reasons = Counter(r["reason"].split(",")[0] for r in rejects)
            trainer.metrics.event(
                f"{step.data}: {len(examples)} examples, {len(rejects)} skipped {dict(reasons)}"
            )
            if not examples:
                raise UserError(
                    f"{step.data} has no example that can train (see the reasons above)"
                )
            sources.append(SFTSource(examples, train.seq_length, pad, train.seed + k, shape))
        if train.save and trainer.is_rank0 and all_rejects:
            Path(train.save).mkdir(parents=True, exist_ok=True)
            with open(Path(train.save) / "sft_rejects.jsonl", "w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in all_rejects)
        return Curriculum(sources, [s.iters for s in steps]), None

    def noise(model: torch.nn.Module) -> None:
        neftune.attach(model, sft.neftune_alpha, train.seq_length)

    Trainer(train, data=data, model_hooks=(noise,)).train()
