"""LoRA adapters as a checkpoint stores them, and the merge every reader of one applies.

A LoRA checkpoint holds each adapted linear's frozen base once, under the layer's usual
``weight`` key, and beside it ``lora_a`` (``[r, in]``), ``lora_b`` (``[out, r]``) and
``lora_scale`` (alpha / r), stacked over layers like the weight and in the same global layout
(fc1's B rows as ``[gate; up]``). A reader that wants the adapted model adds
``scale * B @ A`` to the base: :class:`~motif_megatron.checkpoint.dist.CheckpointReader` does
it in the global layout (export, growth, merge), :func:`fold` into the TP shards of a model that
has no adapters of its own (evaluation, the next stage, the KTO reference).
"""

from __future__ import annotations

import torch

from motif_megatron.model.lora import is_row_parallel, local_shard, merge

SUFFIXES = ("lora_a", "lora_b", "lora_scale")


def linears(model: torch.nn.Module):
    """``(module, key prefix, global layer, row, gated)`` for every TP linear of the local
    decoder layers: what a checkpoint can hold adapters for."""
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    gated = model.config.gated_linear_unit
    for layer in model.decoder.layers:
        for name, module in layer.named_modules():
            cls = type(module)
            if not (
                issubclass(cls, (ColumnParallelLinear, RowParallelLinear))
                or getattr(module, "parallel_mode", None) in ("column", "row")
            ):
                continue
            fc1 = name.endswith("linear_fc1")
            yield (
                module,
                f"decoder.layers.{name}.",
                layer.layer_number - 1,
                is_row_parallel(cls),
                fc1 and gated,
            )


def local_adapters(reader, key: str, layer: int, local_shape, row: bool, gated: bool):
    """``(A, B, scale)`` of ``key``'s stored adapters at ``layer``, sliced as this rank's shard
    of the weight needs them."""
    a = reader.get(key + "lora_a", layer)
    b = reader.get(key + "lora_b", layer)
    if row:
        a = local_shard(a, (a.shape[0], local_shape[1]), True, False)
    else:
        b = local_shard(b, (local_shape[0], b.shape[1]), False, gated)
    return a, b, reader.get(key + "lora_scale", layer)


def fold(model: torch.nn.Module, reader) -> int:
    """Add the stored adapters to the loaded base weights of the layers that do not take them
    as adapters of their own (a layer without any, or a LoRA layer loading only its base, says
    so with ``folds_stored_adapters``); returns the number of layers folded."""
    count = 0
    for module, key, layer, row, gated in linears(model):
        if key + "lora_a" not in reader.shapes or not getattr(
            module, "folds_stored_adapters", True
        ):
            continue
        weight = module.weight
        a, b, scale = local_adapters(reader, key, layer, weight.shape, row, gated)
        with torch.no_grad():
            weight.copy_(merge(weight, a.to(weight.device), b.to(weight.device), scale))
        count += 1
    return count
