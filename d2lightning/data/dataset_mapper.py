"""detectron2 ``data/dataset_mapper.py``: :class:`DatasetMapper`, dataset dict -> model input dict."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from d2lightning.config.lookup import cfg_get
from d2lightning.data import detection_utils as utils
from d2lightning.data.transforms import RandomFlip, ResizeShortestEdge, apply_augmentations

__all__ = ["DatasetMapper", "build_augmentation"]


def build_augmentation(cfg: Any, is_train: bool) -> list[ResizeShortestEdge | RandomFlip]:
    """detectron2 ``build_augmentation``: ResizeShortestEdge from ``INPUT.*``, plus a flip when training.

    Training uses ``MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN`` / ``MIN_SIZE_TRAIN_SAMPLING`` and, when
    ``INPUT.RANDOM_FLIP == "horizontal"``, a :class:`RandomFlip`; testing uses ``MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST``. Missing keys take detectron2's defaults (800 / 1333 / "choice" / "horizontal").

    Raises:
        ValueError: for ``RANDOM_FLIP`` other than "horizontal" or "none".
    """
    if is_train:
        min_size = cfg_get(cfg, "INPUT.MIN_SIZE_TRAIN", default=(800,))
        max_size = cfg_get(cfg, "INPUT.MAX_SIZE_TRAIN", default=1333)
        style = cfg_get(cfg, "INPUT.MIN_SIZE_TRAIN_SAMPLING", default="choice")
    else:
        min_size = cfg_get(cfg, "INPUT.MIN_SIZE_TEST", default=800)
        max_size = cfg_get(cfg, "INPUT.MAX_SIZE_TEST", default=1333)
        style = "choice"
    sizes = [int(min_size)] if isinstance(min_size, int) else [int(s) for s in min_size]
    augs: list[ResizeShortestEdge | RandomFlip] = [ResizeShortestEdge(sizes, int(max_size), style)]
    flip = cfg_get(cfg, "INPUT.RANDOM_FLIP", default="horizontal")
    if flip not in ("horizontal", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP={flip!r} is not supported; use 'horizontal' or 'none'")
    if is_train and flip == "horizontal":
        augs.append(RandomFlip(horizontal=True, vertical=False))
    return augs


class DatasetMapper:
    """detectron2 ``DatasetMapper`` (boxes only): read, augment and tensorise one dataset dict.

    The returned dict is a deep copy of the input plus ``"image"``, a ``(C, H, W)`` uint8 tensor in
    ``image_format``, with the original ``"height"``/``"width"`` kept. In training, annotations become
    ``"instances"`` (``gt_boxes``: :class:`~d2lightning.structures.Boxes`, ``gt_classes``), with empty boxes
    removed; in inference ``"annotations"`` is dropped, as in detectron2.

    Args:
        cfg: a config to take ``INPUT.FORMAT`` and augmentations from (see :func:`build_augmentation`);
            may be None when both keyword arguments are given.
        is_train: training or inference mapping.
        augmentations: overrides the augmentations built from ``cfg``.
        image_format: overrides ``INPUT.FORMAT`` ("BGR" or "RGB").

    Raises:
        ValueError: when neither ``cfg`` nor the keyword arguments are given, or the format is unknown.
    """

    def __init__(
        self,
        cfg: Any = None,
        is_train: bool = True,
        *,
        augmentations: Sequence[ResizeShortestEdge | RandomFlip] | None = None,
        image_format: str | None = None,
    ) -> None:
        if cfg is None and (augmentations is None or image_format is None):
            raise ValueError("DatasetMapper needs a cfg, or both augmentations= and image_format=")
        self.is_train = is_train
        self.augmentations = list(augmentations) if augmentations is not None else build_augmentation(cfg, is_train)
        self.image_format = image_format if image_format is not None else cfg_get(cfg, "INPUT.FORMAT", default="BGR")
        if self.image_format not in ("BGR", "RGB"):
            raise ValueError(f"image_format={self.image_format!r} must be 'BGR' or 'RGB'")

    def __call__(self, dataset_dict: dict[str, Any]) -> dict[str, Any]:
        """Map one dataset dict (not modified) to the model's input dict."""
        d = copy.deepcopy(dataset_dict)
        image = utils.read_image(d["file_name"], format=self.image_format)
        utils.check_image_size(d, image)
        image, transforms = apply_augmentations(self.augmentations, image)
        shape = (int(image.shape[0]), int(image.shape[1]))
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            d.pop("annotations", None)
            return d
        if "annotations" in d:
            annos = [
                utils.transform_instance_annotations(a, transforms, shape)
                for a in d.pop("annotations")
                if a.get("iscrowd", 0) == 0
            ]
            d["instances"] = utils.filter_empty_instances(utils.annotations_to_instances(annos, shape))
        return d

    def __repr__(self) -> str:
        augs = self.augmentations
        return f"DatasetMapper(is_train={self.is_train}, augmentations={augs}, format={self.image_format})"
