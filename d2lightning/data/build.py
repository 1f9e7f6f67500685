"""detectron2 ``data/build.py``: the train and test data loaders.

``build_detection_train_loader`` is infinite and rank-sharded (a :class:`TrainingSampler` feeding an iterable
dataset); each batch is a ``list[dict]`` of ``SOLVER.IMS_PER_BATCH // world_size`` mapped dicts.
``build_detection_test_loader`` yields each rank's :class:`InferenceSampler` shard one image at a time and
has a ``len()``. Aspect-ratio grouping is not implemented: ``DATALOADER.ASPECT_RATIO_GROUPING`` is ignored.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from d2lightning.config.lookup import cfg_get
from d2lightning.data.catalog import DatasetCatalog
from d2lightning.data.dataset_mapper import DatasetMapper
from d2lightning.data.samplers import InferenceSampler, TrainingSampler
from d2lightning.utils import comm

__all__ = [
    "build_batch_data_loader",
    "build_detection_test_loader",
    "build_detection_train_loader",
    "get_detection_dataset_dicts",
    "trivial_batch_collator",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)
Mapper = Callable[[dict[str, Any]], Any]


def trivial_batch_collator(batch: list[Any]) -> list[Any]:
    """detectron2 ``trivial_batch_collator``: a batch is the list of its elements."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """detectron2 ``worker_init_reset_seed``: seed python, numpy and torch from the worker's torch seed."""
    seed = torch.initial_seed() % 2**31 + worker_id
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_detection_dataset_dicts(names: str | Sequence[str], filter_empty: bool = True) -> list[dict]:
    """detectron2 ``get_detection_dataset_dicts``: concatenate catalog datasets, optionally dropping images
    without annotations.

    Raises:
        ValueError: when ``names`` is empty or no image is left.
        KeyError: for an unregistered name (lists the registered ones).
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("get_detection_dataset_dicts(names=) needs at least one dataset name")
    dicts = list(itertools.chain.from_iterable(DatasetCatalog.get(n) for n in names))
    if filter_empty:
        dicts = [d for d in dicts if any(a.get("iscrowd", 0) == 0 for a in d.get("annotations", []))]
    if not dicts:
        raise ValueError(f"No valid data found in {','.join(names)}.")
    return dicts


class _MapDataset(Dataset):
    """detectron2 ``MapDataset`` over a list: item ``i`` is ``mapper(items[i])``."""

    def __init__(self, items: Sequence[Any], mapper: Mapper | None) -> None:
        self._items, self._mapper = items, mapper

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, idx: int) -> Any:
        item = self._items[idx]
        return self._mapper(item) if self._mapper is not None else item


class _ToIterableDataset(IterableDataset):
    """detectron2 ``ToIterableDataset``: run ``sampler`` inside the loader's workers, each keeping every
    ``num_workers``-th chunk of ``chunk_size`` indices, so the combined order equals the sampler's.

    d2lightning: inside a worker, the random generators (Python's, numpy's, torch's) are seeded before each sample
    from the sampler's seed, the rank and the sample's position in this rank's stream. Random augmentations then
    depend on what is loaded, not on which worker loads it or since when it runs, so a run resumed at iteration
    ``k`` (the sampler seeks to it) augments exactly as an uninterrupted one. Without workers the main process'
    generators are used, as in detectron2 (a checkpoint restores them).
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, chunk_size: int) -> None:
        self.dataset, self.sampler, self.chunk_size = dataset, sampler, chunk_size

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        start = int(getattr(sampler, "_start", 0))
        items: Iterator[tuple[int, int]] = enumerate(iter(sampler), start)
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            source = items
            chunks = iter(lambda: list(itertools.islice(source, self.chunk_size)), [])
            own = itertools.islice(chunks, info.id, None, info.num_workers)
            items = itertools.chain.from_iterable(own)
        if info is None:
            for _, idx in items:
                yield self.dataset[idx]
            return
        key = (int(getattr(sampler, "_seed", 0)) % 2**32, int(getattr(sampler, "_rank", comm.get_rank())))
        for position, idx in items:
            _seed_sample(key, position)
            yield self.dataset[idx]


def _seed_sample(key: tuple[int, int], position: int) -> None:
    """Seed Python's, numpy's and torch's generators of this worker for the sample at ``position``."""
    seed = int(np.random.SeedSequence([*key, position]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


class _BatchDataLoader(DataLoader):
    """The train loader: a DataLoader that can start at a given iteration (d2lightning's exact resume)."""

    @property
    def seekable(self) -> bool:
        """Whether :meth:`set_start_iteration` can place the stream (its sampler has ``set_start``)."""
        return callable(getattr(self.dataset.sampler, "set_start", None))  # type: ignore[attr-defined]

    def set_start_iteration(self, iteration: int) -> None:
        """Start the next pass over the stream at ``iteration`` (batches before it are skipped, unloaded).

        A no-op when the sampler cannot seek (a user sampler without ``set_start``).
        """
        sampler = self.dataset.sampler  # type: ignore[attr-defined]
        seek = getattr(sampler, "set_start", None)
        if callable(seek):
            seek(iteration * int(self.batch_size or 1))


def build_batch_data_loader(
    dataset: Dataset,
    sampler: Sampler,
    total_batch_size: int,
    *,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """detectron2 ``build_batch_data_loader`` (no aspect-ratio grouping): batches of
    ``total_batch_size // world_size`` from ``sampler``'s (infinite) stream, incomplete batches dropped.

    Raises:
        ValueError: when ``total_batch_size`` is not a positive multiple of the world size.
    """
    world = comm.get_world_size()
    if total_batch_size <= 0 or total_batch_size % world != 0:
        raise ValueError(f"Total batch size ({total_batch_size}) must be divisible by the number of gpus ({world}).")
    batch_size = total_batch_size // world
    logger.info("Making batched data loader with batch_size=%d", batch_size)
    return _BatchDataLoader(
        _ToIterableDataset(dataset, sampler, batch_size),
        batch_size=batch_size,
        drop_last=True,
        num_workers=num_workers,
        collate_fn=collate_fn or trivial_batch_collator,
        worker_init_fn=worker_init_reset_seed,
    )


def _as_dataset(data: Sequence[dict] | Dataset, mapper: Mapper | None) -> Dataset:
    if isinstance(data, IterableDataset):
        raise TypeError("iterable datasets are not supported; pass a list of dicts or a map-style Dataset")
    if isinstance(data, Dataset):
        return data if mapper is None else _MapDataset(data, mapper)  # type: ignore[arg-type]
    if isinstance(data, list):
        return _MapDataset(data, mapper)
    raise TypeError(f"dataset must be a list of dicts or a torch Dataset, got {type(data).__name__}")


def build_detection_train_loader(
    cfg: Any = None,
    mapper: Mapper | None = None,
    *,
    dataset: Sequence[dict] | Dataset | None = None,
    sampler: Sampler | None = None,
    total_batch_size: int | None = None,
    num_workers: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """detectron2 ``build_detection_train_loader``: an infinite loader of ``list[dict]`` batches.

    Called as ``build_detection_train_loader(cfg)`` (optionally with ``mapper=``, ``dataset=``,
    ``sampler=``), it uses ``DATASETS.TRAIN`` (images without annotations dropped when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), ``DatasetMapper(cfg, True)``,
    ``TrainingSampler(len, seed=SEED)`` (detectron2 passes ``cfg.SEED`` as is, so the default -1 is a
    fixed seed too), ``SOLVER.IMS_PER_BATCH`` and ``DATALOADER.NUM_WORKERS``.

    Called as ``build_detection_train_loader(dataset, mapper=..., total_batch_size=...)`` (a list of
    dicts or a map-style Dataset first), only the arguments are used and the sampler defaults to a
    ``TrainingSampler`` with a shared random seed.

    Raises:
        ValueError: for an unknown ``DATALOADER.SAMPLER_TRAIN``, a missing ``total_batch_size`` or a batch
            size not divisible by the world size.
        TypeError: for an unsupported dataset type.
    """
    if isinstance(cfg, (list, Dataset)):
        cfg, dataset = None, cfg
    if cfg is not None:
        if dataset is None:
            names = cfg_get(cfg, "DATASETS.TRAIN")
            dataset = get_detection_dataset_dicts(
                names, cfg_get(cfg, "DATALOADER.FILTER_EMPTY_ANNOTATIONS", default=True)
            )
        mapper = mapper if mapper is not None else DatasetMapper(cfg, True)
        if sampler is None:
            name = cfg_get(cfg, "DATALOADER.SAMPLER_TRAIN", default="TrainingSampler")
            if name != "TrainingSampler":
                raise ValueError(f"Unknown training sampler: {name} (only TrainingSampler is implemented)")
            sampler = TrainingSampler(len(dataset), seed=int(cfg_get(cfg, "SEED", default=-1)))  # type: ignore[arg-type]
        total_batch_size = total_batch_size or int(cfg_get(cfg, "SOLVER.IMS_PER_BATCH", default=16))
        num_workers = num_workers if num_workers is not None else int(cfg_get(cfg, "DATALOADER.NUM_WORKERS", default=4))
    if dataset is None or total_batch_size is None:
        raise ValueError("build_detection_train_loader needs a cfg, or a dataset and total_batch_size=")
    ds = _as_dataset(dataset, mapper)
    sampler = sampler if sampler is not None else TrainingSampler(len(ds))  # type: ignore[arg-type]
    return build_batch_data_loader(ds, sampler, total_batch_size, num_workers=num_workers or 0, collate_fn=collate_fn)


def build_detection_test_loader(
    cfg: Any = None,
    dataset_name: str | Sequence[str] | None = None,
    mapper: Mapper | None = None,
    *,
    dataset: Sequence[dict] | Dataset | None = None,
    sampler: Sampler | None = None,
    batch_size: int = 1,
    num_workers: int | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """detectron2 ``build_detection_test_loader``: this rank's exact shard of a dataset, with a ``len()``.

    Called as ``build_detection_test_loader(cfg, dataset_name)`` it loads ``dataset_name`` (no filtering)
    and maps it with ``DatasetMapper(cfg, False)`` and ``DATALOADER.NUM_WORKERS`` workers; called as
    ``build_detection_test_loader(dataset, mapper=...)`` it uses the arguments only. The sampler defaults to
    :class:`InferenceSampler` and the batch size to 1.

    Raises:
        ValueError: when neither a dataset name nor a dataset is given, or ``batch_size`` < 1.
    """
    if isinstance(cfg, (list, Dataset)):
        cfg, dataset = None, cfg
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if cfg is not None:
        if dataset is None:
            if dataset_name is None:
                raise ValueError("build_detection_test_loader(cfg, dataset_name) needs a dataset_name")
            dataset = get_detection_dataset_dicts(dataset_name, filter_empty=False)
        mapper = mapper if mapper is not None else DatasetMapper(cfg, False)
        num_workers = num_workers if num_workers is not None else int(cfg_get(cfg, "DATALOADER.NUM_WORKERS", default=4))
    if dataset is None:
        raise ValueError("build_detection_test_loader needs a cfg and dataset_name, or a dataset")
    ds = _as_dataset(dataset, mapper)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else InferenceSampler(len(ds)),  # type: ignore[arg-type]
        drop_last=False,
        num_workers=num_workers or 0,
        collate_fn=collate_fn or trivial_batch_collator,
    )
