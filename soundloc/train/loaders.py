"""DataLoaders for training (seeded, resumable order) and validation (sharded), and the
skipped clips a batch carries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .distributed import DistInfo, ShardSampler
from .types import TrainOptions


def make_loader(dataset: Dataset, options: TrainOptions, info: DistInfo, train: bool,
                collate_fn: Callable | None) -> DataLoader:
    """Training: shuffled by (seed, epoch) through a DistributedSampler, also for one process,
    so a resumed run sees the same order; validation: sharded, unshuffled."""
    if train:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                              shuffle=True, seed=options.seed)
    else:
        sampler = ShardSampler(len(dataset), info)  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=options.batch_size, sampler=sampler, num_workers=options.workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(),
                      persistent_workers=options.workers > 0)


def batch_skips(batch: dict[str, Any]) -> list[tuple[str, str]]:
    """The (clip id, reason) pairs a collate function dropped from this batch."""
    return [(str(i), str(r)) for i, r in batch.get("skipped", ())]
