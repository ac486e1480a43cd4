"""Multi-process data parallel under ``torchrun`` (gloo on CPU, nccl on GPU).

A single process (no ``torchrun``) is world size 1 and never touches
``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .sharding import is_sharded, release_process_groups


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """This process's contiguous share of ``count`` items (the first ranks get extras)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))


def init_world(device: str) -> World:
    """Join the ``torchrun`` process group when launched by it; otherwise world size 1."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return World()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def close_world(
    world: World, synchronise: bool = False, models: Sequence[torch.nn.Module] = ()
) -> None:
    """Tear the process group down. With ``synchronise`` (after a run that ended normally on
    every rank), first wait for all ranks, so that none destroys the group while another
    still has traffic on it; after an error the other ranks may never arrive, so no waiting.
    Sharded ``models`` first let go of the group (:func:`.sharding.release_process_groups`),
    so that destroying it stops its threads now rather than at interpreter exit."""
    if world.size > 1 and dist.is_initialized():
        if synchronise:
            dist.barrier()
        for model in models:
            if is_sharded(model):
                release_process_groups(model)
        dist.destroy_process_group()


def all_gather_objects(world: World, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` alone in one process)."""
    if world.size == 1:
        return [value]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, value)
    return gathered


def all_ranks_true(world: World, flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on every rank (so all ranks take the same branch)."""
    if world.size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() == 1.0)


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def sum_over_ranks(
    world: World, values: dict[str, float], device: torch.device
) -> dict[str, float]:
    """Sum each value over the processes (for logging the whole batch's loss terms)."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))
