"""detectron2 ``data/detection_utils.py``: reading images and turning annotations into :class:`Instances`.

:func:`read_image` renders ``shapes://`` URLs of the built-in synthetic dataset in memory and opens other
paths with Pillow (imported only then).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from d2lightning.data.datasets.shapes import ShapesSpec, render_shapes_image
from d2lightning.data.transforms import Transform
from d2lightning.structures import Boxes, BoxMode, Instances

__all__ = [
    "annotations_to_instances",
    "check_image_size",
    "filter_empty_instances",
    "read_image",
    "transform_instance_annotations",
]

_FORMATS = ("RGB", "BGR")


def read_image(file_name: str, format: str | None = None) -> np.ndarray:
    """detectron2 ``read_image``: load an image as an ``(H, W, 3)`` uint8 array in channel order ``format``.

    Args:
        file_name: a ``shapes://`` URL (rendered, see :mod:`d2lightning.data.datasets.shapes`) or a file path.
        format: ``"BGR"``, ``"RGB"`` or ``None`` (RGB, as Pillow decodes it).

    Raises:
        ValueError: for a format other than RGB/BGR/None.
    """
    if format not in (*_FORMATS, None):
        raise ValueError(f"format={format!r} must be one of {_FORMATS} or None")
    if file_name.startswith("shapes://"):
        image = render_shapes_image(*ShapesSpec.parse_url(file_name))
    else:
        from PIL import Image  # optional: only needed for images on disk

        with Image.open(file_name) as f:
            image = np.asarray(f.convert("RGB"))
    if format == "BGR":
        image = np.ascontiguousarray(image[:, :, ::-1])
    return image


def check_image_size(dataset_dict: dict[str, Any], image: np.ndarray) -> None:
    """detectron2 ``check_image_size``: fill in missing ``height``/``width``, or check them against ``image``.

    Raises:
        ValueError: when the recorded size differs from the image's.
    """
    h, w = image.shape[:2]
    expected = (dataset_dict.setdefault("height", h), dataset_dict.setdefault("width", w))
    if expected != (h, w):
        raise ValueError(
            f"Mismatched image shape for {dataset_dict.get('file_name', 'image')}: got {(h, w)}, "
            f"expected {expected} (height, width)"
        )


def transform_instance_annotations(
    annotation: dict[str, Any], transforms: Transform, image_size: tuple[int, int]
) -> dict[str, Any]:
    """detectron2 ``transform_instance_annotations`` (boxes only): transform, clip, set ``XYXY_ABS``.

    Args:
        annotation: one annotation with ``bbox`` and ``bbox_mode``; modified in place and returned.
        transforms: the transform applied to the image.
        image_size: ``(height, width)`` after the transform, for clipping.
    """
    box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    box = transforms.apply_box(np.array([box], dtype=np.float32))[0]
    h, w = image_size
    box = np.minimum(np.maximum(box, 0), [w, h, w, h])
    annotation["bbox"] = [float(v) for v in box]
    annotation["bbox_mode"] = BoxMode.XYXY_ABS
    return annotation


def annotations_to_instances(annos: list[dict[str, Any]], image_size: tuple[int, int]) -> Instances:
    """detectron2 ``annotations_to_instances`` (boxes only): ``Instances(gt_boxes=Boxes, gt_classes=int64)``.

    Boxes are converted to XYXY_ABS from each annotation's ``bbox_mode``.
    """
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    target = Instances(image_size)
    target.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    target.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    return target


def filter_empty_instances(instances: Instances, box_threshold: float = 1e-5) -> Instances:
    """detectron2 ``filter_empty_instances``: drop instances whose ``gt_boxes`` are (nearly) empty."""
    return instances[instances.gt_boxes.nonempty(threshold=box_threshold)]
