"""The DataLoader side of :class:`~d2lightning.data.streams.sampled.SampledStream`: what runs in its workers.

:func:`rebuild_loader` gives a DataLoader with the settings of a detectron2 loader's DataLoader (workers, their
``worker_init_fn``, the base-seed generator, prefetching, pinning, ...) over :class:`ShardedItems`, which maps each
worker's share of the index stream as detectron2's ``ToIterableDataset`` does; its ``collate_fn``
(:class:`CollateAndCapture`) runs the loader's own collate and tags each output (a :class:`Fetch`) with where it
came from and the worker's RNG state after it. A resumed stream hands the workers a :class:`WorkerPlan`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from d2lightning.data.streams import rng
from d2lightning.data.streams.replay import fetches_of_worker, worker_share

__all__ = ["CollateAndCapture", "Fetch", "ShardedItems", "WorkerPlan", "rebuild_loader"]

#: What :class:`ShardedItems` yields: ``(mapped item, RNG state before mapping it or None, position, index)``.
Item = tuple[Any, rng.RngSnapshot | None, int, int]


class Fetch(NamedTuple):
    """One DataLoader output: ``data`` plus where it came from (a tuple, so ``pin_memory`` reaches ``data``)."""

    data: Any
    worker: int  # -1 in the main process
    pre: rng.RngSnapshot | None  # RNG state before mapping its (first) item, when taken
    post: rng.RngSnapshot | None  # the worker's RNG state after the fetch (workers only)
    position: int  # stream position of its (first) item; -1 for a placeholder
    dataset_index: int


@dataclass(frozen=True)
class WorkerPlan:
    """What each worker of a resumed stream needs: the fetches consumed at the cut and the workers' RNG states
    after their last consumed fetch (None: the worker had delivered nothing, it starts as it did)."""

    fetches: int
    states: tuple[rng.RngSnapshot | None, ...]


class ShardedItems(IterableDataset):
    """Each worker's (or, without workers, the main process') share of the index stream, mapped.

    Worker ``w`` of ``W`` keeps chunks ``w, w + W, ...`` of ``chunk_size`` positions (detectron2's
    ``ToIterableDataset``). Resumed with a :class:`WorkerPlan`: each worker skips the indices of its consumed fetches
    (without mapping them) and takes its saved RNG state; as the DataLoader's round robin starts at worker 0 while
    the next fetch is worker ``fetches % W``'s, the workers before it first give one placeholder fetch each.

    Args:
        dataset: map-style, ``dataset[index]`` maps.
        sampler: the index stream.
        chunk_size: the sharding chunk.
        fetch_size: items per fetch.
        plan: None for a fresh stream.
        pre_each: take the RNG state before mapping every item (else only before a worker's first).
    """

    def __init__(
        self, dataset: Any, sampler: Any, chunk_size: int, fetch_size: int, plan: WorkerPlan | None, pre_each: bool
    ) -> None:
        self.dataset, self.sampler, self.chunk_size = dataset, sampler, chunk_size
        self.fetch_size, self.plan, self.pre_each = fetch_size, plan, pre_each

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker, workers = (-1, 0) if info is None else (info.id, info.num_workers)
        skip = 0
        if self.plan is not None:
            skip = fetches_of_worker(self.plan.fetches, worker, workers) * self.fetch_size
            if workers and worker < self.plan.fetches % workers:
                yield from [(None, None, -1, -1)] * self.fetch_size
            state = self.plan.states[worker] if workers else None
            if state is not None:
                rng.restore(state)
        share = worker_share(self.sampler, worker, workers, self.chunk_size)
        for n, (position, index) in enumerate(itertools.islice(share, skip, None)):
            pre = rng.capture() if self.pre_each or (n == 0 and workers) else None
            yield self.dataset[index], pre, position, index


class CollateAndCapture:
    """A DataLoader ``collate_fn``: the loader's own ``collate_fn`` on the items, as a :class:`Fetch`."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[Item]) -> Fetch:
        info = get_worker_info()
        worker = -1 if info is None else info.id
        _, pre, position, index = items[0]
        if position < 0:
            return Fetch(None, worker, None, None, -1, -1)
        data = self.collate_fn([item[0] for item in items])
        return Fetch(data, worker, pre, None if info is None else rng.capture(), position, index)


def rebuild_loader(loader: DataLoader, items: ShardedItems) -> DataLoader:
    """A DataLoader over ``items`` with ``loader``'s settings and :class:`CollateAndCapture` of its collate."""
    workers = int(loader.num_workers)
    extra: dict[str, Any] = {"pin_memory_device": loader.pin_memory_device} if loader.pin_memory_device else {}
    return DataLoader(
        items,
        batch_size=loader.batch_size,
        drop_last=loader.drop_last,
        num_workers=workers,
        collate_fn=CollateAndCapture(loader.collate_fn),
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        multiprocessing_context=loader.multiprocessing_context,
        **extra,
    )
