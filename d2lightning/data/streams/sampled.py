"""A resumable stream over a detectron2-style train loader: sampler → mapper → workers → (grouping) → batches.

detectron2's ``build_detection_train_loader`` is an infinite stream: the sampler's index stream of this rank;
``MapDataset`` maps each dataset dict (random augmentation included); ``ToIterableDataset`` gives each DataLoader
worker every ``num_workers``-th chunk of indices; the DataLoader fetches from the workers in turn; optionally
``AspectRatioGroupedDataset`` sorts items into two buckets (width > height or not) and hands out a full bucket.
:class:`SampledStream` rebuilds that pipeline from its parts (:class:`LoaderParts`), produces bit for bit the
same batches, and records what a later process needs to continue exactly (design "capture and restore"):

* how many fetches were consumed (which gives every worker's position in its share of the index stream, and which
  worker the DataLoader's round robin reaches next);
* each worker's RNG state after its last consumed fetch (taken in the worker, sent along with the fetch);
* the items waiting in the buckets, as ``(position, index, RNG state before mapping)``;
* the generator state the DataLoader drew its base seed from (workers without a consumed fetch start as they did).

A resumed stream starts workers with their saved states, re-maps the waiting items on a copy of their saved RNG
states (in the main process, leaving its generators untouched), and skips indices without mapping them. Items
mapped in the main process (no workers) draw from the global generators, which the engine restores.

Why not seed every item from its stream position (as d2lightning's own loader does)? That needs no state beyond
the count, but its augmentations differ from detectron2's even in an uninterrupted run; capture and restore keeps
an uninterrupted run bit for bit detectron2's (the promise that detectron2's scripts give the same weights under
d2lightning), at the price of a per-rank state in the checkpoint and a snapshot per fetch.

:meth:`SampledStream.seek` (checkpoints without a stream state) replays the index stream and, with grouping, the
buckets from the dataset dicts' ``width``/``height`` (detectron2 groups by the mapped item's, which
``DatasetMapper`` copies): which images come in which batch, in which order, is exact. Without workers the
augmentation after the cut is exact too, except for the images waiting in the buckets at the cut; with workers it
is not (their generators advanced with every item they mapped). The returned text says which. Seeking trusts the
sampler to give the interrupted run's index stream: true for a fixed seed (detectron2's yacs loaders pass
``cfg.SEED``, -1 included), not for ``seed=None`` after a random global seed (LazyConfig loaders when
``train.seed`` is unset; a saved state, by contrast, brings the seed back).

Cost: ~0.1 ms per fetch in each worker (one RNG snapshot) plus ~10 KB sent with it; without workers, with
grouping, one snapshot per item in the main process; nothing when neither applies. Not covered: a mapper that
returns None (detectron2's ``MapDataset`` then retries a random other index with a generator of its own, which
the state does not hold), a mapper that draws from CUDA generators, and a ``collate_fn`` that draws random numbers
in the main process after grouping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch.utils.data import DataLoader

from d2lightning.data.streams import rng
from d2lightning.data.streams.base import StreamBase, qualname, sampler_digest
from d2lightning.data.streams.replay import replay_grouping, wide_flags
from d2lightning.data.streams.workers import Fetch, ShardedItems, WorkerPlan, rebuild_loader
from d2lightning.utils import comm

__all__ = ["LoaderParts", "SampledStream"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderParts:
    """What a detectron2-style train loader is made of.

    Args:
        dataset: map-style; ``dataset[index]`` is the mapped item (detectron2's ``MapDataset``: mapping happens here).
        sampler: the infinite index stream of this rank; iterating it again gives the same stream.
        loader: the DataLoader whose settings the stream reuses (``num_workers``, ``batch_size`` = items per fetch,
            ``collate_fn``, ``worker_init_fn``, ``generator``, ``prefetch_factor``, ``pin_memory``, ...).
        chunk_size: the workers' sharding chunk (detectron2: the batch size).
        group_batch_size: with aspect-ratio grouping, the batch size (``loader.batch_size`` must then be 1 and its
            ``collate_fn`` give the item); None without grouping (a fetch is a batch).
        group_collate: applied to each grouped batch in the main process; a None result is skipped.
        dataset_dicts: the unmapped dataset dicts (``width``/``height``), to replay the grouping in :meth:`seek`.
        sampler_seed: the seed of the sampler's shuffle, when ``reseed`` can change it.
        reseed: ``reseed(seed)`` is a copy of ``sampler`` shuffling with ``seed``. A resumed stream whose sampler
            drew another seed at random (``seed=None``) then adopts the saved one.
        name: how messages name the loader.
    """

    dataset: Any
    sampler: Any
    loader: DataLoader
    chunk_size: int
    group_batch_size: int | None = None
    group_collate: Callable[[list[Any]], Any] | None = None
    dataset_dicts: Sequence[Any] | None = None
    sampler_seed: int | None = None
    reseed: Callable[[int], Any] | None = None
    name: str = "the train loader"


@dataclass
class _Waiting:
    """An item in a grouping bucket; ``item`` is None until a resumed stream re-maps it."""

    item: Any
    position: int
    index: int
    pre: rng.RngSnapshot | None


class SampledStream(StreamBase):
    """The resumable stream of a detectron2-style train loader (see the module docstring).

    Uninterrupted, its batches equal ``iter(loader)``'s bit for bit (same base-seed draw, worker seeding,
    sharding, fetch order and grouping). Its ``state_dict`` holds the fetch count, each worker's RNG state, the
    waiting items and the base-seed generator state: ~10 KB per worker and per waiting item.

    Example::

        stream = SampledStream(parts)
        batches = [next(stream) for _ in range(6)]
        state = stream.state_dict()               # saved with the checkpoint, on every rank
        resumed = SampledStream(parts_of_a_new_loader)
        resumed.load_state_dict(state)            # continues with the 7th batch
    """

    def __init__(self, parts: LoaderParts) -> None:
        super().__init__(parts.name)
        loader = parts.loader
        if loader.batch_size is None:
            raise ValueError(f"{parts.name}: the DataLoader must batch (batch_size=None is not supported)")
        if parts.group_batch_size is not None and loader.batch_size != 1:
            raise ValueError(f"{parts.name}: a grouping loader fetches one item at a time, got {loader.batch_size}")
        self.parts = parts
        self._workers = int(loader.num_workers)
        self._fetch_size = int(loader.batch_size)
        self._grouping = parts.group_batch_size is not None
        self._batch_size = parts.group_batch_size if parts.group_batch_size is not None else self._fetch_size
        self._fetches = 0
        self._posts: list[rng.RngSnapshot | None] = [None] * self._workers
        self._buckets: tuple[list[_Waiting], list[_Waiting]] = ([], [])
        self._base_state: bytes | None = None
        self._digest = sampler_digest(parts.sampler)  # now: one pass over the sampler's first epoch
        self._it: Iterator[Fetch] | None = None
        self._world, self._rank = comm.get_world_size(), comm.get_rank()

    # ---------------------------------------------------------------- state
    def _config(self) -> dict[str, Any]:
        return {
            "world_size": self._world,
            "rank": self._rank,
            "dataset_size": len(self.parts.dataset),
            "batch_size": self._batch_size,
            "sampler": qualname(self.parts.sampler),
            "sampler_stream": self._digest,
            "num_workers": self._workers,
            "aspect_ratio_grouping": self._grouping,
            "chunk_size": self.parts.chunk_size,
        }

    def _state(self) -> dict[str, Any]:
        return {
            "sampler_seed": self.parts.sampler_seed,
            "fetches": self._fetches,
            "base_generator": self._base_state if self._workers else None,
            "worker_rng": list(self._posts),
            "buckets": [[(w.position, w.index, w.pre) for w in bucket] for bucket in self._buckets],
        }

    def _reconcile(self, state: Mapping[str, Any]) -> None:
        """Adopt the saved sampler seed when this sampler drew another one at random and all else is the same."""
        saved, reseed = state.get("sampler_seed"), self.parts.reseed
        if saved is None or reseed is None or saved == self.parts.sampler_seed:
            return
        twin = reseed(saved)
        digest = sampler_digest(twin)
        if digest != state.get("config", {}).get("sampler_stream"):
            return  # something else changed: the check names it
        logger.info(
            f"{self.name}: its sampler shuffles with the seed the interrupted run used ({saved}), not with the one it "
            f"drew now ({self.parts.sampler_seed})"
        )
        self.parts = replace(self.parts, sampler=twin, sampler_seed=saved)
        self._digest = digest

    def _load(self, state: Mapping[str, Any]) -> None:
        self._fetches = int(state["fetches"])
        self._base_state = state["base_generator"]
        self._posts = list(state["worker_rng"])
        for bucket, saved in zip(self._buckets, state["buckets"], strict=True):
            bucket[:] = [_Waiting(None, int(p), int(i), pre) for p, i, pre in saved]

    def _seek(self, num_batches: int) -> str | None:
        if self._grouping:
            cannot = self._replay_grouping(num_batches)
            if cannot is not None:
                self._batches = 0
                return f"{self.name} restarts from its first batch: {cannot}"
        else:
            self._fetches = num_batches
        return self._seek_warning(num_batches)

    def _replay_grouping(self, num_batches: int) -> str | None:
        """Place fetch count and buckets after ``num_batches`` grouped batches; the reason when it cannot."""
        if self.parts.dataset_dicts is None:
            return "no dataset dicts to replay the aspect-ratio grouping from"
        try:
            wide = wide_flags(self.parts.dataset_dicts)
        except KeyError as err:
            return str(err.args[0])
        replay = replay_grouping(
            self.parts.sampler,
            wide,
            batches=num_batches,
            batch_size=self._batch_size,
            num_workers=self._workers,
            chunk_size=self.parts.chunk_size,
        )
        self._fetches = replay.fetches
        for bucket, waiting in zip(self._buckets, replay.buckets, strict=True):
            bucket[:] = [_Waiting(None, p, i, None) for p, i in waiting]
        return None

    def _seek_warning(self, num_batches: int) -> str | None:
        where = (
            f"{self.name} was placed after batch {num_batches} from the iteration alone "
            "(the checkpoint holds no data-stream state)"
        )
        waiting = sum(len(b) for b in self._buckets)
        if self._workers:
            return (
                f"{where}: which images come in which batch is exact, but their random augmentation differs from "
                f"an uninterrupted run (the {self._workers} DataLoader workers' random generators are not in the "
                "checkpoint)"
            )
        if waiting:
            return (
                f"{where}: exact, except the random augmentation of the {waiting} image{'s' * (waiting > 1)} that "
                "waited in the aspect-ratio buckets at the cut"
            )
        return None

    # ---------------------------------------------------------------- iteration
    def _start(self) -> None:
        for bucket in self._buckets:
            for waiting in bucket:
                with rng.forked(waiting.pre) as start:
                    waiting.pre = start
                    waiting.item = self.parts.dataset[waiting.index]
        parts = self.parts
        plan = WorkerPlan(self._fetches, tuple(self._posts)) if self._resumed else None
        pre_each = self._grouping and not self._workers
        items = ShardedItems(parts.dataset, parts.sampler, parts.chunk_size, self._fetch_size, plan, pre_each)
        loader = rebuild_loader(parts.loader, items)
        with self._base_seed_draw(loader.generator, self._base_state if self._resumed else None) as drawn_from:
            self._base_state = drawn_from
            self._it = iter(loader)
        if self._resumed and self._workers:
            for _ in range(self._fetches % self._workers):
                if next(self._it).position >= 0:
                    raise RuntimeError("a resumed worker handed out data in place of its placeholder fetch")

    def _pull(self) -> Fetch:
        fetch = next(self._it)  # type: ignore[arg-type]
        self._fetches += 1
        if fetch.worker >= 0:
            if fetch.pre is None:
                fetch = fetch._replace(pre=self._posts[fetch.worker])
            self._posts[fetch.worker] = fetch.post
        return fetch

    def _next_batch(self) -> Any:
        if not self._grouping:
            return self._pull().data
        while True:
            fetch = self._pull()
            item = fetch.data
            bucket = self._buckets[0 if item["width"] > item["height"] else 1]
            bucket.append(_Waiting(item, fetch.position, fetch.dataset_index, fetch.pre))
            if len(bucket) < self._batch_size:
                continue
            batch = [w.item for w in bucket]
            del bucket[:]
            if self.parts.group_collate is None:
                return batch
            collated = self.parts.group_collate(batch)
            if collated is not None:
                return collated
