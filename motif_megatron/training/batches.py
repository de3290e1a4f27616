"""Global batches from a Megatron dataset, indexed by iteration (so the data position is the
iteration number, and a resumed run reads exactly the samples an uninterrupted one would).

Sample order follows Megatron-LM's ``MegatronPretrainingSampler``: each microbatch step takes
``micro_batch_size * dp`` consecutive samples and data-parallel rank ``r`` gets the ``r``-th slice.
"""

from __future__ import annotations

import numpy as np
import torch

from motif_megatron.model.schedule import Batch


def sample_indices(source, iteration: int) -> list[int]:
    """Sample numbers (not yet wrapped to the dataset) of this rank's share of global batch
    ``iteration`` (0-based); ``source`` has the batch sizes and DP rank/size."""
    step = source.micro_batch_size * source.dp_size
    base = iteration * source.global_batch_size
    out = []
    for start in range(base, base + source.global_batch_size, step):
        first = start + source.dp_rank * source.micro_batch_size
        out.extend(range(first, first + source.micro_batch_size))
    return out


class BatchSource:
    def __init__(
        self, dataset, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
    ) -> None:
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, iteration: int) -> Batch:
        samples = [self.dataset[i % len(self)] for i in sample_indices(self, iteration)]

        def stack(key: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])).to(dtype)

        return Batch(
            tokens=stack("tokens", torch.long),
            labels=stack("labels", torch.long),
            loss_mask=stack("loss_mask", torch.float32),
            position_ids=stack("position_ids", torch.long),
        )
