"""Tests of d2lightning.modeling: registry, build_model, the ShapesDetector contract and its pieces."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from d2lightning.config import get_cfg
from d2lightning.data import DatasetMapper
from d2lightning.data.datasets import ShapesSpec, load_shapes_dicts
from d2lightning.modeling import (
    META_ARCH_REGISTRY,
    SHAPES_DETECTOR_DEFAULTS,
    Registry,
    build_model,
    centernet,
    detector_postprocess,
)
from d2lightning.structures import Boxes, Instances
from d2lightning.utils.events import EventStorage

TINY = {"BACKBONE_WIDTHS": [8, 8, 16, 16], "HEAD_WIDTH": 8}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**detector):
    return OmegaConf.create(
        {
            "MODEL": {
                "META_ARCHITECTURE": "ShapesDetector",
                "DEVICE": "cpu",
                "PIXEL_MEAN": [127.5, 127.5, 127.5],
                "PIXEL_STD": [64.0, 64.0, 64.0],
                "SHAPES_DETECTOR": {**TINY, **detector},
            },
            "INPUT": {"FORMAT": "BGR"},
        }
    )


def _batch(n: int = 4) -> list[dict]:
    """``n`` mapped 64x64 shapes images with their instances."""
    mapper = DatasetMapper(None, True, augmentations=[], image_format="BGR")
    return [mapper(d) for d in load_shapes_dicts(ShapesSpec(seed=3, height=64, width=64, max_size=32), n)]


# ---- registry and build_model --------------------------------------------------------------------


def test_registry_register_get_and_errors():
    reg = Registry("THING")

    @reg.register()
    class A:
        pass

    def b():
        return 1

    assert reg.register(b) is b
    assert reg.get("A") is A and reg.get("b") is b
    assert "A" in reg and dict(reg) == {"A": A, "b": b}
    with pytest.raises(ValueError, match="'A' was already registered in 'THING' registry"):
        reg.register(A)
    with pytest.raises(
        KeyError, match=r"No object named 'C' found in 'THING' registry! Registered names: \['A', 'b'\]"
    ):
        reg.get("C")


def test_build_model_builds_registered_arch_on_device():
    model = build_model(_cfg())
    assert type(model).__name__ == "ShapesDetector" and META_ARCH_REGISTRY.get("ShapesDetector") is type(model)
    assert model.device == torch.device("cpu")
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.training
    cfg = _cfg()
    cfg.MODEL.META_ARCHITECTURE = "Missing"
    with pytest.raises(KeyError, match=r"No object named 'Missing' found in 'META_ARCH' registry!.*ShapesDetector"):
        build_model(cfg)


def test_defaults_are_declared_and_validated():
    assert SHAPES_DETECTOR_DEFAULTS["MODEL"]["SHAPES_DETECTOR"]["NUM_CLASSES"] == 3
    cfg = get_cfg()
    assert cfg.MODEL.SHAPES_DETECTOR.NUM_CLASSES == 3
    assert list(cfg.MODEL.SHAPES_DETECTOR.BACKBONE_WIDTHS) == [16, 32, 64, 96]
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = "ShapesDetector"
    assert build_model(cfg).num_classes == 3  # a full d2lightning config works as is
    cfg = _cfg()
    cfg.MODEL.PIXEL_STD = [1.0, 1.0]
    with pytest.raises(ValueError, match="PIXEL_MEAN"):
        build_model(cfg)
    cfg = _cfg()
    cfg.INPUT.FORMAT = "YUV"
    with pytest.raises(ValueError, match=r"INPUT\.FORMAT='YUV'"):
        build_model(cfg)


# ---- training contract ---------------------------------------------------------------------------


def test_training_forward_gives_finite_scalar_losses_that_decrease():
    torch.manual_seed(0)
    model = build_model(_cfg())
    batch = _batch(3)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(30):
        losses = model(batch)
        assert set(losses) == {"loss_heatmap", "loss_box"}
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.6 * sum(totals[:3]) / 3


def test_training_needs_instances():
    model = build_model(_cfg())
    batch = _batch(1)
    del batch[0]["instances"]
    with pytest.raises(ValueError, match="needs 'instances'"):
        model(batch)


def test_training_puts_scalars_into_an_active_event_storage():
    batch = _batch(2)
    model = build_model(_cfg())
    assert set(model(batch)) == {"loss_heatmap", "loss_box"}  # no storage open: nothing to report to
    with EventStorage(0) as storage:
        model(batch)
    latest = storage.latest()
    n_gt = sum(len(x["instances"]) for x in batch) / 2
    assert latest["shapes_detector/num_gt_per_image"] == (n_gt, 0)
    assert 0.0 < latest["shapes_detector/peak_score"][0] < 1.0


# ---- inference contract --------------------------------------------------------------------------


def test_eval_returns_instances_in_original_coordinates():
    torch.manual_seed(0)
    model = build_model(_cfg(SCORE_THRESH_TEST=0.0, DETECTIONS_PER_IMAGE=20)).eval()
    image = _batch(1)[0]["image"]
    with torch.no_grad():
        native = model([{"image": image}])[0]["instances"]
        scaled = model([{"image": image, "height": 128, "width": 96}])[0]["instances"]
    assert native.image_size == (64, 64) and scaled.image_size == (128, 96)
    assert isinstance(scaled.pred_boxes, Boxes)
    assert scaled.scores.shape == scaled.pred_classes.shape == (len(scaled),)
    assert len(native) == len(scaled) == 20
    assert torch.allclose(scaled.pred_boxes.tensor, native.pred_boxes.tensor * torch.tensor([1.5, 2.0, 1.5, 2.0]))
    assert scaled.scores.tolist() == native.scores.tolist()
    assert (scaled.pred_boxes.tensor[:, 2] <= 96).all() and (scaled.pred_boxes.tensor[:, 3] <= 128).all()


def test_eval_score_threshold_and_topk():
    model = build_model(_cfg(SCORE_THRESH_TEST=0.5, DETECTIONS_PER_IMAGE=5)).eval()
    with torch.no_grad():
        out = model(_batch(2))
    assert len(out) == 2
    for o in out:
        inst = o["instances"]
        assert len(inst) <= 5 and bool((inst.scores > 0.5).all())
        assert inst.pred_classes.dtype == torch.int64


def test_detector_postprocess_scales_clips_and_drops_empty():
    inst = Instances(
        (10, 20),
        pred_boxes=Boxes([[0, 0, 10, 10], [19, 9, 25, 10], [21, 0, 30, 5]]),
        scores=torch.tensor([0.9, 0.8, 0.7]),
    )
    out = detector_postprocess(inst, 20, 40)
    assert out.image_size == (20, 40)
    assert out.pred_boxes.tensor.tolist() == [[0, 0, 20, 20], [38, 18, 40, 20]]
    assert out.scores.tolist() == [pytest.approx(0.9), pytest.approx(0.8)]
    with pytest.raises(ValueError, match="must contain boxes"):
        detector_postprocess(Instances((1, 1), scores=torch.zeros(1)), 2, 2)


# ---- targets and decoding ------------------------------------------------------------------------


def test_targets_put_a_peak_at_the_centre_cell():
    boxes, classes = torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([1])
    heat, box_t, weight = centernet.build_targets(boxes, classes, 3, (8, 8), stride=4, alpha=0.54)
    assert heat.shape == (3, 8, 8) and heat[1, 4, 4] == 1.0
    assert heat[0].sum() == 0 and heat[2].sum() == 0 and int(heat.eq(1).sum()) == 1
    assert weight[4, 4] == 1.0 and weight[0, 0] == 0.0
    assert box_t[4, 4].tolist() == [8.0, 8.0, 24.0, 24.0]
    empty = centernet.build_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3, (8, 8), 4, 0.54)
    assert float(empty[0].sum()) == 0.0 and float(empty[2].sum()) == 0.0


def test_decode_reads_peaks_and_side_distances():
    logits = torch.full((3, 4, 4), -10.0)
    logits[2, 1, 2] = 3.0
    ltrb = torch.zeros(4, 4, 4)
    ltrb[1, 2] = torch.tensor([2.0, 3.0, 4.0, 5.0])
    boxes, scores, classes = centernet.decode(logits, ltrb, stride=4, topk=10, score_thresh=0.5)
    assert classes.tolist() == [2]
    assert scores.tolist() == [pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())]
    assert boxes.tolist() == [[8.0, 3.0, 14.0, 11.0]]  # cell centre (10, 6)
