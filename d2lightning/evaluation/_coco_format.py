"""Conversions to the COCO json format for box evaluation.

Mirrors detectron2's ``convert_to_coco_dict`` (dataset dicts -> COCO ground truth, box part) and
``instances_to_coco_json`` (predicted ``Instances`` -> COCO results), without depending on detectron2's
``structures``: boxes are plain XYXY / XYWH conversions here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

XYXY_ABS = 0  # detectron2 BoxMode.XYXY_ABS
XYWH_ABS = 1  # detectron2 BoxMode.XYWH_ABS


def xywh_box(bbox: Any, bbox_mode: Any) -> list[float]:
    """Convert one 4-number box from detectron2's ``XYXY_ABS`` (0) or ``XYWH_ABS`` (1) mode to XYWH.

    Raises:
        ValueError: for another mode or a box that is not 4 numbers.
    """
    values = np.asarray(bbox, dtype=np.float64).reshape(-1).tolist()
    if len(values) != 4:
        raise ValueError(f"annotation bbox must have 4 numbers, got {bbox!r}")
    mode = int(bbox_mode)
    if mode == XYWH_ABS:
        return values
    if mode == XYXY_ABS:
        x0, y0, x1, y1 = values
        return [x0, y0, x1 - x0, y1 - y0]
    raise ValueError(
        f"annotation bbox_mode={bbox_mode!r} is not supported; use BoxMode.XYXY_ABS (0) or BoxMode.XYWH_ABS (1)"
    )


def _polygon_area(polygons: Sequence[Sequence[float]]) -> float:
    """Total shoelace area of flat ``[x0, y0, x1, y1, ...]`` polygons (detectron2 ``PolygonMasks.area``)."""
    area = 0.0
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        area += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return area


def _annotation_area(annotation: Mapping[str, Any], xywh: list[float], height: int, width: int) -> float:
    """The instance area detectron2 writes: mask area when a segmentation is given, else box area."""
    segmentation = annotation.get("segmentation")
    if segmentation is None:
        return max(xywh[2], 0.0) * max(xywh[3], 0.0)
    if isinstance(segmentation, list):
        return _polygon_area(segmentation)
    if isinstance(segmentation, dict):
        from pycocotools import mask as mask_util

        rle = segmentation
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, height, width)
        return float(mask_util.area(rle))
    raise TypeError(f"Unknown segmentation type {type(segmentation).__name__}!")


def dataset_to_coco_dict(dataset_dicts: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> dict[str, Any]:
    """Build a COCO ground-truth dict (images, annotations, categories) from detectron2 dataset dicts.

    Category ids are detectron2's contiguous ids ``0..K-1``; ``image_id`` defaults to the index of the dict;
    annotation ids start at 1 (COCO's requirement).

    Raises:
        ValueError: on a missing field, a duplicate ``image_id`` or an unsupported ``bbox_mode``.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    seen: set[Any] = set()
    for index, record in enumerate(dataset_dicts):
        if not isinstance(record, Mapping):
            raise TypeError(f"dataset dict {index} must be a dict, got {type(record).__name__}")
        missing = [k for k in ("height", "width") if k not in record]
        if missing:
            raise ValueError(f"dataset dict {index} has no {' or '.join(missing)}")
        image_id = record.get("image_id", index)
        if image_id in seen:
            raise ValueError(f"image_id {image_id!r} appears twice in the ground truth")
        seen.add(image_id)
        height, width = int(record["height"]), int(record["width"])
        images.append({"id": image_id, "height": height, "width": width})
        for annotation in record.get("annotations", []):
            xywh = xywh_box(annotation["bbox"], annotation.get("bbox_mode", XYXY_ABS))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "bbox": [round(v, 3) for v in xywh],
                    "area": _annotation_area(annotation, xywh, height, width),
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                    "category_id": int(annotation["category_id"]),
                }
            )
    categories = [{"id": i, "name": str(name)} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        return (tensor.double() if tensor.is_floating_point() else tensor).numpy()  # bf16 has no numpy dtype
    return np.asarray(value)


def instances_to_coco_json(instances: Any, image_id: Any) -> list[dict[str, Any]]:
    """COCO results for one image (detectron2 ``instances_to_coco_json``, boxes only).

    ``instances`` is duck-typed: it needs ``pred_boxes`` (an object with ``.tensor`` or a tensor/array of
    shape ``(N, 4)`` in absolute XYXY), ``scores`` (N,) and ``pred_classes`` (N,), on any device.

    Raises:
        ValueError: if the three fields disagree in length or the boxes are not ``(N, 4)``.
        TypeError: if a field is missing.
    """
    fields = {}
    for name in ("pred_boxes", "scores", "pred_classes"):
        if not hasattr(instances, name):
            raise TypeError(f"predicted instances of image {image_id!r} have no '{name}' field")
        value = getattr(instances, name)
        fields[name] = _to_numpy(getattr(value, "tensor", value))
    raw_boxes = fields["pred_boxes"]
    if raw_boxes.size == 0:
        boxes = np.zeros((0, 4))
    elif raw_boxes.ndim != 2 or raw_boxes.shape[1] != 4:
        raise ValueError(f"pred_boxes of image {image_id!r} must have shape (N, 4), got {raw_boxes.shape}")
    else:
        boxes = raw_boxes.astype(np.float64)  # a copy, changed in place below
    scores = fields["scores"].reshape(-1).tolist()
    classes = fields["pred_classes"].reshape(-1).tolist()
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(
            f"image {image_id!r}: pred_boxes ({len(boxes)}), scores ({len(scores)}) and "
            f"pred_classes ({len(classes)}) must have the same length"
        )
    boxes[:, 2:] -= boxes[:, :2]  # XYXY -> XYWH
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)}
        for b, s, c in zip(boxes.tolist(), scores, classes, strict=True)
    ]
