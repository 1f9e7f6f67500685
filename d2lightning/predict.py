"""``d2lightning predict``: run ``DefaultPredictor`` on one image file and draw the boxes it finds."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import numpy as np

__all__ = ["draw_instances", "load_bgr_image", "predict_image"]

logger = logging.getLogger(__name__)


def load_bgr_image(path: str) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 BGR array.

    Raises:
        FileNotFoundError: naming the path when it does not exist.
        ValueError: naming the path when it is not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"input image {path!r} does not exist")
    try:
        with Image.open(path) as img:
            rgb = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"input {path!r} is not an image that can be read: {e}") from e
    return np.ascontiguousarray(rgb[:, :, ::-1])


def draw_instances(bgr: np.ndarray, instances: Any, class_names: list[str] | None, threshold: float) -> Any:
    """A PIL image of ``bgr`` with every instance scoring at least ``threshold`` drawn as a labelled box."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1]))
    draw = ImageDraw.Draw(image)
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    boxes = instances.pred_boxes.tensor.detach().cpu().tolist()
    scores = instances.scores.detach().cpu().tolist()
    classes = instances.pred_classes.detach().cpu().tolist()
    for box, score, cls in zip(boxes, scores, classes, strict=True):
        if score < threshold:
            continue
        color = palette[cls % len(palette)]
        name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
        draw.rectangle(box, outline=color, width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{name} {score:.2f}", fill=color)
    return image


def predict_image(args: argparse.Namespace) -> None:
    """Load the config (``MODEL.WEIGHTS``, else ``OUTPUT_DIR``'s last checkpoint), predict, write the drawing."""
    from d2lightning.config import apply_overrides, get_cfg
    from d2lightning.engine import DefaultPredictor
    from d2lightning.model_zoo import resolve_config_file

    cfg = get_cfg()
    cfg.merge_from_file(resolve_config_file(args.config_file))
    apply_overrides(cfg, args.opts)
    image = load_bgr_image(args.input)  # a bad --input is reported before a missing checkpoint
    if not cfg.MODEL.WEIGHTS:
        last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
        if not os.path.isfile(last):
            raise ValueError(f"MODEL.WEIGHTS is empty and {cfg.OUTPUT_DIR!r} has no checkpoint: train first")
        with open(last) as f:
            cfg.MODEL.WEIGHTS = os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    instances = predictor(image)["instances"]
    names = getattr(getattr(predictor, "metadata", None), "thing_classes", None)
    draw_instances(image, instances, names, args.confidence_threshold).save(args.output)
    kept = int((instances.scores >= args.confidence_threshold).sum())
    print(
        f"{kept} instance(s) above {args.confidence_threshold} written to {args.output} (weights {cfg.MODEL.WEIGHTS})"
    )
