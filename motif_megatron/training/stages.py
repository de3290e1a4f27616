"""Training stages: which parameters (and which vocabulary rows) train.

A stage is decided before Megatron DDP wraps the model, because DDP leaves frozen parameters out
of its gradient buffers. Row-level stages (only the new vocabulary rows of the embedding or the
output layer) train the whole tensor with a gradient mask applied after the data-parallel
reduction and no weight decay on it, so the old rows stay bit-identical.

Names (``--stage`` or a YAML ``stages`` list):

- ``full``: everything. ``regex:PATTERN``: parameters whose name matches (``re.search``).
- ``llama-pro``: the blocks the depth transform recorded as new (``growth.llama_pro_layers``).
- ``eeve-1`` .. ``eeve-7`` (EEVE): 1 new input rows; 2 new output rows; 3 new input + new output
  rows; 4 all output rows; 5 new input rows + all output rows; 6 all parameters; 7 the
  transformer layers only.
- ``redwhale-embed`` (embedding + head), ``redwhale-odd`` / ``redwhale-even`` (layers 1, 3, ...
  / 2, 4, ... counted from 1), ``redwhale-lora`` or ``lora`` (LoRA adapters on every attention
  and MLP projection; the base frozen; merged into the weights on save).
- ``A+B``: the union of stages, e.g. ``llama-pro+eeve-3`` (the new blocks and the new vocabulary
  rows: LlamaPro on a vocabulary-expanded model) or ``lora+eeve-3``. A tensor that one part trains
  whole is not row-masked; a ``regex:`` part runs to the end of the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from motif_megatron.errors import UserError
from motif_megatron.model.llama import LlamaArgs

EMBEDDING = "embedding.word_embeddings.weight"
OUTPUT = "output_layer.weight"
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")

# stage -> (what trains, rows-only tensors): names are EMBEDDING, OUTPUT, "layers", "all"
_EEVE = {
    1: ({EMBEDDING}, {EMBEDDING}),
    2: ({OUTPUT}, {OUTPUT}),
    3: ({EMBEDDING, OUTPUT}, {EMBEDDING, OUTPUT}),
    4: ({OUTPUT}, set()),
    5: ({EMBEDDING, OUTPUT}, {EMBEDDING}),
    6: ({"all"}, set()),
    7: ({"layers"}, set()),
}
NAMES = (
    "full",
    "llama-pro",
    *(f"eeve-{i}" for i in _EEVE),
    "redwhale-embed",
    "redwhale-odd",
    "redwhale-even",
    "redwhale-lora",
    "lora",
    "regex:PATTERN",
)
LORA_STAGES = ("redwhale-lora", "lora")
"""Stages that attach LoRA adapters (``model/lora.py``) and train only them."""


def parts(name: str) -> list[str]:
    """The stages a ``+``-joined name unites (a ``regex:`` part runs to the end)."""
    head, regex, pattern = name.partition("regex:")
    return [p for p in head.split("+") if p] + ([regex + pattern] if regex else [])


def known(name: str) -> bool:
    return bool(parts(name)) and all(p in NAMES or p.startswith("regex:") for p in parts(name))


def uses_lora(name: str) -> bool:
    """Whether the stage attaches LoRA adapters."""
    return any(p in LORA_STAGES for p in parts(name))


@dataclass
class Stage:
    """A resolved stage: the trainable parameter names and the row masks of partly-frozen ones."""

    name: str
    trainable: set[str]
    row_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """name -> [local rows, 1] float mask (1 = trains) for the tensors trained by rows."""
    lora: bool = False
    """Adapters carry the training; every base weight is frozen."""

    def apply(self, model: torch.nn.Module) -> None:
        """Set ``requires_grad``; call before wrapping the model in DDP."""
        for name, param in model.named_parameters():
            param.requires_grad_(name in self.trainable)

    def mask_gradients(self, model: torch.nn.Module) -> None:
        """Zero the reduced gradients of frozen rows (call after the DP grad sync)."""
        params = dict(model.named_parameters())
        for name, mask in self.row_masks.items():
            param = params[name]
            grad = param.main_grad if hasattr(param, "main_grad") else param.grad
            if grad is not None:
                grad.mul_(mask.to(grad.dtype))


def _global_layer(model: torch.nn.Module, name: str) -> int | None:
    """Global 0-based layer index of a parameter name (local index + this stage's offset)."""
    match = _LAYER.search(name)
    if not match:
        return None
    return model.decoder.layers[int(match.group(1))].layer_number - 1


def _row_mask(model: torch.nn.Module, name: str, old_vocab: int) -> torch.Tensor:
    """1 for this TP shard's rows at or past ``old_vocab``, 0 for the base rows."""
    from megatron.core import parallel_state

    param = dict(model.named_parameters())[name]
    local = param.shape[0]
    first = parallel_state.get_tensor_model_parallel_rank() * local
    rows = torch.arange(first, first + local, device=param.device)  # where its gradient is
    return (rows >= old_vocab).float().unsqueeze(1)


def _union(name: str, stages: list[Stage]) -> Stage:
    trainable = set().union(*(s.trainable for s in stages))
    whole = {n for s in stages for n in s.trainable - set(s.row_masks)}
    masks: dict[str, torch.Tensor] = {}
    for s in stages:
        for n, mask in s.row_masks.items():
            if n not in whole:
                masks[n] = torch.maximum(masks[n], mask) if n in masks else mask
    return Stage(name, trainable, masks, any(s.lora for s in stages))


def resolve(name: str, model: torch.nn.Module, args: LlamaArgs) -> Stage:
    """The stage ``name`` for this rank's model chunk (``args`` carries the growth metadata)."""
    if len(parts(name)) > 1:
        return _union(name, [resolve(p, model, args) for p in parts(name)])
    names = [n for n, _ in model.named_parameters()]
    layer_of = {n: _global_layer(model, n) for n in names}
    is_layer = {n for n in names if layer_of[n] is not None}
    if name == "full":
        return Stage(name, set(names))
    if name.startswith("regex:"):
        try:
            pattern = re.compile(name[len("regex:") :])
        except re.error as exc:
            raise UserError(f"stage {name!r}: bad regex ({exc})") from None
        return Stage(name, {n for n in names if pattern.search(n)})
    if name == "llama-pro":
        new = set(args.growth.get("llama_pro_layers", ()))
        if not new:
            raise UserError(
                "stage llama-pro: this checkpoint records no new layers "
                "(grow it with tools/expand_checkpoint.py --depth-add N)"
            )
        return Stage(name, {n for n in is_layer if layer_of[n] in new})
    if name in ("redwhale-odd", "redwhale-even"):
        parity = 1 if name.endswith("odd") else 0
        return Stage(name, {n for n in is_layer if (layer_of[n] + 1) % 2 == parity})
    if name == "redwhale-embed":
        return Stage(name, {n for n in names if n in (EMBEDDING, OUTPUT)})
    if name in LORA_STAGES:
        return Stage(name, {n for n in names if ".lora_" in n}, lora=True)
    match = re.fullmatch(r"eeve-(\d)", name)
    if match and int(match.group(1)) in _EEVE:
        groups, rows_only = _EEVE[int(match.group(1))]
        trainable = set()
        for n in names:
            if "all" in groups or n in groups or ("layers" in groups and n in is_layer):
                trainable.add(n)
        stage = Stage(name, trainable)
        if rows_only:
            vocab = args.growth.get("vocab")
            if not vocab:
                raise UserError(
                    f"stage {name}: this checkpoint has no new vocabulary rows "
                    "(grow it with tools/expand_checkpoint.py --tokenizer DIR)"
                )
            stage.row_masks = {
                n: _row_mask(model, n, vocab["old"]) for n in rows_only if n in trainable
            }
        return stage
    raise UserError(f"unknown stage {name!r}; choose one of {', '.join(NAMES)} or A+B of them")
