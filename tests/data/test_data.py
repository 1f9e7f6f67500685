"""Tests of d2lightning.data: catalogs, the shapes dataset, samplers, transforms and loaders."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from d2lightning.data import (
    DatasetCatalog,
    DatasetMapper,
    InferenceSampler,
    MetadataCatalog,
    TrainingSampler,
    build_detection_test_loader,
    build_detection_train_loader,
)
from d2lightning.data.datasets import (
    BUILTIN_SHAPES,
    ShapesSpec,
    load_shapes_dicts,
    register_shapes,
    render_shapes_image,
)
from d2lightning.data.datasets.shapes import _sample_objects
from d2lightning.data.detection_utils import read_image
from d2lightning.data.transforms import HFlipTransform, ResizeShortestEdge, ResizeTransform
from d2lightning.structures import Boxes, BoxMode
from d2lightning.utils import comm


@pytest.fixture
def tiny_dataset():
    """A 5-image shapes dataset registered for one test."""
    name = "test_tiny_shapes"
    register_shapes(name, ShapesSpec(seed=7, height=64, width=80), 5)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(train: str = "shapes_train", **overrides):
    cfg = OmegaConf.create(
        {
            "DATASETS": {"TRAIN": [train], "TEST": ["shapes_val"]},
            "SOLVER": {"IMS_PER_BATCH": 2},
            "DATALOADER": {"NUM_WORKERS": 0},
            "SEED": 5,
            "INPUT": {
                "MIN_SIZE_TRAIN": [96],
                "MAX_SIZE_TRAIN": 1000,
                "MIN_SIZE_TEST": 96,
                "MAX_SIZE_TEST": 1000,
                "RANDOM_FLIP": "none",
                "FORMAT": "BGR",
            },
        }
    )
    cfg.merge_with(OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))
    return cfg


# ---- catalogs ------------------------------------------------------------------------------------


def test_dataset_catalog_register_get_list_remove():
    DatasetCatalog.register("test_cat_a", lambda: [{"image_id": 1}])
    try:
        assert DatasetCatalog.get("test_cat_a") == [{"image_id": 1}]
        assert "test_cat_a" in DatasetCatalog.list()
        with pytest.raises(ValueError, match="'test_cat_a' is already registered"):
            DatasetCatalog.register("test_cat_a", list)
    finally:
        DatasetCatalog.remove("test_cat_a")
    assert "test_cat_a" not in DatasetCatalog.list()
    with pytest.raises(TypeError, match="must be callable"):
        DatasetCatalog.register("test_cat_b", [1, 2])  # type: ignore[arg-type]


def test_dataset_catalog_unknown_name_lists_registered_names():
    with pytest.raises(KeyError) as e:
        DatasetCatalog.get("nope")
    msg = str(e.value)
    assert "Dataset 'nope' is not registered! Available datasets are:" in msg
    assert "shapes_train" in msg and "shapes_val" in msg


def test_metadata_catalog():
    meta = MetadataCatalog.get("shapes_val")
    assert meta.thing_classes == ["circle", "square", "triangle"]
    assert meta.evaluator_type == "coco"
    assert MetadataCatalog.get("shapes_val") is meta
    m = MetadataCatalog.get("test_meta").set(foo=1)
    try:
        m.foo = 1  # same value: allowed
        with pytest.raises(ValueError, match="cannot be set to a different value"):
            m.foo = 2
        with pytest.raises(AttributeError, match=r"'bar' does not exist .* Available keys are \['foo'\]"):
            _ = m.bar
        assert m.get("bar", 3) == 3 and m.as_dict() == {"name": "test_meta", "foo": 1}
    finally:
        MetadataCatalog.remove("test_meta")
    with pytest.raises(ValueError, match="non-empty"):
        MetadataCatalog.get("")


# ---- the shapes dataset --------------------------------------------------------------------------


def test_shapes_dicts_format_and_builtin_sizes():
    val = DatasetCatalog.get("shapes_val")
    assert len(val) == 200
    d = val[3]
    assert set(d) == {"file_name", "image_id", "height", "width", "annotations"}
    assert (d["image_id"], d["height"], d["width"]) == (3, 96, 96)
    assert d["file_name"] == "shapes://2/3?size=96x96&objects=1-4&scale=10-40"
    assert set(d["annotations"][0]) == {"bbox", "bbox_mode", "category_id", "iscrowd"}
    assert d["annotations"][0]["bbox_mode"] == BoxMode.XYXY_ABS
    assert len(DatasetCatalog.get("shapes_train")) == 10000


def test_shapes_is_deterministic_and_splits_differ():
    spec = ShapesSpec(seed=11)
    assert load_shapes_dicts(spec, 4) == load_shapes_dicts(spec, 4)
    assert np.array_equal(render_shapes_image(spec, 2), render_shapes_image(spec, 2))
    (train_spec, _), (val_spec, _) = BUILTIN_SHAPES["shapes_train"], BUILTIN_SHAPES["shapes_val"]
    train, val = load_shapes_dicts(train_spec, 1)[0], load_shapes_dicts(val_spec, 1)[0]
    assert train["annotations"] != val["annotations"]
    assert not np.array_equal(read_image(train["file_name"]), read_image(val["file_name"]))
    assert not np.array_equal(render_shapes_image(spec, 0), render_shapes_image(spec, 1))


def test_shapes_url_round_trip_and_errors():
    spec = ShapesSpec(seed=3, height=64, width=80, min_objects=2, max_objects=3, min_size=8, max_size=20.5)
    assert ShapesSpec.parse_url(spec.url(17)) == (spec, 17)
    with pytest.raises(ValueError, match="not a shapes:// URL"):
        ShapesSpec.parse_url("shapes://x")
    with pytest.raises(ValueError, match="max_size <= min"):
        ShapesSpec(seed=0, height=32, width=32, max_size=40)


def test_shapes_boxes_inside_image_with_requested_sizes():
    for d in DatasetCatalog.get("shapes_val"):
        boxes = torch.tensor([a["bbox"] for a in d["annotations"]])
        assert 1 <= len(boxes) <= 4
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= 96).all() and (boxes[:, 3] <= 96).all()
        sides = boxes[:, 2:] - boxes[:, :2]
        assert torch.allclose(sides[:, 0], sides[:, 1])  # shapes are as wide as tall
        assert (sides >= 10 - 1e-4).all() and (sides <= 40 + 1e-4).all()
        assert {a["category_id"] for a in d["annotations"]} <= {0, 1, 2}


def test_shapes_boxes_match_the_drawn_shapes():
    """With one object per image, pixels of the object's colour fill its box like its class's shape does."""
    spec = ShapesSpec(seed=5, height=64, width=64, max_objects=1, min_size=16, max_size=40)
    fill = {0: np.pi / 4, 1: 1.0, 2: 0.5}  # circle, square, triangle area / box area
    for i, d in enumerate(load_shapes_dicts(spec, 24)):
        img = read_image(d["file_name"], format="RGB").astype(np.int32)
        (ann,) = d["annotations"]
        _, _, rgb = _sample_objects(spec, i)[0]
        mask = (np.abs(img - np.array(rgb)) < 30).all(axis=2)
        x0, y0, x1, y1 = ann["bbox"]
        ys, xs = np.nonzero(mask)
        inside = (xs >= x0 - 1) & (xs <= x1) & (ys >= y0 - 1) & (ys <= y1)
        xs, ys = xs[inside], ys[inside]
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5
        ratio = len(xs) / ((x1 - x0) * (y1 - y0))
        assert ratio == pytest.approx(fill[ann["category_id"]], abs=0.12), (i, ann)


def test_read_image_formats():
    url = ShapesSpec(seed=1).url(0)
    rgb, bgr = read_image(url, "RGB"), read_image(url, "BGR")
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert np.array_equal(bgr, rgb[:, :, ::-1])
    assert np.array_equal(read_image(url), rgb)
    with pytest.raises(ValueError, match="format='L'"):
        read_image(url, "L")


# ---- samplers ------------------------------------------------------------------------------------


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_sampler_is_infinite_and_sharded_by_rank():
    stream = _take(TrainingSampler(7, seed=3, rank=0, world_size=1), 21)
    for k in range(3):
        assert sorted(stream[7 * k : 7 * k + 7]) == list(range(7))  # each pass is a permutation
    assert stream[:7] != stream[7:14]
    shards = [_take(TrainingSampler(7, seed=3, rank=r, world_size=3), 7) for r in range(3)]
    for r in range(3):
        assert shards[r] == stream[r::3]
    with pytest.raises(TypeError):
        len(TrainingSampler(7, seed=3))  # type: ignore[arg-type]


def test_training_sampler_without_shuffle_and_errors():
    assert _take(TrainingSampler(4, shuffle=False, seed=0, rank=1, world_size=3), 4) == [1, 0, 3, 2]
    with pytest.raises(TypeError, match="expects an int"):
        TrainingSampler(4.0, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive int, got 0"):
        TrainingSampler(0, seed=0)
    with pytest.raises(ValueError, match=r"rank=2 must be an int in \[0, 2\)"):
        TrainingSampler(4, seed=0, rank=2, world_size=2)


def test_training_sampler_seed_none_uses_shared_random_seed(monkeypatch):
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 1234)
    assert _take(TrainingSampler(10), 30) == _take(TrainingSampler(10, seed=1234), 30)


def test_inference_sampler_uneven_contiguous_shards():
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert [len(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)] == [4, 3, 3]
    assert [len(InferenceSampler(2, rank=r, world_size=3)) for r in range(3)] == [1, 1, 0]
    with pytest.raises(ValueError, match="positive int"):
        InferenceSampler(0)


# ---- transforms ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("h", "w", "short", "max_size", "expected"),
    [(480, 640, 800, 1333, (800, 1067)), (48, 96, 64, 100, (50, 100)), (96, 96, 96, 1000, (96, 96))],
)
def test_resize_shortest_edge_output_shape(h, w, short, max_size, expected):
    assert ResizeShortestEdge.get_output_shape(h, w, short, max_size) == expected
    t = ResizeShortestEdge(short, max_size).get_transform(np.zeros((h, w, 3), np.uint8))
    assert t.apply_image(np.zeros((h, w, 3), np.uint8)).shape == (*expected, 3)


def test_resize_and_flip_transform_boxes():
    img = np.zeros((40, 60, 3), np.uint8)
    img[10:20, 30:45] = 200
    t = ResizeTransform(40, 60, 80, 30)
    out = t.apply_image(img)
    assert out.shape == (80, 30, 3) and out.dtype == np.uint8 and out[30, 18, 0] == 200
    assert t.apply_box(np.array([[30, 10, 45, 20]])).tolist() == [[15, 20, 22.5, 40]]
    assert HFlipTransform(60).apply_box(np.array([[30, 10, 45, 20]])).tolist() == [[15, 10, 30, 20]]
    with pytest.raises(ValueError, match="sample_style='bad'"):
        ResizeShortestEdge(10, sample_style="bad")


# ---- mapper and loaders --------------------------------------------------------------------------


def test_dataset_mapper_resizes_image_and_boxes(tiny_dataset):
    d = DatasetCatalog.get(tiny_dataset)[0]
    out = DatasetMapper(_cfg(**{"INPUT.MIN_SIZE_TRAIN": [128]}), is_train=True)(d)
    assert out["image"].shape == (3, 128, 160) and out["image"].dtype == torch.uint8
    assert (out["height"], out["width"]) == (64, 80)
    expected = torch.tensor([a["bbox"] for a in d["annotations"]]) * 2
    assert isinstance(out["instances"].gt_boxes, Boxes)
    assert torch.allclose(out["instances"].gt_boxes.tensor, expected)
    assert out["instances"].gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]
    assert "annotations" in d and "image" not in d  # the input is not modified
    test_out = DatasetMapper(_cfg(), is_train=False)(d)
    assert "annotations" not in test_out and "instances" not in test_out


def test_train_loader_batches_are_infinite_and_in_model_format(tiny_dataset):
    loader = build_detection_train_loader(_cfg(train=tiny_dataset, **{"INPUT.MIN_SIZE_TRAIN": [64]}))
    with pytest.raises(TypeError):
        len(loader)
    batches = list(itertools.islice(iter(loader), 8))  # 16 images from a 5-image dataset
    assert all(len(b) == 2 for b in batches)
    first = batches[0][0]
    assert first["image"].shape == (3, 64, 80) and first["image"].dtype == torch.uint8
    bgr = read_image(first["file_name"], "BGR")
    assert torch.equal(first["image"], torch.from_numpy(bgr).permute(2, 0, 1))
    assert len(first["instances"]) == len(first["instances"].gt_classes) >= 1
    ids = [x["image_id"] for b in batches for x in b]
    assert sorted(ids[:5]) == [0, 1, 2, 3, 4]


def test_train_loader_follows_seed_and_shards_by_rank(tiny_dataset, monkeypatch):
    cfg = _cfg(train=tiny_dataset, **{"SOLVER.IMS_PER_BATCH": 4, "INPUT.MIN_SIZE_TRAIN": [64]})
    stream = _take(TrainingSampler(5, seed=5, rank=0, world_size=1), 12)
    ids = [x["image_id"] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 3) for x in b]
    assert ids == stream
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    batches = list(itertools.islice(iter(build_detection_train_loader(cfg)), 3))
    assert [len(b) for b in batches] == [2, 2, 2]
    assert [x["image_id"] for b in batches for x in b] == stream[1::2]
    with pytest.raises(ValueError, match=r"Total batch size \(3\) must be divisible by the number of gpus \(2\)"):
        build_detection_train_loader(_cfg(train=tiny_dataset, **{"SOLVER.IMS_PER_BATCH": 3}))


def test_train_loader_with_workers_keeps_sampler_order(tiny_dataset):
    cfg = _cfg(train=tiny_dataset, **{"DATALOADER.NUM_WORKERS": 2, "INPUT.MIN_SIZE_TRAIN": [64]})
    ids = [x["image_id"] for b in itertools.islice(iter(build_detection_train_loader(cfg)), 4) for x in b]
    assert ids == _take(TrainingSampler(5, seed=5, rank=0, world_size=1), 8)


def test_train_loader_explicit_arguments(tiny_dataset):
    dicts = DatasetCatalog.get(tiny_dataset)
    mapper = DatasetMapper(None, True, augmentations=[], image_format="RGB")
    loader = build_detection_train_loader(
        dicts, mapper=mapper, sampler=TrainingSampler(5, shuffle=False, seed=0), total_batch_size=3
    )
    batch = next(iter(loader))
    assert [x["image_id"] for x in batch] == [0, 1, 2]
    assert torch.equal(batch[0]["image"], torch.from_numpy(read_image(dicts[0]["file_name"])).permute(2, 0, 1))


def test_test_loader_length_order_and_uneven_shards(monkeypatch):
    loader = build_detection_test_loader(_cfg(), "shapes_val")
    assert len(loader) == 200
    first = next(iter(loader))
    assert len(first) == 1 and first[0]["image_id"] == 0 and first[0]["image"].shape == (3, 96, 96)
    assert "annotations" not in first[0]
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    lengths = []
    for rank in range(3):
        monkeypatch.setattr(comm, "get_rank", lambda r=rank: r)
        lengths.append(len(build_detection_test_loader(_cfg(), "shapes_val")))
    assert lengths == [67, 67, 66]
    with pytest.raises(KeyError, match="Dataset 'missing' is not registered"):
        build_detection_test_loader(_cfg(), "missing")
