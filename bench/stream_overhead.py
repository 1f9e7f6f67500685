"""Per-batch cost of a resumable train stream (``d2lightning.data.streams``) against iterating the loader itself.

The loader is detectron2's own ``build_detection_train_loader`` (needs detectron2 importable), with and without
aspect-ratio grouping and workers. The mapper is deliberately cheap (a random flip of a small tensor), so the
stream's own work is as visible as it can be. Plain and stream runs alternate so that machine noise hits both
alike; prints the median microseconds per batch of each.

Also times ``seek`` to iteration 90,000 of a COCO-sized dataset (118k dicts with 7 polygon annotations each, 16
images per batch, grouping), stored as detectron2 stores them (serialized) when detectron2 is importable.

Usage::

    python bench/stream_overhead.py [--batches 400] [--repeats 5] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import operator
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from d2lightning.data import TrainingSampler
from d2lightning.data.streams import LoaderParts, SampledStream, resumable_stream

HAS_D2 = importlib.util.find_spec("detectron2") is not None
SIZES = [(64, 48), (48, 64), (64, 64)]


def _dicts(n: int) -> list[dict[str, Any]]:
    return [{"image_id": i, "width": SIZES[i % 3][0], "height": SIZES[i % 3][1]} for i in range(n)]


def _map(d: dict[str, Any]) -> dict[str, Any]:
    image = torch.zeros(3, d["height"], d["width"], dtype=torch.uint8)
    if random.random() < 0.5:
        image = image.flip(-1)
    return {**d, "image": image}


class _Mapped(Dataset):
    def __init__(self, dicts: list[dict[str, Any]]) -> None:
        self.dicts = dicts

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return _map(self.dicts[i])


def _make(workers: int, grouping: bool, batch: int) -> Callable[[], Any]:
    """A factory of fresh detectron2 loaders."""
    from detectron2.data import build_detection_train_loader

    dicts = _dicts(1000)
    return lambda: build_detection_train_loader(
        dicts, mapper=_map, total_batch_size=batch, aspect_ratio_grouping=grouping, num_workers=workers
    )


def _time(batches: Any, count: int) -> float:
    next(batches)  # start (workers, base seed)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    return (time.perf_counter() - start) / count * 1e6


def overhead(workers: int, grouping: bool, batch: int, count: int, repeats: int) -> None:
    make = _make(workers, grouping, batch)
    times: dict[str, list[float]] = {"plain": [], "stream": []}
    for _ in range(repeats):
        times["plain"].append(_time(iter(make()), count))
        times["stream"].append(_time(resumable_stream(make()), count))
    p, s = statistics.median(times["plain"]), statistics.median(times["stream"])
    print(
        f"workers={workers} grouping={grouping!s:5} batch={batch}: plain {p:8.1f} us/batch, stream {s:8.1f} us/batch"
        f" ({s - p:+.1f} us, {100 * (s - p) / p:+.1f}%)"
    )


def seek_time() -> None:
    n, r = 118_000, random.Random(0)
    ann = {
        "bbox": [1.0, 2.0, 30.0, 40.0],
        "category_id": 3,
        "iscrowd": 0,
        "segmentation": [[float(x) for x in range(24)]],
    }
    dicts = [
        {"file_name": f"{i:012d}.jpg", "image_id": i, "width": 640, "height": 480 if r.random() < 0.75 else 800}
        | {"annotations": [dict(ann) for _ in range(7)]}
        for i in range(n)
    ]
    stored: Any = dicts
    if HAS_D2:
        from detectron2.data import DatasetFromList

        stored = DatasetFromList(dicts, copy=False)  # serialized, as build_detection_train_loader stores them
    loader = DataLoader(_Mapped(dicts), collate_fn=operator.itemgetter(0))
    parts = LoaderParts(_Mapped(dicts), TrainingSampler(n, seed=1), loader, 16, 16, dataset_dicts=stored)
    stream = SampledStream(parts)
    start = time.perf_counter()
    stream.seek(90_000)
    print(f"seek to iteration 90000 of {n} dicts ({type(stored).__name__}): {time.perf_counter() - start:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    if HAS_D2:
        for workers in args.workers:
            for grouping in (False, True):
                overhead(workers, grouping, args.batch_size, args.batches, args.repeats)
    else:
        print("detectron2 is not importable: per-batch overhead skipped (it is measured on detectron2's loader)")
    seek_time()


if __name__ == "__main__":
    main()
