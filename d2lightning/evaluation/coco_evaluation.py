"""detectron2 ``COCOEvaluator`` for boxes, computed by the official COCO API (``pycocotools``).

Predictions are collected per image in :meth:`COCOEvaluator.process`, gathered to rank 0 with
:func:`d2lightning.utils.comm.gather` in :meth:`COCOEvaluator.evaluate`, and scored there with
``pycocotools.cocoeval.COCOeval`` against the ground truth converted from detectron2 dataset dicts. The
result has detectron2's layout and scale: ``{"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl",
"AP-<class>", ...}}`` in percent, NaN where a metric cannot be computed. With ``backend="torchmetrics"``
(the default where torchvision is installed) the same COCOeval precision is obtained through torchmetrics'
``MeanAveragePrecision`` instead (:mod:`._coco_backends`); both give the same numbers.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from d2lightning.evaluation._coco_backends import coco_params, resolve_backend, torchmetrics_precision
from d2lightning.evaluation._coco_format import dataset_to_coco_dict, instances_to_coco_json
from d2lightning.evaluation.evaluator import DatasetEvaluator
from d2lightning.utils import comm
from d2lightning.utils.validation import check_int

__all__ = ["COCOEvaluator"]

logger = logging.getLogger(__name__)

BOX_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# metric -> (IoU threshold or None for the 0.50:0.95 mean, COCO area range label)
_METRIC_SLICES = {
    "AP": (None, "all"),
    "AP50": (0.5, "all"),
    "AP75": (0.75, "all"),
    "APs": (None, "small"),
    "APm": (None, "medium"),
    "APl": (None, "large"),
}


def _check_tasks(tasks: Any) -> tuple[str, ...]:
    if tasks is None:
        return ("bbox",)
    if isinstance(tasks, str):
        tasks = (tasks,)
    elif isinstance(tasks, Mapping) or hasattr(tasks, "TEST"):
        logger.warning(
            "COCO Evaluator instantiated using config, this is deprecated behavior. "
            "Please pass in explicit arguments instead."
        )
        return ("bbox",)
    tasks = tuple(tasks)
    unsupported = sorted(set(tasks) - {"bbox"})
    if unsupported:
        raise ValueError(f"tasks={tasks!r} is not supported: this COCOEvaluator evaluates only 'bbox'")
    return ("bbox",)


def _mean_precision(precision: np.ndarray) -> float:
    """COCO's summary: mean of the defined (> -1) precisions, in percent; NaN when none is defined."""
    valid = precision[precision > -1]
    return float(valid.mean() * 100) if valid.size else float("nan")


def _small_table(values: Mapping[str, float]) -> str:
    names = list(values)
    widths = [max(len(n), 7) for n in names]
    head = "| " + " | ".join(n.center(w) for n, w in zip(names, widths, strict=True)) + " |"
    rule = "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"
    row = "| " + " | ".join(f"{values[n]:.3f}".center(w) for n, w in zip(names, widths, strict=True)) + " |"
    return "\n".join((head, rule, row))


class COCOEvaluator(DatasetEvaluator):
    """Box AP with COCO's metrics (detectron2 ``COCOEvaluator``, ``bbox`` task only).

    The ground truth is ``DatasetCatalog.get(dataset_name)`` (detectron2 dataset dicts with ``image_id``,
    ``height``, ``width`` and ``annotations`` of ``bbox``/``bbox_mode``/``category_id``; ``XYXY_ABS`` and
    ``XYWH_ABS`` boxes), the class names ``MetadataCatalog.get(dataset_name).thing_classes``; both can be
    given directly instead (``gt_dicts=``, ``class_names=``). Category ids are detectron2's contiguous ids
    ``0..K-1``.

    :meth:`process` reads ``inputs[i]["image_id"]`` and ``outputs[i]["instances"]`` (``pred_boxes`` in
    absolute XYXY, ``scores``, ``pred_classes``; any device). :meth:`evaluate` is *collective* when
    ``distributed``: every rank sends its predictions to rank 0, which returns the metrics while the other
    ranks return ``{}``.

    As in detectron2: metrics are in percent; a metric without ground truth is NaN; per-class ``AP-<name>``
    entries are added when there are at least two classes; if no image was processed it warns
    "[COCOEvaluator] Did not receive valid predictions." and returns ``{}``; if images were processed but
    nothing was detected it warns "No predictions from the model!" and returns NaN for the six metrics.

    Args:
        dataset_name: name of the registered dataset (used for the ground truth unless ``gt_dicts`` is given).
        tasks: None, ``"bbox"`` or ``("bbox",)``; a config node is accepted with detectron2's deprecation
            warning.
        distributed: gather predictions from all ranks and evaluate on rank 0; otherwise evaluate locally.
        output_dir: if set, the main process writes ``instances_predictions.pth`` and
            ``coco_instances_results.json`` there.
        max_dets_per_image: detections per image kept for AP (COCO's default 100). As in detectron2,
            COCOeval sorts ``[1, 10, max_dets_per_image]``, so a value below 10 acts as 10.
        use_fast_impl: accepted for compatibility; the official COCO API is always used.
        kpt_oks_sigmas: accepted for compatibility; keypoints are not evaluated.
        allow_cached_coco: accepted for compatibility; no converted json is cached.
        gt_dicts: detectron2 dataset dicts to use instead of the ``DatasetCatalog``.
        class_names: class names to use instead of the metadata's ``thing_classes``.
        backend: what computes the COCO precision: ``"pycocotools"`` (COCOeval directly), ``"torchmetrics"``
            (``torchmetrics.detection.MeanAveragePrecision``, which needs torchvision; the same numbers) or
            ``"auto"``: torchmetrics when torchvision is installed, else pycocotools.

    Raises:
        ValueError: for an unsupported task, a bad ``max_dets_per_image``, an unknown ``backend`` or malformed
            ground truth.
        ImportError: if ``pycocotools`` is not installed, or for ``backend="torchmetrics"`` without torchvision.

    Example::

        evaluator = COCOEvaluator("shapes_val", output_dir="./output")
        results = inference_on_dataset(model, val_loader, evaluator)  # {"bbox": {"AP": ..., ...}} on rank 0
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Any = None,
        distributed: bool = True,
        output_dir: str | None = None,
        *,
        max_dets_per_image: int | None = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
        gt_dicts: Sequence[Mapping[str, Any]] | None = None,
        class_names: Sequence[str] | None = None,
        backend: str = "auto",
    ) -> None:
        if not isinstance(dataset_name, str):
            raise TypeError(f"dataset_name must be a str, got {type(dataset_name).__name__}")
        check_int("max_dets_per_image", max_dets_per_image, minimum=1, allow_none=True)
        self._backend = resolve_backend(backend)
        self._dataset_name = dataset_name
        self._tasks = _check_tasks(tasks)
        self._distributed = bool(distributed)
        self._output_dir = output_dir
        self._max_dets = [1, 10, 100 if max_dets_per_image is None else max_dets_per_image]
        self._coco_api = self._load_ground_truth(dataset_name, gt_dicts, class_names)
        self.reset()

    def _load_ground_truth(
        self, name: str, gt_dicts: Sequence[Mapping[str, Any]] | None, class_names: Sequence[str] | None
    ) -> Any:
        try:
            from pycocotools.coco import COCO
        except ImportError as err:
            raise ImportError("COCOEvaluator needs pycocotools: `pip install pycocotools`") from err
        if gt_dicts is None or class_names is None:
            try:  # lazy: the catalogs are only needed when the ground truth is not given
                data = importlib.import_module("d2lightning.data")
                DatasetCatalog, MetadataCatalog = data.DatasetCatalog, data.MetadataCatalog
            except (ImportError, AttributeError) as err:
                raise ImportError(
                    "COCOEvaluator reads the ground truth from d2lightning.data's DatasetCatalog and "
                    "MetadataCatalog, which could not be imported; pass gt_dicts= and class_names= instead"
                ) from err

            if gt_dicts is None:
                gt_dicts = DatasetCatalog.get(name)
            if class_names is None:
                class_names = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if isinstance(gt_dicts, (str, bytes, Mapping)) or not isinstance(gt_dicts, Iterable):
            raise TypeError(f"gt_dicts must be a list of dataset dicts, got {type(gt_dicts).__name__}")
        gt_dicts = list(gt_dicts)
        self._class_names = None if class_names is None else [str(c) for c in class_names]
        if self._class_names is None:  # detectron2 requires thing_classes; fall back to the ids seen
            ids = [a["category_id"] for d in gt_dicts for a in d.get("annotations", [])]
            names = [str(i) for i in range(max(ids, default=-1) + 1)]
        else:
            names = self._class_names
        self._num_classes = len(names)
        coco_dict = dataset_to_coco_dict(gt_dicts, names)
        bad = sorted({a["category_id"] for a in coco_dict["annotations"]} - set(range(len(names))))
        if bad:
            raise ValueError(f"ground truth of {name!r} has category_id {bad} outside [0, {len(names) - 1}]")
        coco = COCO()
        coco.dataset = coco_dict
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    @property
    def backend(self) -> str:
        """What computes the precision: ``"pycocotools"`` or ``"torchmetrics"`` (``"auto"`` resolved)."""
        return self._backend

    def reset(self) -> None:
        """Forget the predictions collected so far."""
        self._predictions: list[dict[str, Any]] = []

    def process(self, inputs: Sequence[Mapping[str, Any]], outputs: Sequence[Mapping[str, Any]]) -> None:
        """Store the COCO-format detections of each ``(input, output)`` pair that has ``"instances"``.

        Raises:
            ValueError: if an input has no ``"image_id"`` or the instances are malformed.
        """
        for inp, out in zip(inputs, outputs, strict=True):
            if "image_id" not in inp:
                raise ValueError(f"COCOEvaluator.process: an input has no 'image_id' (keys: {sorted(inp)})")
            if "instances" in out:
                image_id = inp["image_id"]
                coco_json = instances_to_coco_json(out["instances"], image_id)
                self._predictions.append({"image_id": image_id, "instances": coco_json})

    def evaluate(self, img_ids: Sequence[Any] | None = None) -> dict[str, Any]:
        """Compute the box metrics (collective when ``distributed``).

        Args:
            img_ids: restrict the evaluation to these image ids (default: the whole dataset).

        Returns:
            On the main process ``{"bbox": {metric: percent}}``; ``{}`` on the other ranks or when nothing was
            processed.

        Raises:
            ValueError: if a prediction names an image that is not in the ground truth, or a class id outside
                ``[0, num_classes)``.
        """
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions

        if not predictions:
            logger.warning("[COCOEvaluator] Did not receive valid predictions.")
            return {}
        coco_results = [r for p in predictions for r in p["instances"]]
        self._check_predictions(coco_results)
        if self._output_dir:
            self._save(self._output_dir, predictions, coco_results)
        return {"bbox": self._derive_results(coco_results, img_ids)}

    def _check_predictions(self, coco_results: list[dict[str, Any]]) -> None:
        unknown = {r["image_id"] for r in coco_results} - set(self._coco_api.getImgIds())
        if unknown:
            raise ValueError(
                f"predictions for image_id {sorted(unknown, key=str)[:10]} which are not in the ground "
                f"truth of {self._dataset_name!r}"
            )
        k = self._num_classes
        for r in coco_results:
            if not 0 <= r["category_id"] < k:
                raise ValueError(
                    f"A prediction has class={r['category_id']}, but the dataset only has {k} classes and "
                    f"predicted class id should be in [0, {k - 1}]."
                )

    @staticmethod
    def _save(output_dir: str, predictions: list[dict[str, Any]], coco_results: list[dict[str, Any]]) -> None:
        os.makedirs(output_dir, exist_ok=True)
        torch.save(predictions, os.path.join(output_dir, "instances_predictions.pth"))
        path = os.path.join(output_dir, "coco_instances_results.json")
        logger.info(f"Saving results to {path}")
        with open(path, "w") as f:
            json.dump(coco_results, f)

    def _derive_results(self, coco_results: list[dict[str, Any]], img_ids: Sequence[Any] | None) -> dict[str, float]:
        if not coco_results:  # the COCO API cannot load empty results
            logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in BOX_METRICS}
        params = coco_params()
        precision, category_ids = self._accumulate(coco_results, img_ids, params)  # (iou, recall, class, area, dets)
        results: dict[str, float] = {}
        for metric, (iou, area) in _METRIC_SLICES.items():
            p = precision if iou is None else precision[np.isclose(params.iouThrs, iou)]
            results[metric] = _mean_precision(p[:, :, :, params.areaRngLbl.index(area), -1])
        logger.info("Evaluation results for bbox: \n" + _small_table(results))
        if not math.isfinite(sum(results.values())):
            logger.info("Some metrics cannot be computed and is shown as NaN.")
        if self._class_names is None or len(self._class_names) <= 1:
            return results
        per_class = {  # a class neither annotated nor detected is not on the torchmetrics class axis: NaN
            f"AP-{name}": _mean_precision(precision[:, :, category_ids.index(idx), 0, -1])
            if idx in category_ids
            else float("nan")
            for idx, name in enumerate(self._class_names)
        }
        logger.info("Per-category bbox AP: \n" + _small_table(per_class))
        results.update(per_class)
        return results

    def _accumulate(
        self, coco_results: list[dict[str, Any]], img_ids: Sequence[Any] | None, params: Any
    ) -> tuple[np.ndarray, list[int]]:
        """COCOeval's precision array and the category id of each index of its class axis, from the backend."""
        if self._backend == "torchmetrics":
            logger.info("Evaluating predictions with torchmetrics' MeanAveragePrecision (pycocotools inside)...")
            return torchmetrics_precision(
                self._coco_api.dataset, coco_results, self._max_dets, img_ids, params.iouThrs, params.recThrs
            )
        coco_eval = self._run_cocoeval(coco_results, img_ids)
        return coco_eval.eval["precision"], list(coco_eval.params.catIds)

    def _run_cocoeval(self, coco_results: list[dict[str, Any]], img_ids: Sequence[Any] | None) -> Any:
        from pycocotools.cocoeval import COCOeval

        logger.info("Evaluating predictions with official COCO API...")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            coco_dt = self._coco_api.loadRes(copy.deepcopy(coco_results))
            coco_eval = COCOeval(self._coco_api, coco_dt, "bbox")
            coco_eval.params.maxDets = list(self._max_dets)
            if img_ids is not None:
                coco_eval.params.imgIds = list(img_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
        logger.debug(out.getvalue())
        return coco_eval
