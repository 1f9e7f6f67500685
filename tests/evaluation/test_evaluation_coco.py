"""Tests for d2lightning.evaluation.COCOEvaluator against hand-computed COCO AP.

COCO AP (pycocotools) per class and IoU threshold t: detections sorted by score are matched greedily to
unmatched ground truth with IoU >= t; precision is made monotone (max precision at any recall >= r) and
sampled at the 101 recall points 0.00, 0.01, ..., 1.00 (0 where the recall is never reached). AP is the mean
of the samples; "AP" averages t = 0.50, 0.55, ..., 0.95; classes/areas without ground truth are left out;
results are in percent.

The toy dataset (two classes "cat"=0 and "dog"=1, XYXY boxes):

* image 1: cat gt G1 = [0, 0, 40, 40] (area 1600, "medium") and G2 = [100, 100, 150, 150] (area 2500, medium);
  predictions P1 = G1 (IoU 1, score .9) and P2 = [100, 100, 150, 180] (score .8): IoU(P2, G2) = 2500 / 4000
  = 0.625.
* image 2: dog gt D = [10, 10, 110, 110] (area 10000, "large"); prediction = D (IoU 1, score .7).

cat: for t <= 0.60 both detections are TPs -> precision 1 up to recall 1 -> AP_t = 101/101 = 1. For
t >= 0.65, P2 is a FP after P1: precision 1 up to recall 0.5, recall 1 never reached -> AP_t = 51/101
(points 0.00..0.50).
So cat AP50 = 1, AP75 = 51/101, AP = (3 * 1 + 7 * 51/101) / 10 = 660/1010.
dog: AP_t = 1 for every t.
Overall (mean over classes): AP = (660/1010 + 1)/2, AP50 = 1, AP75 = (51/101 + 1)/2; APs: no small gt -> NaN;
APm: only cat has medium gt -> 660/1010; APl: only dog -> 1. Per class: AP-cat = 660/1010, AP-dog = 1.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import d2lightning.data
from d2lightning.evaluation import COCOEvaluator, inference_on_dataset

LOGGER = "d2lightning.evaluation"
CLASSES = ["cat", "dog"]
CAT_AP = 660 / 1010 * 100  # 65.3465...
EXPECTED = {
    "AP": (660 / 1010 + 1) / 2 * 100,  # 82.6733
    "AP50": 100.0,
    "AP75": (51 / 101 + 1) / 2 * 100,  # 75.2475
    "APs": math.nan,
    "APm": CAT_AP,
    "APl": 100.0,
    "AP-cat": CAT_AP,
    "AP-dog": 100.0,
}


def _ann(xyxy: list[float], category_id: int, bbox_mode: int = 0) -> dict[str, Any]:
    x0, y0, x1, y1 = xyxy
    bbox = xyxy if bbox_mode == 0 else [x0, y0, x1 - x0, y1 - y0]
    return {"bbox": bbox, "bbox_mode": bbox_mode, "category_id": category_id}


def gt_dicts(bbox_mode: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "image_id": 1,
            "height": 200,
            "width": 200,
            "annotations": [_ann([0, 0, 40, 40], 0, bbox_mode), _ann([100, 100, 150, 150], 0, bbox_mode)],
        },
        {"image_id": 2, "height": 200, "width": 200, "annotations": [_ann([10, 10, 110, 110], 1, bbox_mode)]},
    ]


def instances(boxes: Sequence[Sequence[float]], scores: Sequence[float], classes: Sequence[int]) -> SimpleNamespace:
    """A stand-in for detectron2 ``Instances`` (no ``.to``): pred_boxes.tensor, scores, pred_classes."""
    return SimpleNamespace(
        pred_boxes=SimpleNamespace(tensor=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)),
        scores=torch.tensor(scores),
        pred_classes=torch.tensor(classes, dtype=torch.int64),
    )


PREDICTIONS = {
    1: instances([[0, 0, 40, 40], [100, 100, 150, 180]], [0.9, 0.8], [0, 0]),
    2: instances([[10, 10, 110, 110]], [0.7], [1]),
}


def run(evaluator: COCOEvaluator, predictions: dict[int, Any] = PREDICTIONS) -> dict[str, Any]:
    evaluator.reset()
    for image_id, inst in predictions.items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()


def assert_metrics(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(actual[key]), key
        else:
            assert actual[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.parametrize("bbox_mode", [0, 1], ids=["XYXY_ABS", "XYWH_ABS"])
def test_hand_computed_ap(bbox_mode: int) -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(bbox_mode), class_names=CLASSES)
    results = run(evaluator)
    assert list(results) == ["bbox"]
    assert_metrics(results["bbox"], EXPECTED)


def test_false_positive_ranked_first_halves_ap() -> None:
    # one class, one gt [0, 0, 50, 50]; a far FP (score .9) ranks above the exact TP (score .8):
    # precision at recall 1 is 1/2 at every recall point -> AP = 50 at every IoU threshold.
    # With a single class there are no AP-<class> entries (detectron2 needs >= 2 classes).
    gt = [{"image_id": 7, "height": 100, "width": 100, "annotations": [_ann([0, 0, 50, 50], 0)]}]
    evaluator = COCOEvaluator("one", gt_dicts=gt, class_names=["thing"])
    preds = {7: instances([[60, 60, 100, 100], [0, 0, 50, 50]], [0.9, 0.8], [0, 0])}
    expected = {"AP": 50.0, "AP50": 50.0, "AP75": 50.0, "APs": math.nan, "APm": 50.0, "APl": math.nan}
    assert_metrics(run(evaluator, preds)["bbox"], expected)


def test_max_dets_per_image_keeps_top_scored() -> None:
    # image 1 gets P1 (score .9), ten far-away FPs (score .5) and P2 (score .1). At IoU .5 for "cat":
    # default (100 per image): TP, 10 FP, TP -> precision 1 up to recall .5, then 2/12 up to recall 1
    #   -> AP50_cat = (51 * 1 + 50 * 1/6) / 101;
    # max_dets_per_image=11: P2 is dropped -> precision 1 up to recall .5 -> AP50_cat = 51/101.
    # "dog" stays at 100, AP50 is the mean of the two classes.
    far = [[150 + i, 0, 160 + i, 10] for i in range(10)]
    preds = {
        1: instances([[0, 0, 40, 40], *far, [100, 100, 150, 180]], [0.9] + [0.5] * 10 + [0.1], [0] * 12),
        2: PREDICTIONS[2],
    }
    default = run(COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES), preds)["bbox"]
    assert default["AP50"] == pytest.approx(((51 + 50 / 6) / 101 + 1) / 2 * 100)
    limited = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES, max_dets_per_image=11)
    assert run(limited, preds)["bbox"]["AP50"] == pytest.approx((51 / 101 + 1) / 2 * 100)
    # as in detectron2, COCOeval sorts maxDets=[1, 10, n]: a limit below 10 acts as 10
    below_ten = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES, max_dets_per_image=1)
    assert run(below_ten)["bbox"]["AP50"] == pytest.approx(100.0)


def test_plain_tensor_boxes_and_float64_scores() -> None:
    preds = {
        image_id: SimpleNamespace(
            pred_boxes=inst.pred_boxes.tensor, scores=inst.scores.double(), pred_classes=inst.pred_classes
        )
        for image_id, inst in PREDICTIONS.items()
    }
    results = run(COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES), preds)
    assert results["bbox"]["AP"] == pytest.approx(EXPECTED["AP"])


def test_no_detections_give_nan_and_warn(caplog: pytest.LogCaptureFixture) -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    empty = {1: instances([], [], []), 2: instances([], [], [])}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        results = run(evaluator, empty)
    nan = math.nan
    assert_metrics(results["bbox"], {"AP": nan, "AP50": nan, "AP75": nan, "APs": nan, "APm": nan, "APl": nan})
    assert "No predictions from the model!" in caplog.messages


def test_nothing_processed_returns_empty_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    evaluator.process([{"image_id": 1}], [{"sem_seg": None}])  # no "instances": nothing kept
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert evaluator.evaluate() == {}
    assert caplog.messages == ["[COCOEvaluator] Did not receive valid predictions."]


def test_reset_forgets_predictions() -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    evaluator.process([{"image_id": 1}], [{"instances": PREDICTIONS[1]}])
    evaluator.reset()
    assert evaluator.evaluate() == {}


def test_through_inference_on_dataset() -> None:
    def model(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"instances": PREDICTIONS[x["image_id"]]} for x in batch]

    loader = [[{"image_id": 1}, {"image_id": 2}]]
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    assert_metrics(inference_on_dataset(model, loader, evaluator)["bbox"], EXPECTED)


def test_output_dir_files(tmp_path: Any) -> None:
    evaluator = COCOEvaluator("toy", output_dir=str(tmp_path / "out"), gt_dicts=gt_dicts(), class_names=CLASSES)
    run(evaluator)
    coco_results = json.loads((tmp_path / "out" / "coco_instances_results.json").read_text())
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in coco_results] == [
        (1, 0, [0.0, 0.0, 40.0, 40.0]),
        (1, 0, [100.0, 100.0, 50.0, 80.0]),
        (2, 1, [10.0, 10.0, 100.0, 100.0]),
    ]
    saved = torch.load(tmp_path / "out" / "instances_predictions.pth", weights_only=False)
    assert [p["image_id"] for p in saved] == [1, 2]


def test_catalogs_are_read_when_no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = SimpleNamespace(get=lambda name: gt_dicts() if name == "toy_registered" else [])
    metadata = SimpleNamespace(get=lambda name: SimpleNamespace(thing_classes=CLASSES))
    monkeypatch.setattr(d2lightning.data, "DatasetCatalog", catalog, raising=False)
    monkeypatch.setattr(d2lightning.data, "MetadataCatalog", metadata, raising=False)
    assert_metrics(run(COCOEvaluator("toy_registered"))["bbox"], EXPECTED)


def test_prediction_for_unknown_image_raises() -> None:
    evaluator = COCOEvaluator("toy", distributed=False, gt_dicts=gt_dicts(), class_names=CLASSES)
    with pytest.raises(ValueError, match=r"image_id \[99\].*not in the ground truth of 'toy'"):
        run(evaluator, {99: PREDICTIONS[1]})


def test_prediction_with_out_of_range_class_raises() -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    with pytest.raises(ValueError, match=r"class=5, but the dataset only has 2 classes"):
        run(evaluator, {1: instances([[0, 0, 1, 1]], [0.5], [5])})


def test_mismatched_instance_fields_raise() -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    bad = SimpleNamespace(pred_boxes=torch.zeros(2, 4), scores=torch.zeros(1), pred_classes=torch.zeros(2))
    with pytest.raises(ValueError, match=r"pred_boxes \(2\), scores \(1\)"):
        evaluator.process([{"image_id": 1}], [{"instances": bad}])


def test_input_without_image_id_raises() -> None:
    evaluator = COCOEvaluator("toy", gt_dicts=gt_dicts(), class_names=CLASSES)
    with pytest.raises(ValueError, match="no 'image_id'"):
        evaluator.process([{"file_name": "a.jpg"}], [{"instances": PREDICTIONS[1]}])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tasks": ("bbox", "segm")}, ValueError, "only 'bbox'"),
        ({"max_dets_per_image": 0}, ValueError, "max_dets_per_image must be None or an int >= 1, got 0"),
        ({"gt_dicts": [{"height": 1, "width": 1, "annotations": [_ann([0, 0, 1, 1], 0, 2)]}]}, ValueError,
         "bbox_mode=2"),
        ({"gt_dicts": [{"height": 1, "width": 1, "annotations": [_ann([0, 0, 1, 1], 3)]}]}, ValueError,
         r"category_id \[3\] outside \[0, 1\]"),
        ({"gt_dicts": [{"image_id": 1, "width": 1}]}, ValueError, "dataset dict 0 has no height"),
    ],
)  # fmt: skip
def test_constructor_validation(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    base: dict[str, Any] = {"gt_dicts": gt_dicts(), "class_names": CLASSES}
    with pytest.raises(error, match=match):
        COCOEvaluator("toy", **{**base, **kwargs})


def test_config_as_tasks_warns_like_detectron2(caplog: pytest.LogCaptureFixture) -> None:
    cfg = SimpleNamespace(TEST=SimpleNamespace(KEYPOINT_OKS_SIGMAS=[]))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        evaluator = COCOEvaluator("toy", cfg, False, gt_dicts=gt_dicts(), class_names=CLASSES)
    assert "deprecated" in caplog.messages[0]
    assert run(evaluator)["bbox"]["AP50"] == pytest.approx(100.0)
