"""``COCOEvaluator(backend=...)``: torchmetrics' MeanAveragePrecision and pycocotools give the same numbers.

The comparison needs torchvision (torchmetrics' ``MeanAveragePrecision`` imports it) and is skipped without it;
choosing and validating the backend is tested everywhere.

The crafted dataset (12 images of 128x128, seeded, 3 classes "a", "b" and "ghost") has small, medium and large
boxes, crowd regions, 5 "b" boxes (so recall steps of 0.2 land exactly on COCO's recall grid), detections
with tied scores, jittered true positives, false positives, more than 10 detections in one image, and
detections of "ghost", which has no ground truth (its AP is NaN).
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from d2lightning.evaluation import COCOEvaluator
from d2lightning.evaluation import _coco_backends as backends

CLASSES = ["a", "b", "ghost"]
needs_torchvision = pytest.mark.skipif(
    not backends.torchmetrics_map_available(), reason=backends.TORCHMETRICS_MISSING_REASON
)


def crafted() -> tuple[list[dict[str, Any]], dict[int, SimpleNamespace]]:
    """Ground-truth dicts (XYXY) and per-image predicted instances of the crafted dataset."""
    rng = np.random.default_rng(7)
    gts: list[dict[str, Any]] = []
    preds: dict[int, SimpleNamespace] = {}
    b_left = 5
    for image_id in range(12):
        annotations = []
        boxes, scores, classes = [], [], []
        for k in range(3):
            size = [12, 48, 100][(image_id + k) % 3]  # small (< 32^2), medium, large (> 96^2)
            x, y = rng.integers(0, 128 - size, size=2)
            category = 0 if k < 2 or b_left == 0 else 1
            b_left -= category
            crowd = int(image_id % 5 == 4 and k == 2)
            box = [float(x), float(y), float(x + size), float(y + size)]
            annotations.append({"bbox": box, "bbox_mode": 0, "category_id": category, "iscrowd": crowd})
            if rng.random() < 0.8:  # a jittered detection of this box
                jitter = rng.normal(0, size * 0.08, size=4)
                boxes.append([c + j for c, j in zip(box, jitter, strict=True)])
                scores.append(round(float(rng.uniform(0.3, 1.0)), 1))  # rounded: ties across images
                classes.append(category)
        for _ in range(int(rng.integers(1, 4))):  # false positives, "ghost" ones too
            x, y = rng.integers(0, 100, size=2)
            boxes.append([float(x), float(y), float(x + 20), float(y + 26)])
            scores.append(round(float(rng.uniform(0.05, 0.9)), 1))
            classes.append(int(rng.integers(0, 3)))
        if image_id == 3:  # more than 10 detections of one class in one image
            boxes += [[float(i), 60.0, float(i + 30), 90.0] for i in range(0, 60, 5)]
            scores += [0.35] * 12
            classes += [0] * 12
        gts.append({"image_id": image_id, "height": 128, "width": 128, "annotations": annotations})
        preds[image_id] = SimpleNamespace(
            pred_boxes=SimpleNamespace(tensor=torch.tensor(boxes, dtype=torch.float32)),
            scores=torch.tensor(scores, dtype=torch.float32),
            pred_classes=torch.tensor(classes, dtype=torch.int64),
        )
    return gts, preds


def evaluate(backend: str, img_ids: list[int] | None = None, **kwargs: Any) -> dict[str, float]:
    gts, preds = crafted()
    evaluator = COCOEvaluator("crafted", gt_dicts=gts, class_names=CLASSES, backend=backend, **kwargs)
    assert evaluator.backend == backend
    for image_id, instances in preds.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate(img_ids=img_ids)["bbox"]


@needs_torchvision
@pytest.mark.parametrize(
    "case",
    [{}, {"img_ids": [0, 2, 3, 5, 8, 11]}, {"max_dets_per_image": 12}, {"max_dets_per_image": 1}],
    ids=["all images", "img_ids subset", "max_dets_per_image=12", "max_dets_per_image=1"],
)
def test_torchmetrics_and_pycocotools_give_the_same_numbers(case: dict[str, Any]) -> None:
    direct = evaluate("pycocotools", **case)
    via_torchmetrics = evaluate("torchmetrics", **case)
    assert list(via_torchmetrics) == list(direct) == [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AP-a", "AP-b", "AP-ghost",
    ]  # fmt: skip
    for key, value in direct.items():
        if math.isnan(value):
            assert math.isnan(via_torchmetrics[key]), key
        else:
            assert via_torchmetrics[key] == pytest.approx(value, abs=1e-6, rel=0), key
    # the dataset exercises what it claims: real, imperfect APs in every area range, and a class without gt
    assert all(0 < direct[k] < 100 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP-a", "AP-b"))
    assert math.isnan(direct["AP-ghost"])


@needs_torchvision
def test_the_precision_arrays_are_identical() -> None:
    # the whole COCOeval precision array, not only its summary: same thresholds, same matching
    gts, preds = crafted()
    evaluator = COCOEvaluator("crafted", gt_dicts=gts, class_names=CLASSES, backend="pycocotools")
    for image_id, instances in preds.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    coco_results = [r for p in evaluator._predictions for r in p["instances"]]
    params = backends.coco_params()
    direct, direct_ids = evaluator._accumulate(coco_results, None, params)
    via_torchmetrics, ids = backends.torchmetrics_precision(
        evaluator._coco_api.dataset, coco_results, [1, 10, 100], None, params.iouThrs, params.recThrs
    )
    assert (direct_ids, ids) == ([0, 1, 2], [0, 1, 2])  # "ghost" has detections, so it is on both class axes
    assert direct.shape == via_torchmetrics.shape == (10, 101, 3, 4, 3)
    assert np.array_equal(direct, via_torchmetrics)


# ---------------------------------------------------------------- choosing the backend (no torchvision needed)
def _gt() -> list[dict[str, Any]]:
    return [{"image_id": 1, "height": 10, "width": 10, "annotations": []}]


@pytest.mark.parametrize("available, expected", [(True, "torchmetrics"), (False, "pycocotools")])
def test_auto_uses_torchmetrics_when_torchvision_is_installed(
    available: bool, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "torchmetrics_map_available", lambda: available)
    assert COCOEvaluator("x", gt_dicts=_gt(), class_names=["a"]).backend == expected
    assert COCOEvaluator("x", gt_dicts=_gt(), class_names=["a"], backend="auto").backend == expected
    assert COCOEvaluator("x", gt_dicts=_gt(), class_names=["a"], backend="pycocotools").backend == "pycocotools"


def test_torchmetrics_backend_without_torchvision_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "torchmetrics_map_available", lambda: False)
    with pytest.raises(ImportError, match=r"backend='torchmetrics'.*needs torchvision, which is not installed"):
        COCOEvaluator("x", gt_dicts=_gt(), class_names=["a"], backend="torchmetrics")


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"backend must be one of \('auto', 'pycocotools', 'torchmetrics'\), got 'coco'"
    ):
        COCOEvaluator("x", gt_dicts=_gt(), class_names=["a"], backend="coco")


@needs_torchvision
def test_float32_rounded_thresholds_would_change_the_numbers() -> None:
    # why the torchmetrics backend passes COCO's thresholds: torchmetrics' defaults are torch.linspace values
    # (float32, e.g. 0.550000011920929), which move recall points lying exactly on the grid (5 "b" boxes)
    gts, preds = crafted()
    evaluator = COCOEvaluator("crafted", gt_dicts=gts, class_names=CLASSES, backend="pycocotools")
    for image_id, instances in preds.items():
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    coco_results = [r for p in evaluator._predictions for r in p["instances"]]
    params = backends.coco_params()
    direct, _ = evaluator._accumulate(coco_results, None, params)
    rounded, _ = backends.torchmetrics_precision(
        evaluator._coco_api.dataset,
        coco_results,
        [1, 10, 100],
        None,
        torch.linspace(0.5, 0.95, 10).tolist(),
        torch.linspace(0.0, 1.0, 101).tolist(),
    )
    assert not np.array_equal(direct, rounded)
