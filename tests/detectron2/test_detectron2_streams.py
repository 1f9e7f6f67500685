"""d2lightning.data.streams on a real detectron2 ``build_detection_train_loader`` (skipped without detectron2).

A few dozen small images of mixed aspect ratios are written to a temporary folder and registered in detectron2's
``DatasetCatalog``; the loader maps them with ``DatasetMapper`` (``ResizeShortestEdge`` over three sizes +
``RandomFlip``). "The engine" is emulated: between batches the model draws from the global generators; at the cut
the stream state goes through ``torch.save``/``torch.load(weights_only=True)`` and the global RNG states are
saved, and restored in the resumed run after the stream loaded its state.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from d2lightning.data.streams import SampledStream, resumable_stream
from d2lightning.data.streams import rng as stream_rng
from tests.helpers.detectron2_runs import DETECTRON2_MARKS
from tests.helpers.streams import model_draw, seed

pytestmark = DETECTRON2_MARKS

DATASET = "d2lightning_streams_synthetic"
SIZES = [(40, 30), (30, 40), (48, 32), (32, 48), (36, 36)]  # width, height
SAMPLERS = ["TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler"]


@pytest.fixture(scope="module", autouse=True)
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """30 noise images, 5 sizes (2 wide, 2 tall, 1 square), one box each, classes of uneven frequency (so that
    ``RepeatFactorTrainingSampler`` repeats some)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    root = tmp_path_factory.mktemp("images")
    noise = np.random.RandomState(0)
    dicts = []
    for i in range(30):
        width, height = SIZES[i % 5]
        path = str(root / f"{i}.png")
        Image.fromarray(noise.randint(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        category = 2 if i % 10 == 0 else int(i % 3 == 0)
        box = {"bbox": [2, 3, 20, 18], "bbox_mode": BoxMode.XYXY_ABS, "category_id": category, "iscrowd": 0}
        dicts.append({"file_name": path, "image_id": i, "width": width, "height": height, "annotations": [box]})
    DatasetCatalog.register(DATASET, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(DATASET).set(thing_classes=["a", "b", "c"])
    yield
    DatasetCatalog.remove(DATASET)
    MetadataCatalog.remove(DATASET)


def _cfg(sampler: str, workers: int, grouping: bool) -> Any:
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (DATASET,)
    cfg.INPUT.MIN_SIZE_TRAIN = (24, 32, 40)
    cfg.INPUT.MAX_SIZE_TRAIN = 80
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    cfg.SOLVER.IMS_PER_BATCH = 5  # images wait in the buckets after batch 6 with every sampler here
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.DATALOADER.SAMPLER_TRAIN = sampler
    cfg.DATALOADER.REPEAT_THRESHOLD = 0.3
    cfg.DATALOADER.RANDOM_SUBSET_RATIO = 0.6
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    return cfg


def _loader(cfg: Any) -> Any:
    """detectron2's loader, built as a script builds it after seeding (RandomSubsetTrainingSampler draws its seeds
    from numpy's generator when built)."""
    from detectron2.data import build_detection_train_loader

    seed(5)
    return build_detection_train_loader(cfg)


def _take(batches: Iterator[Any], count: int) -> list[Any]:
    out = []
    for _ in range(count):
        out.append(next(batches))
        model_draw()
    return out


def _same(a: list[list[dict]], b: list[list[dict]]) -> bool:
    """Bit for bit: image tensors, boxes, classes and every other field of every item."""
    if len(a) != len(b):
        return False
    for batch_a, batch_b in zip(a, b, strict=True):
        if len(batch_a) != len(batch_b):
            return False
        for x, y in zip(batch_a, batch_b, strict=True):
            if set(x) != set(y) or not torch.equal(x["image"], y["image"]):
                return False
            ix, iy = x["instances"], y["instances"]
            if not (torch.equal(ix.gt_boxes.tensor, iy.gt_boxes.tensor) and torch.equal(ix.gt_classes, iy.gt_classes)):
                return False
            if any(x[k] != y[k] for k in x if k not in ("image", "instances")):
                return False
    return True


def _ids(batches: list[list[dict]]) -> list[list[int]]:
    return [[d["image_id"] for d in b] for b in batches]


def _checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


CASES = [(s, w, True) for s in SAMPLERS for w in (0, 2)] + [("TrainingSampler", w, False) for w in (0, 2)]


@pytest.mark.parametrize(("sampler", "workers", "grouping"), CASES)
def test_stream_equals_detectron2s_own_iteration_and_resumes_exactly(sampler, workers, grouping):
    cfg = _cfg(sampler, workers, grouping)
    own = _take(iter(_loader(cfg)), 12)

    stream = resumable_stream(_loader(cfg))
    assert isinstance(stream, SampledStream)
    batches = _take(stream, 6)
    state, rng_states = _checkpoint(stream.state_dict()), stream_rng.capture()
    batches += _take(stream, 6)
    assert _same(batches, own)  # an uninterrupted run is detectron2's, bit for bit
    assert any(state["buckets"]) == grouping

    resumed = resumable_stream(_loader(cfg))
    assert resumed is not None
    seed(1)
    resumed.load_state_dict(state)
    stream_rng.restore(rng_states)
    assert _same(_take(resumed, 6), batches[6:])

    sought = resumable_stream(_loader(cfg))
    assert sought is not None
    warning = sought.seek(6)
    stream_rng.restore(rng_states)
    after_seek = _take(sought, 6)
    assert _ids(after_seek) == _ids(batches[6:])  # which images, in which batch and order
    assert (warning is None) == (workers == 0 and not grouping) == _same(after_seek, batches[6:])


def test_restarting_the_stream_differs():
    """What the tests above guard against: a resumed run whose loader starts over."""
    cfg = _cfg("TrainingSampler", 0, True)
    stream = resumable_stream(_loader(cfg))
    assert stream is not None
    batches = _take(stream, 12)
    assert _ids(_take(iter(_loader(cfg)), 6)) != _ids(batches[6:])


def test_lazyconfig_loader_is_recognised_and_resumes_with_its_sampler_seed_drawn_at_random():
    from detectron2.config import LazyCall as L
    from detectron2.config import instantiate
    from detectron2.data import DatasetMapper, build_detection_train_loader, get_detection_dataset_dicts
    from detectron2.data import transforms as T

    lazy = L(build_detection_train_loader)(
        dataset=L(get_detection_dataset_dicts)(names=DATASET),
        mapper=L(DatasetMapper)(
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(24, 32, 40), max_size=80, sample_style="choice"),
                L(T.RandomFlip)(horizontal=True),
            ],
            image_format="BGR",
        ),
        total_batch_size=4,
        num_workers=2,
    )
    seed(5)
    stream = resumable_stream(instantiate(lazy))
    assert isinstance(stream, SampledStream) and "2 workers, aspect-ratio grouping" in stream.name
    batches = _take(stream, 4)
    state, rng_states = _checkpoint(stream.state_dict()), stream_rng.capture()
    batches += _take(stream, 4)
    seed(6)  # detectron2's default_setup seeds at random when train.seed is unset: another sampler seed
    resumed = resumable_stream(instantiate(lazy))
    assert isinstance(resumed, SampledStream) and resumed.parts.sampler_seed != stream.parts.sampler_seed
    resumed.load_state_dict(state)  # adopts the interrupted run's sampler seed
    stream_rng.restore(rng_states)
    assert _same(_take(resumed, 4), batches[4:])


def _reversed(batch: list[dict]) -> list[dict]:
    return batch[::-1]


def test_a_grouping_loader_with_its_own_collate_fn():
    """With ``collate_fn`` and grouping, detectron2 wraps the grouping in ``MapDataset(..., collate_fn)``."""
    from detectron2.data import DatasetCatalog, DatasetMapper, build_detection_train_loader

    cfg = _cfg("TrainingSampler", 0, True)

    def build() -> Any:
        seed(5)
        dicts = DatasetCatalog.get(DATASET)
        mapper = DatasetMapper(cfg, True)
        return build_detection_train_loader(dicts, mapper=mapper, total_batch_size=5, collate_fn=_reversed)

    own = _take(iter(build()), 8)
    stream = resumable_stream(build())
    assert isinstance(stream, SampledStream) and stream.parts.group_collate is not None
    batches = _take(stream, 4)
    state, rng_states = _checkpoint(stream.state_dict()), stream_rng.capture()
    batches += _take(stream, 4)
    assert _same(batches, own)
    resumed = resumable_stream(build())
    assert resumed is not None
    resumed.load_state_dict(state)
    stream_rng.restore(rng_states)
    assert _same(_take(resumed, 4), batches[4:])


def test_loaders_that_cannot_be_continued_are_not_recognised():
    """A sampler that shards by worker itself, or a DataLoader that may yield out of order."""
    from detectron2.data import DatasetFromList, MapDataset, ToIterableDataset
    from detectron2.data.samplers import TrainingSampler
    from torch.utils.data import DataLoader

    from d2lightning import _compat

    dataset = MapDataset(DatasetFromList([{"x": i} for i in range(8)], copy=False), lambda d: d)
    presharded = ToIterableDataset(dataset, TrainingSampler(8, seed=1), shard_sampler=False, shard_chunk_size=2)
    assert _compat.detectron2_train_loader_parts(DataLoader(presharded, batch_size=2, num_workers=2)) is None
    sharded = ToIterableDataset(dataset, TrainingSampler(8, seed=1), shard_chunk_size=2)
    assert _compat.detectron2_train_loader_parts(DataLoader(sharded, batch_size=2, num_workers=2)) is not None
    unordered = DataLoader(sharded, batch_size=2, num_workers=2, in_order=False)
    assert _compat.detectron2_train_loader_parts(unordered) is None
