"""Distributed helpers with detectron2's names and semantics (``detectron2.utils.comm``).

Every function works without an initialised process group (world size 1, rank 0), so single-process code
needs no special case. Functions documented as *collective* must be called on every rank.

The per-machine ("local") process group that :func:`get_local_rank` and :func:`get_local_size` need is
created by :func:`create_local_process_group`; ``d2lightning.engine.launch`` and the Lightning adapter call it
for you once the default group exists.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "create_local_process_group",
    "gather",
    "get_local_process_group",
    "get_local_rank",
    "get_local_size",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "reduce_dict",
    "shared_random_seed",
    "synchronize",
]

_LOCAL_PROCESS_GROUP: dist.ProcessGroup | None = None
_MISSING_LOCAL_PG = (
    "Local process group is not yet created! Please use d2lightning's `launch()` to start processes and "
    "initialize pytorch process group. If you need to start processes in other ways, please call "
    "comm.create_local_process_group(num_workers_per_machine) after calling "
    "torch.distributed.init_process_group()."
)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _is_dist() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _is_dist() else 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create one process group per machine from consecutive ranks (collective).

    Args:
        num_workers_per_machine: processes on each machine; must divide the world size.

    Raises:
        ValueError: when ``num_workers_per_machine`` does not divide the world size.
    """
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        return
    world = get_world_size()
    if num_workers_per_machine < 1 or world % num_workers_per_machine != 0:
        raise ValueError(
            f"num_workers_per_machine={num_workers_per_machine} must be >= 1 and divide the world size {world}"
        )
    if not _is_dist():
        return
    machine = get_rank() // num_workers_per_machine
    for i in range(world // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)  # every rank must create every group
        if i == machine:
            _LOCAL_PROCESS_GROUP = group


def get_local_process_group() -> dist.ProcessGroup:
    """The per-machine group created by :func:`create_local_process_group`."""
    if _LOCAL_PROCESS_GROUP is None:
        raise RuntimeError(_MISSING_LOCAL_PG)
    return _LOCAL_PROCESS_GROUP


def get_local_rank() -> int:
    """Rank of this process within its machine (0 when not distributed)."""
    if not _is_dist():
        return 0
    return dist.get_rank(group=get_local_process_group())


def get_local_size() -> int:
    """Number of processes on this machine (1 when not distributed)."""
    if not _is_dist():
        return 1
    return dist.get_world_size(group=get_local_process_group())


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (collective; a no-op at world size 1)."""
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


@functools.lru_cache
def _gloo_group() -> dist.ProcessGroup:
    """A cached gloo group: object collectives run on CPU whatever the main backend is."""
    if dist.get_backend() == dist.Backend.NCCL:
        return dist.new_group(backend="gloo")
    return dist.group.WORLD  # type: ignore[return-value]


def all_gather(data: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Gather a picklable object from every rank (collective).

    Returns:
        The objects of all ranks, in rank order.
    """
    if get_world_size() == 1:
        return [data]
    group = group if group is not None else _gloo_group()
    n = dist.get_world_size(group)
    if n == 1:
        return [data]
    output: list[Any] = [None] * n
    dist.all_gather_object(output, data, group=group)
    return output


def gather(data: Any, dst: int = 0, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Gather a picklable object to rank ``dst`` (collective).

    Returns:
        On ``dst``, the objects of all ranks in rank order; on the other ranks, ``[]``.
    """
    if get_world_size() == 1:
        return [data]
    group = group if group is not None else _gloo_group()
    n = dist.get_world_size(group)
    if n == 1:
        return [data]
    if dist.get_rank(group=group) == dst:
        output: list[Any] = [None] * n
        dist.gather_object(data, output, dst=dst, group=group)
        return output
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random integer drawn on every rank and replaced by rank 0's value (collective)."""
    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Reduce scalar tensors to rank 0, keys in sorted order (collective).

    Only rank 0 holds the reduced (and, with ``average``, divided) values; other ranks get partial sums,
    as in detectron2.
    """
    world = get_world_size()
    if world < 2:
        return input_dict
    with torch.no_grad():
        names = sorted(input_dict)
        values = torch.stack([input_dict[k] for k in names], dim=0)
        dist.reduce(values, dst=0)
        if dist.get_rank() == 0 and average:
            values /= world
        return dict(zip(names, values, strict=True))


def _reset_local_process_group() -> None:
    """Forget the local group (after the default group is destroyed)."""
    global _LOCAL_PROCESS_GROUP
    _LOCAL_PROCESS_GROUP = None
    _gloo_group.cache_clear()
