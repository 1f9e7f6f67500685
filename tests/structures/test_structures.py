"""Tests of d2lightning.structures against detectron2's documented behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from d2lightning.structures import Boxes, BoxMode, ImageList, Instances, pairwise_iou


@pytest.mark.parametrize(
    ("box", "from_mode", "to_mode", "expected"),
    [
        ([10, 20, 5, 6], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS, [10.0, 20.0, 15.0, 26.0]),
        ((10, 20, 15, 26), BoxMode.XYXY_ABS, BoxMode.XYWH_ABS, (10.0, 20.0, 5.0, 6.0)),
        ([1, 2, 3, 4], BoxMode.XYXY_ABS, BoxMode.XYXY_ABS, [1, 2, 3, 4]),
    ],
)
def test_boxmode_convert_single_box_keeps_container_type(box, from_mode, to_mode, expected):
    out = BoxMode.convert(box, from_mode, to_mode)
    assert out == expected
    assert type(out) is type(box)


def test_boxmode_convert_array_and_tensor_do_not_modify_input():
    arr = np.array([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 4.0, 5.0]])
    out = BoxMode.convert(arr, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    assert isinstance(out, np.ndarray)
    assert out.tolist() == [[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 5.0, 6.0]]
    assert arr.tolist() == [[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 4.0, 5.0]]
    t = torch.tensor([[1.0, 1.0, 5.0, 6.0]])
    back = BoxMode.convert(t, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert back.tolist() == [[1.0, 1.0, 4.0, 5.0]]
    assert t.tolist() == [[1.0, 1.0, 5.0, 6.0]]


def test_boxmode_values_and_errors():
    assert [m.value for m in BoxMode] == [0, 1, 2, 3, 4]
    assert BoxMode.convert([0, 0, 1, 1], 1, 0) == [0.0, 0.0, 1.0, 1.0]  # ints accepted, as in dataset dicts
    with pytest.raises(NotImplementedError, match="XYXY_REL"):
        BoxMode.convert([0, 0, 1, 1], BoxMode.XYXY_REL, BoxMode.XYXY_ABS)
    with pytest.raises(ValueError, match="4 numbers"):
        BoxMode.convert([0, 0, 1], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    with pytest.raises(TypeError, match="list, tuple"):
        BoxMode.convert("0 0 1 1", BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)


def test_boxes_area_clip_nonempty_scale():
    b = Boxes([[-5, 2, 10, 20], [5, 5, 5, 9], [0, 0, 50, 40]])
    assert b.tensor.dtype == torch.float32
    assert b.area().tolist() == [270.0, 0.0, 2000.0]
    assert b.nonempty().tolist() == [True, False, True]
    b.clip((30, 40))
    assert b.tensor.tolist() == [[0, 2, 10, 20], [5, 5, 5, 9], [0, 0, 40, 30]]
    b.scale(0.5, 2.0)
    assert b.tensor.tolist() == [[0, 4, 5, 40], [2.5, 10, 2.5, 18], [0, 0, 20, 60]]
    assert b.get_centers().tolist() == [[2.5, 22.0], [2.5, 14.0], [10.0, 30.0]]


def test_boxes_indexing_len_iter_cat_to():
    b = Boxes(torch.arange(12.0).reshape(3, 4))
    assert len(b) == 3
    assert b[1].tensor.tolist() == [[4, 5, 6, 7]]
    assert b[1:].tensor.tolist() == [[4, 5, 6, 7], [8, 9, 10, 11]]
    assert b[torch.tensor([True, False, True])].tensor[:, 0].tolist() == [0, 8]
    assert b[torch.tensor([2, 0])].tensor[:, 0].tolist() == [8, 0]
    assert [row.tolist()[0] for row in b] == [0, 4, 8]
    c = Boxes.cat([b[0], b[2]])
    assert c.tensor[:, 0].tolist() == [0, 8]
    c.tensor[0, 0] = 99
    assert b.tensor[0, 0] == 0  # cat never shares storage
    assert b.to("cpu").device == torch.device("cpu")
    assert Boxes([]).tensor.shape == (0, 4)
    assert len(Boxes.cat([])) == 0


def test_boxes_errors():
    with pytest.raises(ValueError, match="Nx4"):
        Boxes(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        Boxes([[0, 0, float("nan"), 1]]).clip((10, 10))
    with pytest.raises(TypeError, match="list or tuple of Boxes"):
        Boxes.cat([torch.zeros(1, 4)])  # type: ignore[list-item]


def test_pairwise_iou():
    a = Boxes([[0, 0, 10, 10]])
    b = Boxes([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert pairwise_iou(a, b).tolist() == [[1.0, pytest.approx(1 / 3), 0.0]]


def _instances() -> Instances:
    return Instances(
        (40, 60),
        pred_boxes=Boxes([[0, 0, 1, 1], [1, 1, 2, 2], [2, 2, 3, 3]]),
        scores=torch.tensor([0.9, 0.1, 0.5]),
        labels=["a", "b", "c"],
    )


def test_instances_fields():
    inst = _instances()
    assert inst.image_size == (40, 60)
    assert len(inst) == 3
    inst.pred_classes = torch.tensor([2, 1, 0])
    assert inst.has("pred_classes") and "pred_classes" in inst
    assert inst.get("pred_classes").tolist() == [2, 1, 0]
    assert list(inst.get_fields()) == ["pred_boxes", "scores", "labels", "pred_classes"]
    inst.remove("labels")
    assert not inst.has("labels")
    with pytest.raises(AttributeError, match="Cannot find field 'labels'"):
        _ = inst.labels
    with pytest.raises(ValueError, match="length 2 to an Instances of length 3"):
        inst.set("bad", torch.zeros(2))


def test_instances_indexing():
    inst = _instances()
    one = inst[1]
    assert len(one) == 1 and one.labels == ["b"] and one.scores.tolist() == [pytest.approx(0.1)]
    assert inst[-1].labels == ["c"]
    assert inst[1:].labels == ["b", "c"]
    inst.remove("labels")  # a list field takes only int/slice indices, as in detectron2
    high = inst[inst.scores > 0.3]
    assert high.pred_boxes.tensor[:, 0].tolist() == [0, 2]
    assert inst[torch.tensor([2, 0])].scores.tolist() == [pytest.approx(0.5), pytest.approx(0.9)]
    with pytest.raises(IndexError, match="out of range"):
        inst[3]
    with pytest.raises(NotImplementedError, match="not iterable"):
        iter(inst)
    with pytest.raises(NotImplementedError, match="Empty Instances"):
        len(Instances((1, 1)))


def test_instances_cat_and_to():
    inst = _instances()
    both = Instances.cat([inst[:1], inst[2:]])
    assert both.labels == ["a", "c"]
    assert both.pred_boxes.tensor[:, 0].tolist() == [0, 2]
    assert both.scores.tolist() == [pytest.approx(0.9), pytest.approx(0.5)]
    moved = inst.to("cpu")
    assert moved is not inst and moved.labels == ["a", "b", "c"]
    with pytest.raises(ValueError, match="image sizes differ"):
        Instances.cat([inst, Instances((1, 1), scores=torch.zeros(1), pred_boxes=Boxes(torch.zeros(1, 4)))])
    with pytest.raises(ValueError, match="at least one"):
        Instances.cat([])
    assert "num_instances=3, image_height=40, image_width=60" in repr(inst)


def test_image_list_pads_to_divisibility():
    a, b = torch.ones(3, 5, 7), torch.ones(3, 9, 4)
    il = ImageList.from_tensors([a, b], size_divisibility=8, pad_value=-1.0)
    assert il.tensor.shape == (2, 3, 16, 8)
    assert il.image_sizes == [(5, 7), (9, 4)]
    assert il[1].shape == (3, 9, 4)
    assert il.tensor[0, 0, 5, 0] == -1.0 and il.tensor[0, 0, 4, 6] == 1.0
    single = ImageList.from_tensors([a], size_divisibility=16)
    assert single.tensor.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="at least one"):
        ImageList.from_tensors([])
