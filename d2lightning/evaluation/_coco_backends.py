"""What computes :class:`~d2lightning.evaluation.COCOEvaluator`'s box precision: its ``backend`` option.

``"pycocotools"`` runs COCOeval directly (in the evaluator). ``"torchmetrics"`` (:func:`torchmetrics_precision`)
goes through torchmetrics' ``MeanAveragePrecision``: the ground truth (a COCO dict) and the detections (COCO
results) that the evaluator already holds are handed to ``torchmetrics.detection.MeanAveragePrecision`` image by
image, as float64 tensors in ``xywh`` with the annotations' ``area`` and ``iscrowd``; its ``extended_summary``
returns the precision array of COCOeval's ``accumulate``, which the evaluator summarises exactly as for the direct
pycocotools path. The metric is told COCO's own IoU and recall thresholds: its defaults are float32 roundings of
them (``0.550000011920929`` instead of ``0.55``), which move recall points that fall exactly on a threshold and
change AP (by 0.0015 AP points on the crafted dataset of ``tests/test_evaluation_coco_backends.py``).

Needs torchvision (torchmetrics imports ``MeanAveragePrecision`` only with it) and pycocotools. The metric does
no cross-process sync here (``sync_on_compute=False``): the evaluator has gathered the detections already.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "TORCHMETRICS_MISSING_REASON",
    "coco_params",
    "resolve_backend",
    "torchmetrics_map_available",
    "torchmetrics_precision",
]

BACKENDS = ("auto", "pycocotools", "torchmetrics")

TORCHMETRICS_MISSING_REASON = (
    "torchmetrics' MeanAveragePrecision needs torchvision, which is not installed (`pip install torchvision`)"
)


def torchmetrics_map_available() -> bool:
    """Whether ``torchmetrics.detection.MeanAveragePrecision`` can be used: torchvision is installed."""
    return importlib.util.find_spec("torchvision") is not None


def resolve_backend(backend: Any) -> str:
    """``"pycocotools"`` or ``"torchmetrics"`` for a ``backend`` option (``"auto"``: torchmetrics when torchvision is
    installed, else pycocotools).

    Raises:
        ValueError: naming ``backend`` and :data:`BACKENDS` for another value.
        ImportError: for ``"torchmetrics"`` when torchvision is not installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "torchmetrics" if torchmetrics_map_available() else "pycocotools"
    if backend == "torchmetrics" and not torchmetrics_map_available():
        raise ImportError(f"COCOEvaluator(backend='torchmetrics'): {TORCHMETRICS_MISSING_REASON}")
    return str(backend)


def coco_params() -> Any:
    """COCOeval's default box parameters (IoU and recall thresholds, area ranges), which both backends use."""
    from pycocotools.cocoeval import Params

    return Params(iouType="bbox")


def torchmetrics_precision(
    coco_gt: Mapping[str, Any],
    coco_results: Sequence[Mapping[str, Any]],
    max_dets: Sequence[int],
    img_ids: Sequence[Any] | None,
    iou_thresholds: Sequence[float],
    rec_thresholds: Sequence[float],
) -> tuple[np.ndarray, list[int]]:
    """COCOeval's accumulated box precision, computed through ``MeanAveragePrecision``.

    Args:
        coco_gt: the ground truth as a COCO dict (``images``, ``annotations`` with ``bbox`` in xywh).
        coco_results: COCO-format detections (``image_id``, ``category_id``, ``bbox``, ``score``).
        max_dets: the three per-image detection limits.
        img_ids: evaluate only these images (None: every image of ``coco_gt``).
        iou_thresholds, rec_thresholds: COCOeval's thresholds.

    Returns:
        ``(precision, category_ids)``: the ``(iou, recall, class, area, max_dets)`` array (-1 where undefined) and
        the category id of each index of its class axis (only categories present in ground truth or detections).

    Raises:
        ImportError: when torchvision is not installed.
    """
    if not torchmetrics_map_available():
        raise ImportError(TORCHMETRICS_MISSING_REASON)
    from torchmetrics.detection import MeanAveragePrecision

    wanted = [img["id"] for img in coco_gt["images"]] if img_ids is None else list(dict.fromkeys(img_ids))
    targets = _per_image(coco_gt["annotations"], wanted, ("area", "iscrowd"))
    preds = _per_image(coco_results, wanted, ("score",))
    metric = MeanAveragePrecision(
        box_format="xywh",
        iou_type="bbox",
        iou_thresholds=[float(t) for t in iou_thresholds],
        rec_thresholds=[float(t) for t in rec_thresholds],
        max_detection_thresholds=[int(m) for m in max_dets],
        extended_summary=True,
        backend="pycocotools",
        sync_on_compute=False,
    )
    metric.warn_on_many_detections = False  # COCO's per-image limit applies, as in the pycocotools path
    metric.update(
        [{"boxes": p["bbox"], "scores": p["score"], "labels": p["category_id"]} for p in preds],
        [{"boxes": t["bbox"], "labels": t["category_id"], "area": t["area"], "iscrowd": t["iscrowd"]} for t in targets],
    )
    out = metric.compute()
    # torchmetrics squeezes one-element results to 0-d tensors
    return out["precision"].numpy(), [int(c) for c in out["classes"].reshape(-1).tolist()]


def _per_image(
    annotations: Sequence[Mapping[str, Any]], image_ids: list[Any], fields: tuple[str, ...]
) -> list[dict[str, torch.Tensor]]:
    """One dict of tensors per image of ``image_ids`` (in that order), keeping the annotations' order."""
    grouped: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for annotation in annotations:
        grouped[annotation["image_id"]].append(annotation)
    out = []
    for image_id in image_ids:
        items = grouped.get(image_id, [])
        entry = {
            "bbox": torch.tensor([a["bbox"] for a in items], dtype=torch.float64).reshape(-1, 4),
            "category_id": torch.tensor([a["category_id"] for a in items], dtype=torch.int64),
        }
        for field in fields:
            dtype = torch.int64 if field == "iscrowd" else torch.float64
            entry[field] = torch.tensor([a[field] for a in items], dtype=dtype)
        out.append(entry)
    return out
