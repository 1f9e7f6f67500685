"""Distributed helpers with detectron2's names and semantics (``detectron2.utils.comm``).

Every function works without an initialised process group (world size 1, rank 0), so single-process code
needs no special case. Functions documented as *collective* must be called on every rank.

The per-machine ("local") process group that :func:`get_local_rank` and :func:`get_local_size` need is
created by :func:`create_local_process_group`; ``d2lightning.engine.launch`` creates it for you, and
``d2lightning.engine.launch.ensure_local_process_group`` creates it after Lightning initialised the default
group itself. A local group belongs to the default group it was created under: once that default group is
destroyed, the local group is forgotten and can be created again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from d2lightning.utils.validation import check_int

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

# The per-machine group, its size, and the default group it was created under.
_LOCAL_PROCESS_GROUP: dist.ProcessGroup | None = None
_LOCAL_SIZE: int = 0
_LOCAL_OWNER: dist.ProcessGroup | None = None
# (default group, gloo group over all ranks) for the object collectives.
_GLOO_CACHE: tuple[dist.ProcessGroup, dist.ProcessGroup] | None = None
_MISSING_LOCAL_PG = (
    "Local process group is not yet created! Please use d2lightning's `launch()` to start processes and "
    "initialize pytorch process group. If you need to start processes in other ways, please call "
    "comm.create_local_process_group(num_workers_per_machine) after calling "
    "torch.distributed.init_process_group()."
)


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def _default_group() -> dist.ProcessGroup | None:
    return dist.group.WORLD if _is_dist() else None


def _valid_local_group() -> dist.ProcessGroup | None:
    """The local group if it belongs to the current default group, else forget it and return None."""
    if _LOCAL_PROCESS_GROUP is not None and (_LOCAL_OWNER is None or _LOCAL_OWNER is not _default_group()):
        _reset_local_process_group()
    return _LOCAL_PROCESS_GROUP


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _is_dist() else 1


def get_rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    return dist.get_rank() if _is_dist() else 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create one process group per machine from consecutive ranks (collective).

    Mirrors detectron2's ``comm.create_local_process_group``: machine ``i`` holds ranks
    ``[i * n, (i + 1) * n)``. Every rank creates every group, so all ranks must call it. Calling it again
    with the same ``n`` under the same default group does nothing (detectron2 caches the call too). Without
    a process group it does nothing (``n`` must then be 1).

    Args:
        num_workers_per_machine: processes on each machine (``n``); must divide the world size.

    Raises:
        TypeError: when ``num_workers_per_machine`` is not an int.
        ValueError: when it is not positive, does not divide the world size, or differs from the size of
            the local group that already exists.
    """
    global _LOCAL_PROCESS_GROUP, _LOCAL_SIZE, _LOCAL_OWNER
    check_int("num_workers_per_machine", num_workers_per_machine, minimum=1)
    world = get_world_size()
    if world % num_workers_per_machine != 0:
        raise ValueError(
            f"num_workers_per_machine={num_workers_per_machine} must be >= 1 and divide the world size {world}"
        )
    if _valid_local_group() is not None:
        if num_workers_per_machine != _LOCAL_SIZE:
            raise ValueError(
                f"num_workers_per_machine={num_workers_per_machine} differs from the existing local process "
                f"group of size {_LOCAL_SIZE}; it can be created only once per default process group"
            )
        return
    if not _is_dist():
        return
    machine = get_rank() // num_workers_per_machine
    for i in range(world // num_workers_per_machine):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)  # every rank must create every group
        if i == machine:
            _LOCAL_PROCESS_GROUP = group
    _LOCAL_SIZE = num_workers_per_machine
    _LOCAL_OWNER = _default_group()
    from d2lightning import _compat  # a real detectron2's comm gets the same group

    _compat.share_local_process_group(_LOCAL_PROCESS_GROUP)


def get_local_process_group() -> dist.ProcessGroup:
    """The per-machine group created by :func:`create_local_process_group`.

    Raises:
        RuntimeError: when it has not been created under the current default group.
    """
    group = _valid_local_group()
    if group is None:
        raise RuntimeError(_MISSING_LOCAL_PG)
    return group


def get_local_rank() -> int:
    """Rank of this process within its machine (0 when not distributed).

    Raises:
        RuntimeError: when distributed but the local group was never created (detectron2 asserts).
    """
    if not _is_dist():
        return 0
    return dist.get_rank(group=get_local_process_group())


def get_local_size() -> int:
    """Number of processes on this machine (1 when not distributed).

    Raises:
        RuntimeError: when distributed but the local group was never created (detectron2 asserts).
    """
    if not _is_dist():
        return 1
    return dist.get_world_size(group=get_local_process_group())


def is_main_process() -> bool:
    """True on global rank 0."""
    return get_rank() == 0


def synchronize() -> None:
    """Barrier across all processes (collective; a no-op at world size 1).

    With NCCL the barrier runs on the current CUDA device, as in detectron2.
    """
    if get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _gloo_group() -> dist.ProcessGroup:
    """A gloo group over all ranks, cached per default group: object collectives run on CPU."""
    global _GLOO_CACHE
    world = dist.group.WORLD
    if world is None:
        raise RuntimeError("torch.distributed is not initialised")
    if _GLOO_CACHE is None or _GLOO_CACHE[0] is not world:
        gloo = dist.new_group(backend="gloo") if dist.get_backend() == dist.Backend.NCCL else world
        _GLOO_CACHE = (world, gloo)
    return _GLOO_CACHE[1]


def all_gather(data: Any, group: dist.ProcessGroup | None = None) -> list[Any]:
    """Gather a picklable object from every rank (collective).

    Args:
        data: any picklable object.
        group: the group to gather over; by default every rank, over gloo (CPU) even when training on NCCL.

    Returns:
        The objects of all ranks of ``group``, in rank order (``[data]`` at world size 1).
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

    Args:
        data: any picklable object.
        dst: the destination's global rank.
        group: as for :func:`all_gather`.

    Returns:
        On ``dst``, the objects of all ranks in rank order; on the other ranks, ``[]``
        (``[data]`` at world size 1).
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
    """A random integer in ``[0, 2**31)`` that is the same on every rank (collective).

    Every rank draws from numpy's global RNG; rank 0's draw is returned everywhere.
    """
    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])


def reduce_dict(input_dict: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """Reduce scalar tensors to rank 0, keys in sorted order (collective).

    Only rank 0 holds the reduced (and, with ``average``, divided by the world size) values; other ranks get
    whatever the backend leaves in their buffers, as in detectron2. At world size 1 the input is returned.
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
    """Forget the local group and the cached gloo group (after the default group is destroyed)."""
    global _LOCAL_PROCESS_GROUP, _LOCAL_SIZE, _LOCAL_OWNER, _GLOO_CACHE
    _LOCAL_PROCESS_GROUP = None
    _LOCAL_SIZE = 0
    _LOCAL_OWNER = None
    _GLOO_CACHE = None
