"""DefaultPredictor as detectron2's: BGR HWC numpy in, instances in the original image's coordinates out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import DefaultPredictor
from d2lightning.modeling import build_model
from tests.helpers.demo import TINY_VAL, red_square_cfg, red_square_image, tiny_cfg

BOX = (120, 45, 160, 85)  # x0, y0, x1, y1 of the red square in a 150 x 200 image


@pytest.mark.parametrize("fmt", ["BGR", "RGB"])
def test_boxes_are_in_original_image_coordinates(tmp_path, fmt):
    predictor = DefaultPredictor(red_square_cfg(tmp_path, "INPUT.FORMAT", fmt))
    image = red_square_image(150, 200, BOX)
    instances = predictor(image)["instances"]
    # the model saw the image resized to a 64-pixel shortest edge (48 x 64 here: MAX_SIZE_TEST 100 not reached)
    seen = predictor.model.last_inputs[0]
    assert tuple(seen["image"].shape) == (3, 64, 85)
    assert seen["image"].dtype == torch.float32
    assert (seen["height"], seen["width"]) == (150, 200)
    assert instances.image_size == (150, 200)
    assert len(instances) == 1
    box = instances.pred_boxes.tensor[0]
    assert box.tolist() == pytest.approx(list(BOX), abs=3.0)  # one resized pixel is 2.35 original pixels
    assert 0 <= box[0] < box[2] <= 200 and 0 <= box[1] < box[3] <= 150


@pytest.mark.parametrize(("fmt", "red_channel"), [("BGR", 2), ("RGB", 0)])
def test_channels_follow_input_format_and_input_is_not_modified(tmp_path, fmt, red_channel):
    predictor = DefaultPredictor(red_square_cfg(tmp_path, "INPUT.FORMAT", fmt))
    image = red_square_image(64, 64, (10, 10, 30, 30))
    before = image.copy()
    predictor(image)
    tensor = predictor.model.last_inputs[0]["image"]
    assert tensor[:, 20, 20].tolist() == [255.0 if c == red_channel else 0.0 for c in range(3)]
    assert np.array_equal(image, before)


def test_max_size_test_limits_the_longest_edge(tmp_path):
    predictor = DefaultPredictor(red_square_cfg(tmp_path, "INPUT.MAX_SIZE_TEST", "70"))
    instances = predictor(red_square_image(100, 300, (200, 20, 260, 80)))["instances"]
    assert tuple(predictor.model.last_inputs[0]["image"].shape) == (3, 23, 70)
    assert instances.image_size == (100, 300)
    assert instances.pred_boxes.tensor[0].tolist() == pytest.approx([200, 20, 260, 80], abs=5.0)


def test_weights_metadata_and_eval_mode(tmp_path):
    cfg = red_square_cfg(tmp_path)
    model = build_model(cfg)
    with torch.no_grad():
        model.scale.fill_(0.5)
    DetectionCheckpointer(model, str(tmp_path)).save("weights")
    cfg.MODEL.WEIGHTS = str(tmp_path / "weights.pth")
    predictor = DefaultPredictor(cfg)
    assert predictor.model.training is False
    assert predictor.model.scale.item() == 0.5
    assert predictor(red_square_image(64, 64, (5, 5, 20, 20)))["instances"].scores.tolist() == pytest.approx([0.45])
    assert predictor.metadata.name == TINY_VAL
    assert predictor.metadata.thing_classes == ["circle", "square", "triangle"]
    cfg.DATASETS.TEST = ()
    assert not hasattr(DefaultPredictor(cfg), "metadata")


def test_the_cfg_is_cloned(tmp_path):
    cfg = red_square_cfg(tmp_path)
    predictor = DefaultPredictor(cfg)
    cfg.INPUT.MIN_SIZE_TEST = 32
    predictor(red_square_image(100, 100, (5, 5, 20, 20)))
    assert tuple(predictor.model.last_inputs[0]["image"].shape) == (3, 64, 64)
    assert predictor.cfg is not cfg


def test_shapes_detector_predicts_in_original_coordinates(tmp_path):
    cfg = tiny_cfg(tmp_path, "MODEL.SHAPES_DETECTOR.SCORE_THRESH_TEST", "0.0")
    predictor = DefaultPredictor(cfg)
    instances = predictor(np.zeros((80, 120, 3), dtype=np.uint8) + 100)["instances"]
    assert instances.image_size == (80, 120)
    assert 1 <= len(instances) <= 100  # local heatmap peaks, at most DETECTIONS_PER_IMAGE
    boxes = instances.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 120).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 80).all()


@pytest.mark.parametrize(
    ("image", "error", "got"),
    [
        ([[[0, 0, 0]]], TypeError, "got a list"),
        ("image.png", TypeError, "got a str"),
        (torch.zeros(8, 8, 3, dtype=torch.uint8), TypeError, "got a Tensor of shape (8, 8, 3)"),
        (np.zeros((8, 8), dtype=np.uint8), ValueError, "got an array of shape (8, 8)"),
        (np.zeros((8, 8, 4), dtype=np.uint8), ValueError, "got an array of shape (8, 8, 4)"),
        (np.zeros((3, 8, 8), dtype=np.uint8), ValueError, "got an array of shape (3, 8, 8)"),
        (np.zeros((0, 8, 3), dtype=np.uint8), ValueError, "got an array of shape (0, 8, 3)"),
    ],
)
def test_non_image_input_is_refused_naming_what_was_given(tmp_path, image, error, got):
    predictor = DefaultPredictor(red_square_cfg(tmp_path))
    with pytest.raises(error) as info:
        predictor(image)
    assert str(info.value) == f"DefaultPredictor expects an (H, W, 3) BGR numpy image (e.g. from cv2.imread), {got}"


def test_unknown_input_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"DefaultPredictor supports INPUT\.FORMAT 'RGB' or 'BGR', got 'YUV'"):
        DefaultPredictor(red_square_cfg(tmp_path, "INPUT.FORMAT", "YUV"))
