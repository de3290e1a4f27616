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

SUFFIXES = ("lora_a", "lora_b", "lora_scale")


def is_row_parallel(cls: type) -> bool:
    """Megatron's ``RowParallelLinear`` or TE's ``TERowParallelLinear`` (split by input)."""
    from megatron.core.tensor_parallel import RowParallelLinear

    return issubclass(cls, RowParallelLinear) or "Row" in cls.__name__


def merge(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale) -> torch.Tensor:
    """``base + scale * B @ A`` in fp32, in the base's dtype; batched over a leading layer axis
    (``scale`` then has one value per layer)."""
    scale = torch.as_tensor(scale, dtype=torch.float32, device=base.device)
    delta = (b.float() @ a.float()) * scale[..., None, None]
    return (base.float() + delta).to(base.dtype)


def local_shard(full: torch.Tensor, local_shape, row: bool, gated: bool) -> torch.Tensor:
    """This TP rank's part of a global layer tensor, as the layer holds it: the input columns of
    a row-parallel layer, the output rows of a column-parallel one, SwiGLU fc1's
    ``[gate_rank; up_rank]``."""
    from megatron.core import parallel_state

    rank = parallel_state.get_tensor_model_parallel_rank()
    if row:
        n = local_shape[1]
        return full[:, rank * n : (rank + 1) * n]
    n = local_shape[0]
    if not gated:
        return full[rank * n : (rank + 1) * n]
    half, n = full.shape[0] // 2, n // 2
    return torch.cat(
        [full[rank * n : (rank + 1) * n], full[half + rank * n : half + (rank + 1) * n]]
    )


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
