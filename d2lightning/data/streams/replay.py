"""Where a detectron2-style train stream stands after N batches, computed from indices and image sizes alone.

The stream (see :mod:`d2lightning.data.streams.sampled`) is: the sampler's infinite index stream of this rank →
each DataLoader worker keeps every ``num_workers``-th chunk of ``chunk_size`` positions (detectron2's
``ToIterableDataset`` sharding) → the DataLoader fetches ``fetch_size`` items from worker 0, 1, ..., 0, 1, ... in
turn → optionally the aspect-ratio grouping puts each item in bucket 0 (width > height) or 1 and hands out a bucket
as a batch when it holds ``batch_size`` items. "Fetch ``f``" below is the DataLoader's ``f``-th output (0-based);
without workers everything runs in the main process and fetch ``f`` holds positions ``f*fetch_size ...``.

Nothing here maps an item or reads an image: grouping is replayed from the dataset dicts' ``width``/``height``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GroupingReplay", "fetches_of_worker", "replay_grouping", "wide_flags", "worker_share"]


def worker_share(indices: Iterable[int], worker: int, num_workers: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """``(position, index)`` of the items worker ``worker`` of ``num_workers`` maps, in its order.

    With more than one worker, worker ``w`` keeps chunks ``w, w + num_workers, ...`` of ``chunk_size`` positions;
    with none (``num_workers`` 0, the main process) or one, every position.
    """
    numbered = enumerate(indices)
    if num_workers <= 1:
        return numbered
    return ((p, i) for p, i in numbered if (p // chunk_size) % num_workers == worker)


def fetches_of_worker(fetches: int, worker: int, num_workers: int) -> int:
    """How many of the first ``fetches`` fetches came from ``worker`` (all of them without workers)."""
    if num_workers <= 0:
        return fetches
    return max(0, -(-(fetches - worker) // num_workers))


def fetch_positions(fetches: np.ndarray, num_workers: int, chunk_size: int) -> np.ndarray:
    """The stream position of the (single) item of each fetch in ``fetches`` when ``fetch_size`` is 1."""
    if num_workers <= 1:
        return fetches
    worker, nth = fetches % num_workers, fetches // num_workers
    return (worker + (nth // chunk_size) * num_workers) * chunk_size + nth % chunk_size


def wide_flags(dataset_dicts: Sequence[Any]) -> np.ndarray:
    """For each dataset dict, whether the grouping puts it in bucket 0 (``width > height``).

    Raises:
        KeyError: naming the first dict (by position) without ``width`` or ``height``.
    """
    flags = np.empty(len(dataset_dicts), dtype=bool)
    for i in range(len(dataset_dicts)):
        d = dataset_dicts[i]
        try:
            flags[i] = d["width"] > d["height"]
        except KeyError:
            raise KeyError(
                f"dataset dict {i} has no 'width'/'height' (needed to replay aspect-ratio grouping)"
            ) from None
    return flags


@dataclass(frozen=True)
class GroupingReplay:
    """Where the grouping stands after a number of batches: fetches pulled, and each bucket's waiting items as
    ``(position, index)`` in arrival order."""

    fetches: int
    buckets: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]


def replay_grouping(
    indices: Iterable[int],
    wide: np.ndarray,
    *,
    batches: int,
    batch_size: int,
    num_workers: int,
    chunk_size: int,
) -> GroupingReplay:
    """Replay aspect-ratio grouping (one item per fetch) until ``batches`` batches were handed out.

    Args:
        indices: the sampler's index stream of this rank (iterated once, as far as needed).
        wide: :func:`wide_flags` of the dataset.
        batches: batches handed out.
        batch_size: items per batch.
        num_workers: the DataLoader's workers (0: main process).
        chunk_size: the workers' sharding chunk.
    """
    if batches <= 0:
        return GroupingReplay(0, ((), ()))
    source = iter(indices)
    stream = np.empty(0, dtype=np.int64)
    span = batches * batch_size + 2 * batch_size + 2 * max(num_workers, 1) * chunk_size
    while True:
        fetch_ids = np.arange(span, dtype=np.int64)
        positions = fetch_positions(fetch_ids, num_workers, chunk_size)
        needed = int(positions.max()) + 1
        if needed > len(stream):
            more = np.fromiter(itertools.islice(source, needed - len(stream)), dtype=np.int64)
            stream = np.concatenate([stream, more])
        is_wide = wide[stream[positions]]
        wide_count = np.cumsum(is_wide)
        tall_count = np.arange(1, span + 1) - wide_count
        handed_out = wide_count // batch_size + tall_count // batch_size
        if handed_out[-1] >= batches:
            break
        span *= 2
    last = int(np.searchsorted(handed_out, batches))  # the fetch that completed the last batch
    fetches = last + 1
    buckets = []
    for flag, count in ((True, wide_count[last]), (False, tall_count[last])):
        waiting = int(count) % batch_size
        members = np.flatnonzero(is_wide[:fetches] == flag)
        members = members[len(members) - waiting :]
        buckets.append(tuple((int(positions[f]), int(stream[positions[f]])) for f in members))
    return GroupingReplay(fetches, (buckets[0], buckets[1]))
