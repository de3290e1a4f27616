"""Global batches from a Megatron dataset, indexed by iteration (so the data position is the
iteration number, and a resumed run reads exactly the samples an uninterrupted one would).

Sample order follows Megatron-LM's ``MegatronPretrainingSampler``: each microbatch step takes
``micro_batch_size * dp`` consecutive samples and data-parallel rank ``r`` gets the ``r``-th slice.
"""

from __future__ import annotations

import numpy as np
import torch

from motif_megatron.training.engine import Batch


class BatchSource:
    def __init__(
        self, dataset, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int
    ) -> None:
        self.dataset = dataset
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size

    def indices(self, iteration: int) -> list[int]:
        """Dataset sample indices of this rank's share of global batch ``iteration`` (0-based)."""
        step = self.micro_batch_size * self.dp_size
        base = iteration * self.global_batch_size
        out = []
        for start in range(base, base + self.global_batch_size, step):
            first = start + self.dp_rank * self.micro_batch_size
            out.extend(i % len(self.dataset) for i in range(first, first + self.micro_batch_size))
        return out

    def batch(self, iteration: int) -> Batch:
        samples = [self.dataset[i] for i in self.indices(iteration)]

        def stack(key: str, dtype) -> torch.Tensor:
            return torch.from_numpy(np.stack([np.asarray(s[key]) for s in samples])).to(dtype)

        return Batch(
            tokens=stack("tokens", torch.long),
            labels=stack("labels", torch.long),
            loss_mask=stack("loss_mask", torch.float32),
            position_ids=stack("position_ids", torch.long),
        )
