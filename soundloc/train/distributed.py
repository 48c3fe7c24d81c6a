"""Where this process stands in a ``torchrun`` job (or a single process), and the pieces of
training that change with it: device choice, the process group, sharded evaluation, and
gathering per-rank reports. NCCL on CUDA, gloo on CPU."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from ..errors import SoundlocError


class DistributedError(SoundlocError, ValueError):
    """A torchrun environment or device request that cannot work here."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly one-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_from_env() -> DistInfo:
    """Read torchrun's WORLD_SIZE / RANK / LOCAL_RANK (absent: a single process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise DistributedError(f"bad torchrun environment: {e}") from None
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU; asking for a missing GPU fails."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError(f"device {name!r} asked for, but torch sees no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) unless this is a single process."""
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=info.rank, world_size=info.world_size)


def close_distributed(info: DistInfo, *, clean: bool = True) -> None:
    """Leave the process group in an order that cannot abort the process.

    ``clean`` (every rank got here without an error): a barrier first, so no rank tears down
    its gloo connections while a peer is still in a collective on them; then a garbage
    collection, so DDP wrappers the caller has dropped (their reducers hold the group and sit
    in reference cycles) are freed now, not during interpreter shutdown, where destroying a
    group whose threads still run ends in SIGABRT ("terminate called without an active
    exception"). The caller must drop its own references first. After an error, peers may be
    gone: the group is destroyed without waiting.
    """
    if not (info.enabled and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
        gc.collect()
    dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Every ``world``-th index from ``rank``: each clip evaluated exactly once over all ranks
    (DistributedSampler would pad with repeats and bias the accuracy)."""

    def __init__(self, n: int, info: DistInfo) -> None:
        self.indices = list(range(info.rank, n, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def gather_list(items: list, info: DistInfo) -> list:
    """All ranks' lists of picklable items, concatenated in rank order, on every rank."""
    if not info.enabled:
        return items
    out: list[list] = [[] for _ in range(info.world_size)]
    dist.all_gather_object(out, items)
    return [s for part in out for s in part]


def gather_skips(skipped: list, info: DistInfo) -> list[tuple[str, str]]:
    """All ranks' skipped (id, reason) pairs, on every rank."""
    return [tuple(s) for s in gather_list(skipped, info)]  # type: ignore[misc]
