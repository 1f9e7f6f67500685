"""detectron2 ``data/samplers/distributed_sampler.py``: ``TrainingSampler`` and ``InferenceSampler``.

Both capture the rank and world size when constructed (from ``d2lightning.utils.comm`` unless given), so the
loaders built on them are already sharded by rank: Lightning must not add its own distributed sampler.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from d2lightning.utils import comm
from d2lightning.utils.validation import check_int

__all__ = ["InferenceSampler", "TrainingSampler"]


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    world = comm.get_world_size() if world_size is None else world_size
    r = comm.get_rank() if rank is None else rank
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world_size={world!r} must be a positive int")
    if not isinstance(r, int) or not 0 <= r < world:
        raise ValueError(f"rank={r!r} must be an int in [0, {world})")
    return r, world


class TrainingSampler(Sampler[int]):
    """detectron2 ``TrainingSampler``: an infinite, rank-sharded stream of indices in ``[0, size)``.

    The global stream is ``perm_0 + perm_1 + ...`` where each ``perm_k`` is a permutation of ``range(size)``
    drawn from one generator seeded with ``seed`` (or ``range(size)`` repeated when ``shuffle`` is False).
    Rank ``r`` of ``w`` yields the global items ``r, r + w, r + 2w, ...``. It has no ``__len__``.

    Args:
        size: number of items in the dataset.
        shuffle: shuffle each pass over the data.
        seed: seed of the shuffle, equal on every rank. ``None`` draws one with
            :func:`d2lightning.utils.comm.shared_random_seed` (a collective: every rank must construct the
            sampler).
        rank: this process' rank; defaults to ``comm.get_rank()`` (d2lightning extension, for tests/tools).
        world_size: number of ranks; defaults to ``comm.get_world_size()`` (d2lightning extension).

    Raises:
        TypeError: when ``size`` is not an int.
        ValueError: when ``size`` is not positive, or ``rank``/``world_size`` are inconsistent.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool = True,
        seed: int | None = None,
        *,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"TrainingSampler(size=) expects an int, got {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"TrainingSampler(size=) expects a positive int, got {size}")
        self._size = size
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = _rank_and_world(rank, world_size)
        self._start = 0

    def __iter__(self) -> Iterator[int]:
        start = self._start * self._world_size + self._rank
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)

    def set_start(self, num_items: int) -> None:
        """Make the next iteration start after this rank's first ``num_items`` items (exact resume).

        d2lightning extension: only indices are skipped, no data is loaded.
        """
        self._start = check_int("num_items", num_items, minimum=0)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class InferenceSampler(Sampler[int]):
    """detectron2 ``InferenceSampler``: each rank gets one contiguous shard of ``range(size)``, no padding.

    With ``size = q * w + m``, ranks ``0..m-1`` get ``q + 1`` items and the others ``q``; together they
    cover every index exactly once, so evaluation is exact.

    Args:
        size: number of items in the dataset.
        rank: this process' rank; defaults to ``comm.get_rank()`` (d2lightning extension).
        world_size: number of ranks; defaults to ``comm.get_world_size()`` (d2lightning extension).

    Raises:
        ValueError: when ``size`` is not a positive int or ``rank``/``world_size`` are inconsistent.
    """

    def __init__(self, size: int, *, rank: int | None = None, world_size: int | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise ValueError(f"InferenceSampler(size=) expects a positive int, got {size!r}")
        self._size = size
        self._rank, self._world_size = _rank_and_world(rank, world_size)
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        q, m = divmod(total_size, world_size)
        begin = rank * q + min(rank, m)
        return range(begin, begin + q + int(rank < m))

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
