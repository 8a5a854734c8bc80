"""Process-group plumbing for multi-GPU training under ``torchrun`` (DistributedDataParallel),
and the resumable, seeded data sampler every run uses (one process included)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

__all__ = ["DistributedContext", "ResumableDistributedSampler", "setup_distributed"]


@dataclass
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` processes, its device, and
    whether it created the process group (then it also destroys it)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, samples and logs."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over all processes (itself with one process)."""
        if self.enabled:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= self.world_size
        return values

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on any: ranks agree on when to stop."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def close(self) -> None:
        if self.owns_process_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_process_group = False


def setup_distributed(device: str = "auto") -> DistributedContext:
    """The context of this process. Under ``torchrun`` (WORLD_SIZE > 1 in the environment) it
    joins the process group (NCCL on CUDA, gloo on the CPU) unless one is already initialised,
    and each process takes GPU LOCAL_RANK. ``device``: "auto" (CUDA when available), "cpu",
    "cuda" or "cuda:N" (one process only)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested, but CUDA is not available")
        if world_size > 1:
            if resolved.index is not None:
                raise ValueError(
                    f"device {device!r}: under torchrun each process takes GPU LOCAL_RANK; pass device='cuda' or 'auto'"
                )
            resolved = torch.device("cuda", local_rank)
        elif resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(resolved)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        owns = True
    if world_size > 1:
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=resolved, owns_process_group=owns
    )


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (a shuffle seeded by ``seed + epoch``, one shard per rank) that can
    start partway through an epoch: ``set_position(epoch, skip)`` drops this rank's first
    ``skip`` indices, so a resumed run sees exactly the samples it would have seen.

    The epoch's permutation depends only on ``seed`` and the epoch, not on the number of
    processes, and rank r takes every world_size-th index from r: the global batch of step k
    (the union of the ranks' k-th batches) is the same set of samples for any world size that
    divides the batch, up to the padding DistributedSampler adds at the end of an epoch.
    """

    def __init__(self, dataset, *, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        if not 0 <= skip <= self.num_samples:
            raise ValueError(f"skip must be in [0, {self.num_samples}], got {skip}")
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip
