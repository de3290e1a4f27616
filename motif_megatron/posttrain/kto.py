"""KTO (Ethayarajh et al., 2024) as TRL computes it: the loss is a free function of log-probs.

For a completion y of prompt x with label desirable/undesirable, with ``r = log pi(y|x) -
log pi_ref(y|x)`` summed over completion tokens and the reference point
``z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x)))`` estimated on mismatched pairs (x, y') and
never differentiated:

    desirable:    w_d * (1 - sigmoid(beta * (r - z0)))
    undesirable:  w_u * (1 - sigmoid(beta * (z0 - r)))

The loss is the mean over the batch (TRL's ``losses.nanmean()`` over chosen then rejected), the
rewards are ``beta * r``. No collectives here: a data-parallel trainer averages ``z0`` over its
ranks and passes it as ``kl``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from motif_megatron.cli import option
from motif_megatron.errors import UserError
from motif_megatron.model.schedule import Batch
from motif_megatron.training.arguments import TrainConfig


def kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """This rank's detached mean log-ratio of the mismatched pairs (average it over DP, then
    clamp at 0)."""
    return (policy_kl_logps - ref_kl_logps).mean().detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, rewards [batch], kl)`` for ``[batch]`` summed completion log-probs and bool labels.

    ``kl``: the reference point already averaged over data-parallel ranks (default: this batch's
    own estimate); it is clamped at 0 and detached either way.
    """
    labels = labels.bool()
    kl = kl_estimate(policy_kl_logps, ref_kl_logps) if kl is None else kl.detach()
    kl = kl.clamp(min=0)
    logratios = policy_logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    return losses.mean(), beta * logratios.detach(), kl


# --------------------------------------------------------------------------- the trainer


@dataclass(frozen=True)
class KTOConfig:
    kto_data: str | None = option(None, "JSONL of {prompt, completion, label: true|false}")
    beta: float = option(0.1, "KTO beta: how far the policy may move from the reference")
    desirable_weight: float = option(1.0, "weight of desirable examples' losses")
    undesirable_weight: float = option(1.0, "weight of undesirable examples' losses")
    ref_cache: bool = option(
        True, "compute reference log-probs once and cache them (off: a reference model in memory)"
    )
    safety_prompts: str | None = option(
        None, "JSONL of {prompt} for the before/after safety watch (default: the bundled set)"
    )
    safety_lexicon: str | None = option(
        None, "one term per line (default: the bundled Korean/English lexicon)"
    )


@dataclass
class KTOBatch:
    """Matched (prompt, completion) rows and mismatched KL rows, with reference log-probs."""

    tokens: torch.Tensor
    labels: torch.Tensor
    loss_mask: torch.Tensor
    position_ids: torch.Tensor
    kl_tokens: torch.Tensor
    kl_labels: torch.Tensor
    kl_loss_mask: torch.Tensor
    desirable: torch.Tensor
    ref_logps: torch.Tensor
    ref_kl_logps: torch.Tensor
    lengths: tuple[int, ...] = ()
    """Tokens before the padding of each row and each KL row (for the throughput)."""
    rows_per_sample: int = 2
    """Each example's row and its KL row run through the model together (the pipeline's
    activations hold both)."""

    def real_tokens(self) -> int:
        """Tokens that are not padding, the KL rows' included (they run forward and backward)."""
        return sum(self.lengths)


@dataclass
class KTOData:
    """Every example as a padded row, and its KL row: the prompt with the next example's
    completion (TRL pairs each prompt with a shifted completion of the batch; here the shift is
    over the dataset, so the pairs, and the cached reference values, are fixed)."""

    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # tokens, labels, loss_mask
    kl_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    desirable: torch.Tensor
    lengths: torch.Tensor
    """``[examples, 2]``: tokens before the padding of each row and of its KL row."""

    def __len__(self) -> int:
        return len(self.desirable)


def _row(prompt: list[int], completion: list[int], seq: int, pad: int):
    ids = (prompt + completion)[: seq + 1]
    mask = ([0] * len(prompt) + [1] * len(completion))[: seq + 1]
    tokens, labels, loss = [pad] * seq, [pad] * seq, [0.0] * seq
    tokens[: len(ids) - 1], labels[: len(ids) - 1], loss[: len(ids) - 1] = (
        ids[:-1],
        ids[1:],
        mask[1:],
    )
    return tokens, labels, loss


def encode(path: str, encoder, seq_length: int) -> tuple[KTOData, list[dict]]:
    """(data, rejects with reasons) of a KTO JSONL file."""
    from motif_megatron.posttrain.chat import read_records

    def convert(record: dict) -> tuple[list[int], list[int], bool]:
        if not isinstance(record.get("label"), bool):
            raise ValueError("'label' must be true or false")
        if not isinstance(record.get("prompt"), str) or not isinstance(
            record.get("completion"), str
        ):
            raise ValueError("needs text 'prompt' and 'completion'")
        if not record["completion"].strip():
            raise ValueError("empty completion")
        prompt = encoder.prompt_ids([{"role": "user", "content": record["prompt"]}])
        full = encoder.encode({"prompt": record["prompt"], "completion": record["completion"]})
        completion = full.ids[len(prompt) :]
        if full.ids[: len(prompt)] != prompt or not completion:
            raise ValueError("the chat template does not render the prompt as a prefix")
        if len(full.ids) > seq_length + 1:
            raise ValueError(f"{len(full.ids)} tokens, longer than --seq-length {seq_length}")
        return prompt, completion, record["label"]

    kept, rejects = read_records(path, convert)
    if len(kept) < 2:
        raise UserError(f"{path}: {len(kept)} usable examples; KTO needs at least 2")
    labels = [k[2] for k in kept]
    if all(labels) or not any(labels):
        raise UserError(
            f"{path}: every example is {'desirable' if labels[0] else 'undesirable'}; KTO needs both"
        )
    pad = encoder.tokenizer.eos_token_id
    rows = [_row(p, c, seq_length, pad) for p, c, _ in kept]
    kl_rows = [
        _row(p, kept[(i + 1) % len(kept)][1], seq_length, pad) for i, (p, _, _) in enumerate(kept)
    ]

    def stack(items):
        return (
            torch.tensor([r[0] for r in items]),
            torch.tensor([r[1] for r in items]),
            torch.tensor([r[2] for r in items]),
        )

    lengths = [
        [min(len(p) + len(c), seq_length + 1) - 1 for c in (own, kept[(i + 1) % len(kept)][1])]
        for i, (p, own, _) in enumerate(kept)
    ]
    data = KTOData(stack(rows), stack(kl_rows), torch.tensor(labels), torch.tensor(lengths))
    return data, rejects


def _logps_objective(model, mb: Batch):
    """Forward step of the reference pass: each row's summed completion log-prob."""
    output = model(mb.tokens, mb.position_ids, None, labels=mb.labels)
    return output, lambda losses: (losses, {"logps": -(losses.float() * mb.loss_mask).sum(-1)})


def sequence_logps(
    model, data: KTOData, micro_batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs of every row and KL row under ``model`` (no gradients), the
    same on every rank: the trainer's forward-only path."""
    from motif_megatron.model.schedule import as_chunks, forward_only

    out = []
    for tokens, labels, mask in (data.rows, data.kl_rows):
        positions = torch.arange(tokens.shape[1]).expand(tokens.shape[0], -1)
        rows = Batch(tokens=tokens, labels=labels, loss_mask=mask, position_ids=positions)
        reports = forward_only(as_chunks(model), rows, micro_batch_size, _logps_objective)
        out.append(torch.cat([r["logps"] for r in reports]).cpu())
    return out[0], out[1]


class ReferenceLogps:
    """Reference log-probs per example: from a disk cache computed once (the default: the
    reference model is freed before training), or from a reference model kept in memory and
    run on every batch. Both run each row alone, so both give the same bits."""

    def __init__(self, data: KTOData, build_reference: Callable[[], list], cache: Path | None):
        self.data, self.model, self.table = data, None, None
        if cache is None:
            self.model = build_reference()
            return
        if cache.is_file():
            self.table = torch.load(cache, weights_only=True)
            return
        model = build_reference()
        logps, kl_logps = sequence_logps(model, data, micro_batch_size=1)
        del model
        self.table = {"logps": logps, "kl_logps": kl_logps}
        if dist.get_rank() == 0:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save(self.table, tmp)
            tmp.replace(cache)
        dist.barrier()

    def get(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.table is not None:
            return self.table["logps"][rows], self.table["kl_logps"][rows]
        d = self.data
        subset = KTOData(
            tuple(t[rows] for t in d.rows),
            tuple(t[rows] for t in d.kl_rows),
            d.desirable[rows],
            d.lengths[rows],
        )
        return sequence_logps(self.model, subset, micro_batch_size=1)


class KTOSource:
    """Global batches of examples (shuffled once by seed) with their KL rows and reference values."""

    def __init__(self, data: KTOData, reference: ReferenceLogps, seed: int, shape) -> None:
        self.data, self.reference = data, reference
        self.order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        self.global_batch_size, self.micro_batch_size, self.dp_rank, self.dp_size = shape

    def __len__(self) -> int:
        return len(self.data)

    def batch(self, iteration: int) -> KTOBatch:
        from motif_megatron.training.batches import sample_indices

        rows = self.order[[i % len(self) for i in sample_indices(self, iteration)]]
        ref, ref_kl = self.reference.get(rows)
        (t, lab, m), (kt, kl_lab, km) = self.data.rows, self.data.kl_rows
        return KTOBatch(
            tokens=t[rows],
            labels=lab[rows],
            loss_mask=m[rows],
            position_ids=torch.arange(t.shape[1]).expand(len(rows), -1),
            kl_tokens=kt[rows],
            kl_labels=kl_lab[rows],
            kl_loss_mask=km[rows],
            desirable=self.data.desirable[rows],
            ref_logps=ref,
            ref_kl_logps=ref_kl,
            lengths=tuple(self.data.lengths[rows].flatten().tolist()),
        )


def objective(config: KTOConfig):
    """The engine's forward step for KTO: policy log-probs of the matched and KL rows in one
    forward; ``z0`` averaged over data-parallel ranks before the loss."""
    from megatron.core import parallel_state

    def step(model, mb: KTOBatch):
        b = mb.tokens.shape[0]
        tokens = torch.cat([mb.tokens, mb.kl_tokens])
        positions = torch.cat([mb.position_ids, mb.position_ids])
        output = model(tokens, positions, None, labels=torch.cat([mb.labels, mb.kl_labels]))

        def loss_func(losses: torch.Tensor):
            mask = torch.cat([mb.loss_mask, mb.kl_loss_mask])
            logps = -(losses.float() * mask).sum(-1)
            kl = kl_estimate(logps[b:], mb.ref_kl_logps)
            group = parallel_state.get_data_parallel_group()
            dist.all_reduce(kl, group=group)
            kl = kl / dist.get_world_size(group)
            loss, rewards, kl = kto_loss(
                logps[:b],
                mb.ref_logps,
                logps[b:],
                mb.ref_kl_logps,
                mb.desirable,
                config.beta,
                config.desirable_weight,
                config.undesirable_weight,
                kl=kl,
            )
            good = mb.desirable.bool()

            def pair(total, count):
                total = torch.as_tensor(total).float()
                return torch.stack([total, torch.as_tensor(count, device=total.device).float()])

            # per-example form of the per-token loss: the gradient is that of the global batch's
            # mean over examples, whatever the microbatching
            count = torch.tensor(b, dtype=torch.int, device=losses.device)
            return (
                loss * b,
                count,
                {
                    "kto loss": pair(loss.detach() * b, b),
                    "kl": pair(kl, 1),
                    "rewards/desirable": pair(rewards[good].sum(), good.sum()),
                    "rewards/undesirable": pair(rewards[~good].sum(), (~good).sum()),
                },
            )

        return output, loss_func

    return step


def content_digest(files: list[Path], chunk: int = 1 << 24) -> str:
    """A BLAKE2b digest of the files' names and bytes, read a chunk at a time (flat memory; a
    70B checkpoint takes a minute or two, once per KTO run)."""
    h = hashlib.blake2b(digest_size=16)
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def cache_key(load: str, data_file: str, seq_length: int, template: str) -> str:
    """Reference identity (the bytes of its checkpoint's files and model args) + data file,
    sequence length and chat template: a reference with other weights never shares a key.
    Rank 0 reads, every rank gets the key."""
    from motif_megatron.checkpoint import dist as ckpt

    key = [None]
    if dist.get_rank() == 0:
        folder = ckpt.resolve(load)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.append(ckpt.root_of(load) / "motif_model.json")
        settings = f"{seq_length}\0{template}".encode()
        h = hashlib.blake2b(digest_size=8)
        for part in (content_digest(files), content_digest([Path(data_file)]), settings.hex()):
            h.update(part.encode())
        key[0] = h.hexdigest()
    dist.broadcast_object_list(key, src=0)
    return key[0]


def run(train: TrainConfig, kto: KTOConfig) -> dict:
    """KTO from ``train.load`` (also the reference) with the trainer's loop; returns the safety
    watch (before/after) it writes to ``SAVE/safety_watch.json``."""
    from motif_megatron.checkpoint import dist as ckpt
    from motif_megatron.model.builder import build_chunks
    from motif_megatron.posttrain import safety
    from motif_megatron.posttrain.chat import ChatEncoder
    from motif_megatron.training.loop import Trainer

    if not kto.kto_data:
        raise UserError("--kto-data FILE is required")
    if not train.load:
        raise UserError("--load is required: the starting policy and the reference model")
    watch: dict = {}

    def data(trainer: Trainer):
        encoder = ChatEncoder(trainer.root / "tokenizer")
        examples, rejects = encode(kto.kto_data, encoder, train.seq_length)
        trainer.metrics.event(f"{kto.kto_data}: {len(examples)} examples, {len(rejects)} skipped")
        if train.save and trainer.is_rank0 and rejects:
            Path(train.save).mkdir(parents=True, exist_ok=True)
            with open(Path(train.save) / "kto_rejects.jsonl", "w") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects)

        def reference() -> list:
            chunks = build_chunks(trainer.args, trainer.options)
            ckpt.load_model(chunks, train.load)
            return chunks

        ref_model = reference()
        watch["before"] = safety.watch(
            ref_model, encoder, trainer.args.vocab_size, kto.safety_prompts, kto.safety_lexicon
        )
        del ref_model
        cache = None
        if kto.ref_cache:
            key = cache_key(train.load, kto.kto_data, train.seq_length, encoder.template)
            cache = Path(train.save or ".") / "kto_reference" / f"{key}.pt"
        shape = (train.global_batch_size, train.micro_batch_size, trainer.dp_rank, trainer.dp_size)
        source = KTOSource(examples, ReferenceLogps(examples, reference, cache), train.seed, shape)
        trainer.encoder = encoder
        return source, None

    trainer = Trainer(train, data=data, objective=objective(kto))
    trainer.train()
    watch["after"] = safety.watch(
        trainer.chunks,
        trainer.encoder,
        trainer.args.vocab_size,
        kto.safety_prompts,
        kto.safety_lexicon,
    )
    if train.save and dist.get_rank() == 0:
        (Path(train.save) / "safety_watch.json").write_text(
            json.dumps(watch, ensure_ascii=False, indent=2) + "\n"
        )
    return watch
