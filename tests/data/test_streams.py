"""Tests of d2lightning.data.streams: resumable train streams (without detectron2; its own loader is tested in
tests/detectron2/test_detectron2_streams.py).

"The engine" is emulated throughout: between batches the model draws from the global generators; at the cut the
test saves the stream's state (through ``torch.save``/``torch.load(weights_only=True)``) and the global RNG states,
and the resumed run restores them after loading the stream's state.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import operator
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from d2lightning.data import DatasetCatalog, MetadataCatalog, TrainingSampler, build_detection_train_loader
from d2lightning.data.build import trivial_batch_collator, worker_init_reset_seed
from d2lightning.data.datasets import ShapesSpec, register_shapes
from d2lightning.data.streams import (
    LoaderParts,
    SampledStream,
    SeekableLoaderStream,
    StartIterationStream,
    StatefulLoaderStream,
    StreamStateError,
    TrainStream,
    resumable_stream,
    unresumable_loader_message,
)
from d2lightning.data.streams import rng as stream_rng
from d2lightning.data.streams.replay import worker_share
from d2lightning.utils import comm
from tests.helpers.streams import model_draw, seed

SIZES = [(40, 30), (30, 40), (48, 32), (32, 48), (36, 36)]  # width, height: 2 of 5 are wide


def _dicts(n: int) -> list[dict[str, Any]]:
    return [{"image_id": i, "width": SIZES[i % 5][0], "height": SIZES[i % 5][1]} for i in range(n)]


class _RandomMapped(Dataset):
    """detectron2's ``MapDataset`` in miniature: item ``i`` is dict ``i`` plus draws from Python's, numpy's and
    torch's global generators (a random augmentation)."""

    def __init__(self, dicts: list[dict[str, Any]]) -> None:
        self.dicts = dicts

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.dicts[i], "aug": (random.random(), float(np.random.rand()), float(torch.rand(())))}


def _parts(
    workers: int, grouping: bool, *, batch: int = 3, n: int = 23, seed: int = 4, dataset: Dataset | None = None
) -> LoaderParts:
    """A detectron2-shaped loader: what detectron2's ``build_batch_data_loader`` builds, as parts."""
    dicts = _dicts(n)
    ds = dataset if dataset is not None else _RandomMapped(dicts)
    sampler = TrainingSampler(n, seed=seed, rank=0, world_size=1)
    common: dict[str, Any] = {"num_workers": workers, "worker_init_fn": worker_init_reset_seed}
    if grouping:
        loader = DataLoader(ds, collate_fn=operator.itemgetter(0), **common)
        return LoaderParts(ds, sampler, loader, chunk_size=batch, group_batch_size=batch, dataset_dicts=dicts)
    loader = DataLoader(ds, batch_size=batch, drop_last=True, collate_fn=trivial_batch_collator, **common)
    return LoaderParts(ds, sampler, loader, chunk_size=batch)


def _through_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _run(make: Callable[[], TrainStream], total: int = 12, cut: int = 6) -> tuple[list[Any], dict, Any]:
    """An uninterrupted run of ``total`` batches: the batches, the stream state and the RNG states after ``cut``."""
    seed(0)
    stream = make()
    batches, state, rng_states = [], {}, None
    for k in range(total):
        batches.append(next(stream))
        model_draw()
        if k + 1 == cut:
            state, rng_states = _through_checkpoint(stream.state_dict()), stream_rng.capture()
    return batches, state, rng_states


def _resume(stream: TrainStream, rng_states: Any, count: int = 6, state: dict | None = None) -> list[Any]:
    if state is not None:
        stream.load_state_dict(state)
    stream_rng.restore(rng_states)
    out = []
    for _ in range(count):
        out.append(next(stream))
        model_draw()
    return out


def _ids(batches: list[list[dict]]) -> list[list[int]]:
    return [[d["image_id"] for d in b] for b in batches]


# ---------------------------------------------------------------- SampledStream (capture and restore)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("grouping", [False, True], ids=["plain", "grouping"])
def test_sampled_stream_resumed_from_its_state_continues_exactly(workers, grouping):
    batches, state, rng_states = _run(lambda: SampledStream(_parts(workers, grouping, batch=5)))
    assert any(state["buckets"]) == grouping  # images wait in the buckets at the cut
    seed(1)  # a new process: other generator states until the engine restores them
    resumed = _resume(SampledStream(_parts(workers, grouping, batch=5)), rng_states, state=state)
    assert resumed == batches[6:]
    seed(1)
    restarted = _resume(SampledStream(_parts(workers, grouping, batch=5)), rng_states)
    assert _ids(restarted) != _ids(batches[6:])  # without the state the stream starts over


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_resumed_twice_continues_exactly(workers):
    """Resumed after batch 4, cut again right after batch 5 (some workers delivered nothing since the resume, some
    images still wait from before it), resumed again: batches 6..12 are the uninterrupted ones."""
    make = lambda: SampledStream(_parts(workers, True, batch=5))  # noqa: E731
    batches, state, rng_states = _run(make, cut=4)
    seed(1)
    first = make()
    first.load_state_dict(state)
    stream_rng.restore(rng_states)
    assert next(first) == batches[4]
    model_draw()
    state, rng_states = _through_checkpoint(first.state_dict()), stream_rng.capture()
    seed(2)
    assert _resume(make(), rng_states, 7, state) == batches[5:]


def test_sampled_stream_state_holds_worker_rng_and_waiting_items():
    _, state, _ = _run(lambda: SampledStream(_parts(2, True, batch=5)))
    assert state["stream"] == "SampledStream" and state["batches"] == 6
    waiting = [len(b) for b in state["buckets"]]
    assert state["fetches"] == 6 * 5 + sum(waiting) and sum(waiting) > 0
    assert len(state["worker_rng"]) == 2 and all(s is not None for s in state["worker_rng"])
    assert all(pre is not None for bucket in state["buckets"] for _, _, pre in bucket)
    assert isinstance(state["base_generator"], bytes)


@pytest.mark.parametrize("workers", [0, 2])
def test_sampled_stream_resumes_exactly_before_every_worker_delivered(workers):
    """Cut after the first batch: worker 1 has delivered nothing yet and must start as it did."""
    batches, state, rng_states = _run(lambda: SampledStream(_parts(workers, False)), total=5, cut=1)
    seed(1)
    assert _resume(SampledStream(_parts(workers, False)), rng_states, 4, state) == batches[1:]


class _Plain(Dataset):
    """Mapped items that draw no random number."""

    def __init__(self, dicts: list[dict[str, Any]]) -> None:
        self.dicts = dicts

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return dict(self.dicts[i])


def test_a_fresh_stream_draws_the_base_seed_as_iterating_the_loader_does():
    seed(3)
    iter(DataLoader(_Plain(_dicts(23))))  # creating the iterator draws the DataLoader's base seed
    expected = torch.rand(4)
    seed(3)
    next(SampledStream(_parts(0, False, dataset=_Plain(_dicts(23)))))
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(("workers", "dataset"), [(0, _Plain), (2, _RandomMapped)])
def test_a_resumed_stream_leaves_the_global_generators_alone(workers, dataset):
    """Its base-seed draw and the re-mapping of the images waiting in the buckets run on copies: the engine may
    restore the checkpoint's RNG states before or after the first batch is fetched."""
    make = lambda: SampledStream(_parts(workers, True, batch=5, dataset=dataset(_dicts(23))))  # noqa: E731
    _, state, _ = _run(make)
    assert any(state["buckets"])
    resumed = make()
    resumed.load_state_dict(state)
    seed(3)
    before = stream_rng.capture()
    next(resumed)
    assert stream_rng.capture() == before


def test_a_state_taken_before_the_first_batch_leaves_a_fresh_stream():
    """Saved before the first batch (a checkpoint at iteration 0): the uninterrupted run draws its base seed after
    the checkpoint, so the resumed stream draws it too, from the restored generators."""
    parts = lambda: _parts(2, True, dataset=_Plain(_dicts(23)))  # noqa: E731
    state = _through_checkpoint(SampledStream(parts()).state_dict())
    seed(3)
    fresh = next(SampledStream(parts()))
    after_fresh = stream_rng.capture()
    resumed = SampledStream(parts())
    resumed.load_state_dict(state)
    seed(3)
    assert next(resumed) == fresh
    assert stream_rng.capture() == after_fresh


# ---------------------------------------------------------------- seek (from the iteration alone)
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("grouping", [False, True], ids=["plain", "grouping"])
def test_seek_places_the_stream_exactly_and_names_what_differs(workers, grouping):
    batches, _, rng_states = _run(lambda: SampledStream(_parts(workers, grouping, batch=5)))
    seed(1)
    stream = SampledStream(_parts(workers, grouping, batch=5))
    warning = stream.seek(6)
    waiting = sum(len(b) for b in stream.state_dict()["buckets"])
    sought = _resume(stream, rng_states)
    assert _ids(sought) == _ids(batches[6:])  # which images, in which batch and order: always exact
    if warning is None:
        assert (workers, grouping) == (0, False)
        assert sought == batches[6:]
    elif workers:
        assert "2 DataLoader workers' random generators are not in the checkpoint" in warning
        assert sought != batches[6:]
    else:  # the images that waited in the buckets at the cut were mapped on other random numbers
        assert waiting > 0
        assert f"exact, except the random augmentation of the {waiting} image" in warning
        later = [d for b in batches[6:] for d in b]
        again = [d for b in sought for d in b]
        assert sum(a != b for a, b in zip(later, again, strict=True)) == waiting


def _grouping_by_hand(parts: LoaderParts, batches: int) -> tuple[int, list[list[int]]]:
    """The DataLoader's round robin over the workers and detectron2's grouping, one item at a time."""
    workers, chunk = parts.loader.num_workers, parts.chunk_size
    shares = [worker_share(iter(parts.sampler), w, workers, chunk) for w in range(max(workers, 1))]
    buckets: list[list[int]] = [[], []]
    fetches = handed_out = 0
    while handed_out < batches:
        _, index = next(shares[fetches % len(shares)])
        fetches += 1
        d = parts.dataset_dicts[index]  # type: ignore[index]
        bucket = buckets[0 if d["width"] > d["height"] else 1]
        bucket.append(index)
        if len(bucket) == parts.group_batch_size:
            bucket.clear()
            handed_out += 1
    return fetches, buckets


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_seek_replays_the_grouping_as_the_loader_runs_it(workers):
    parts = _parts(workers, True, batch=4, n=97)
    for batches in (0, 1, 7, 250):
        stream = SampledStream(parts)
        stream.seek(batches)
        state = stream.state_dict()
        fetches, buckets = _grouping_by_hand(parts, batches)
        assert state["fetches"] == fetches
        assert [[i for _, i, _ in b] for b in state["buckets"]] == buckets


class _Called(Exception):
    pass


class _Refusing(Dataset):
    """A mapped dataset whose items may not be loaded (beyond ``allowed`` calls): records what was asked."""

    def __init__(self, dicts: list[dict[str, Any]], allowed: int = 0) -> None:
        self.dicts, self.allowed, self.calls = dicts, allowed, []

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        self.calls.append(i)
        if len(self.calls) > self.allowed:
            raise _Called(i)
        return self.dicts[i]


@pytest.mark.slow
def test_seek_to_iteration_90000_of_a_coco_sized_dataset_maps_nothing(capsys):
    """118k images, 16 per batch, aspect-ratio grouping: seeking reads sizes only; the first item mapped after
    the seek is the first image waiting in a bucket, then the first new one."""
    n, batches, batch = 118_000, 90_000, 16
    r = random.Random(0)
    dicts = [{"image_id": i, "width": 640, "height": 480 if r.random() < 0.75 else 800} for i in range(n)]
    dataset = _Refusing(dicts)
    loader = DataLoader(dataset, collate_fn=operator.itemgetter(0))
    sampler = TrainingSampler(n, seed=1, rank=0, world_size=1)
    stream = SampledStream(LoaderParts(dataset, sampler, loader, 16, group_batch_size=batch, dataset_dicts=dicts))
    start = time.perf_counter()
    stream.seek(batches)
    seek_seconds = time.perf_counter() - start
    assert dataset.calls == []
    state = stream.state_dict()
    waiting = [i for bucket in state["buckets"] for _, i, _ in bucket]
    assert state["fetches"] == batches * batch + len(waiting) and all(len(b) < batch for b in state["buckets"])
    dataset.allowed = len(waiting)
    start = time.perf_counter()
    with pytest.raises(_Called):
        next(stream)
    start_seconds = time.perf_counter() - start
    next_position = state["fetches"]
    assert dataset.calls == [*waiting, sampler_index(sampler, next_position)]
    with capsys.disabled():
        print(f"\nseek to iteration {batches} of {n}: {seek_seconds:.2f} s; index skip at start {start_seconds:.2f} s")


def sampler_index(sampler: TrainingSampler, position: int) -> int:
    it = iter(sampler)
    for _ in range(position):
        next(it)
    return next(it)


# ---------------------------------------------------------------- states that cannot be honoured
def _state_of(parts: LoaderParts) -> dict[str, Any]:
    stream = SampledStream(parts)
    for _ in range(2):
        next(stream)
    return stream.state_dict()


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda: _parts(0, True, n=25), "dataset_size", "the dataset size changed from 23 to 25"),
        (lambda: _parts(0, True, batch=4), "batch_size", "the batch size per process changed from 3 to 4"),
        (lambda: _parts(0, True, seed=5), "sampler_stream", "the sampler's index stream (its seed or arguments)"),
        (lambda: _parts(2, True), "num_workers", "the DataLoader's num_workers changed from 0 to 2"),
        (lambda: _parts(0, False), "aspect_ratio_grouping", "aspect-ratio grouping changed from True to False"),
    ],
    ids=["dataset", "batch", "seed", "workers", "grouping"],
)
def test_a_state_that_cannot_be_honoured_names_what_changed(change, key, message):
    state = _state_of(_parts(0, True))
    with pytest.raises(StreamStateError) as err:
        SampledStream(change()).load_state_dict(state)
    assert err.value.key == key
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).endswith(
        "since the checkpoint was written: the train loader cannot continue where it stopped"
    )


def test_a_refused_state_leaves_the_stream_at_its_start_and_the_global_rng_alone():
    state = _state_of(_parts(0, True))
    stream = SampledStream(_parts(0, True, n=25, dataset=_Plain(_dicts(25))))
    with pytest.raises(StreamStateError):
        stream.load_state_dict(state)
    seed(3)
    before = stream_rng.capture()
    first = next(stream)
    assert stream_rng.capture() == before
    assert first == next(SampledStream(_parts(0, True, n=25, dataset=_Plain(_dicts(25)))))


def _reseeded(sampler: TrainingSampler, seed: int) -> TrainingSampler:
    twin = copy.copy(sampler)
    twin._seed = seed
    return twin


def _random_seed_parts(seed: int, reseed: bool) -> LoaderParts:
    """A loader whose sampler seed was drawn at random when it was built (``seed=None`` in detectron2)."""
    parts = _parts(2, True, batch=5, seed=seed)
    if not reseed:
        return parts
    return dataclasses.replace(parts, sampler_seed=seed, reseed=lambda s: _reseeded(parts.sampler, s))


def test_a_sampler_seed_drawn_at_random_is_adopted_from_the_state(d2_log):
    batches, state, rng_states = _run(lambda: SampledStream(_random_seed_parts(11, reseed=True)))
    assert state["sampler_seed"] == 11
    seed(1)
    resumed = SampledStream(_random_seed_parts(12, reseed=True))
    assert _resume(resumed, rng_states, state=state) == batches[6:]
    assert resumed.parts.sampler_seed == 11
    adopted = "its sampler shuffles with the seed the interrupted run used (11), not with the one it drew now (12)"
    assert any(adopted in m for m in d2_log.messages)
    with pytest.raises(StreamStateError, match="the sampler's index stream"):
        SampledStream(_random_seed_parts(12, reseed=False)).load_state_dict(state)
    changed = _random_seed_parts(12, reseed=True)
    changed = dataclasses.replace(changed, dataset=_RandomMapped(_dicts(24)), dataset_dicts=_dicts(24))
    with pytest.raises(StreamStateError, match="the dataset size changed from 23 to 24"):
        SampledStream(changed).load_state_dict(state)


def test_a_state_from_another_world_size_or_sampler_is_refused(monkeypatch):
    state = _state_of(_parts(0, True))
    other = _parts(0, True)
    other = LoaderParts(other.dataset, _OtherSampler(23), other.loader, 3, 3, dataset_dicts=other.dataset_dicts)
    with pytest.raises(StreamStateError, match=r"the sampler class changed from '.*TrainingSampler' to"):
        SampledStream(other).load_state_dict(state)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    with pytest.raises(StreamStateError, match="the number of processes changed from 1 to 2") as err:
        SampledStream(_parts(0, True)).load_state_dict(state)
    assert err.value.key == "world_size"
    with pytest.raises(StreamStateError, match="not a data-stream state"):
        SampledStream(_parts(0, True)).load_state_dict({"iteration": 3})


class _OtherSampler(TrainingSampler):
    pass


def test_load_or_seek_after_the_first_batch_is_an_error():
    stream = SampledStream(_parts(0, False))
    next(stream)
    with pytest.raises(RuntimeError, match=r"SampledStream.load_state_dict must be called before the first next\(\)"):
        stream.load_state_dict(stream.state_dict())
    with pytest.raises(RuntimeError, match="seek must be called before"):
        stream.seek(3)
    with pytest.raises(ValueError, match="num_batches must be an int >= 0, got -1"):
        SampledStream(_parts(0, False)).seek(-1)


def test_seek_without_sizes_restarts_and_says_why():
    parts = _parts(0, True)
    no_sizes = [{"image_id": d["image_id"]} for d in parts.dataset_dicts]  # type: ignore[union-attr]
    stream = SampledStream(LoaderParts(parts.dataset, parts.sampler, parts.loader, 3, 3, dataset_dicts=no_sizes))
    warning = stream.seek(4)
    assert warning == (
        "the train loader restarts from its first batch: dataset dict 0 has no 'width'/'height' (needed to replay "
        "aspect-ratio grouping)"
    )
    assert stream.state_dict()["batches"] == 0
    no_dicts = SampledStream(LoaderParts(parts.dataset, parts.sampler, parts.loader, 3, 3))
    assert "no dataset dicts to replay the aspect-ratio grouping from" in (no_dicts.seek(4) or "")


# ---------------------------------------------------------------- d2lightning's own loader
@pytest.fixture(scope="module")
def own_dataset():
    name = "test_streams_shapes"
    register_shapes(name, ShapesSpec(seed=7, height=40, width=56), 9)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _own_cfg(train: str, workers: int) -> Any:
    return OmegaConf.create(
        {
            "DATASETS": {"TRAIN": [train]},
            "SOLVER": {"IMS_PER_BATCH": 2},
            "DATALOADER": {"NUM_WORKERS": workers},
            "SEED": 5,
            "INPUT": {"MIN_SIZE_TRAIN": [24, 32, 40], "MAX_SIZE_TRAIN": 80, "RANDOM_FLIP": "horizontal"},
        }
    )


def _same_batches(a: list[list[dict]], b: list[list[dict]]) -> bool:
    return _ids(a) == _ids(b) and all(
        torch.equal(x["image"], y["image"])
        and torch.equal(x["instances"].gt_boxes.tensor, y["instances"].gt_boxes.tensor)
        for p, q in zip(a, b, strict=True)
        for x, y in zip(p, q, strict=True)
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_own_loader_resumes_exactly_from_its_state_and_from_the_count(own_dataset, workers):
    def make() -> TrainStream:
        stream = resumable_stream(build_detection_train_loader(_own_cfg(own_dataset, workers)))
        assert isinstance(stream, StartIterationStream)
        return stream

    batches, state, rng_states = _run(make)
    assert state["batches"] == 6 and state["config"]["num_workers"] == workers
    seed(1)
    assert _same_batches(_resume(make(), rng_states, state=state), batches[6:])
    seed(1)
    stream = make()
    assert stream.seek(6) is None
    assert _same_batches(_resume(stream, rng_states), batches[6:])
    with pytest.raises(StreamStateError, match="the kind of data stream changed from 'SampledStream' to 'StartIt"):
        make().load_state_dict(_state_of(_parts(0, True)))


# ---------------------------------------------------------------- stateful loaders and unknown loaders
class _Numbers(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int) -> tuple[int, float]:
        return i, float(torch.rand(()))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stateful_dataloader_passes_its_own_state_through(workers):
    """torchdata's StatefulDataLoader continues its sampler; without workers the items' draws come from the global
    generators the engine restores, so the batches are exact. With workers it re-seeds them as at start (its own
    behaviour): the order is exact, the workers' draws are not."""
    stateful = pytest.importorskip("torchdata.stateful_dataloader")

    def make() -> TrainStream:
        loader = stateful.StatefulDataLoader(_Numbers(), batch_size=4, shuffle=True, num_workers=workers)
        stream = resumable_stream(loader)
        assert isinstance(stream, StatefulLoaderStream)
        return stream

    batches, state, rng_states = _run(make, total=8, cut=3)
    assert "loader" in state
    seed(1)
    resumed = _resume(make(), rng_states, 5, state)
    assert [b[0].tolist() for b in resumed] == [b[0].tolist() for b in batches[3:]]
    same_draws = all(torch.equal(r[1], b[1]) for r, b in zip(resumed, batches[3:], strict=True))
    assert same_draws == (workers == 0)
    warning = make().seek(3)
    assert warning is not None and "restarts from its first batch" in warning


class _PlainSampler(torch.utils.data.Sampler[int]):
    def __iter__(self):
        while True:
            yield from range(5)


def test_unknown_loaders_get_none_and_a_message_naming_them():
    assert resumable_stream(iter([1, 2])) is None
    assert resumable_stream(DataLoader(_Numbers(), batch_size=2)) is None
    own_without_seek = build_detection_train_loader(_dicts(5), mapper=None, sampler=_PlainSampler(), total_batch_size=2)
    assert resumable_stream(own_without_seek) is None  # a sampler without set_start cannot be placed
    stream = SampledStream(_parts(0, False))
    assert resumable_stream(stream) is stream and isinstance(stream, TrainStream)
    message = unresumable_loader_message(DataLoader(_Numbers()), 300)
    assert message.startswith(
        "The train loader torch.utils.data.dataloader.DataLoader cannot be resumed at iteration 300: its stream "
        "restarts from the first batch"
    )
    assert "StatefulDataLoader" in message and "\n" not in message


class _Counting:
    """A loader of its own kind that can seek: batch ``i`` is ``i``."""

    def __init__(self) -> None:
        self.start = 0

    def set_start_iteration(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return iter(range(self.start, 10**6))


def test_any_loader_with_set_start_iteration_resumes_from_the_count():
    stream = resumable_stream(_Counting())
    assert isinstance(stream, SeekableLoaderStream)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    state = stream.state_dict()
    resumed = resumable_stream(_Counting())
    resumed.load_state_dict(state)
    assert next(resumed) == 3
    sought = resumable_stream(_Counting())
    assert sought.seek(7) is None  # exact: the loader promises it
    assert next(sought) == 7


def test_parts_of_a_grouping_loader_must_fetch_one_item_at_a_time():
    parts = _parts(0, False)
    with pytest.raises(ValueError, match="a grouping loader fetches one item at a time, got 3"):
        SampledStream(LoaderParts(parts.dataset, parts.sampler, parts.loader, 3, group_batch_size=3))


def test_state_is_a_copy():
    stream = SampledStream(_parts(0, True, batch=5))
    for _ in range(3):
        next(stream)
    state = copy.deepcopy(stream.state_dict())
    next(stream)
    assert stream.state_dict()["batches"] == 4 and state["batches"] == 3
