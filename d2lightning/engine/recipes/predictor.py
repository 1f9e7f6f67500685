"""detectron2's ``DefaultPredictor``: one image in (BGR, HWC), the model's prediction for it out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from d2lightning.checkpoint import DetectionCheckpointer

__all__ = ["DefaultPredictor"]


class DefaultPredictor:
    """Build the model of ``cfg``, load ``MODEL.WEIGHTS``, and predict one image at a time.

    The image is resized with ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST)``, converted to
    ``INPUT.FORMAT`` and run in eval mode without gradients; detectron2 models return the instances in the
    original image's coordinates (they receive its ``height`` and ``width``).

    Args:
        cfg: a config (cloned, not modified).

    Raises:
        ValueError: when ``INPUT.FORMAT`` is neither "RGB" nor "BGR".

    Example::

        predictor = DefaultPredictor(cfg)
        outputs = predictor(cv2.imread("input.jpg"))    # {"instances": Instances(...)}
    """

    def __init__(self, cfg: Any) -> None:
        from d2lightning.data import MetadataCatalog
        from d2lightning.data.transforms import ResizeShortestEdge
        from d2lightning.modeling import build_model

        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"DefaultPredictor supports INPUT.FORMAT 'RGB' or 'BGR', got {self.input_format!r}")
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        DetectionCheckpointer(self.model).load(cfg.MODEL.WEIGHTS)
        self.aug = ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, original_image: np.ndarray) -> dict[str, Any]:
        """Predict one image.

        Args:
            original_image: an ``(H, W, 3)`` uint8 array in **BGR** order (as ``cv2.imread`` gives).

        Returns:
            The model's output for the image, e.g. ``{"instances": Instances}``.

        Raises:
            TypeError: when the image is not a numpy array (a torch tensor, a list, a file name...).
            ValueError: when the array's shape is not ``(H, W, 3)`` with ``H, W > 0``.
        """
        expected = "DefaultPredictor expects an (H, W, 3) BGR numpy image (e.g. from cv2.imread)"
        if not isinstance(original_image, np.ndarray):
            shape = getattr(original_image, "shape", None)
            of_shape = f" of shape {tuple(shape)}" if shape is not None else ""
            raise TypeError(f"{expected}, got a {type(original_image).__qualname__}{of_shape}")
        shape = original_image.shape
        if len(shape) != 3 or shape[2] != 3 or shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{expected}, got an array of shape {shape}")
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = self.aug.get_transform(original_image).apply_image(original_image)
            tensor = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
            return self.model([{"image": tensor, "height": height, "width": width}])[0]
