"""detectron2 ``data/transforms``: deterministic transforms and the augmentations that create them.

An *augmentation* (:class:`ResizeShortestEdge`, :class:`RandomFlip`) looks at an image and returns a
*transform* (:class:`ResizeTransform`, :class:`HFlipTransform`, :class:`NoOpTransform`) that can then be
applied identically to the image (``apply_image``) and to its boxes (``apply_box``). Images are ``np.ndarray``
of shape ``(H, W, C)`` (or ``(H, W)``), uint8 or float; resizing is bilinear with antialiasing, in torch
(detectron2 uses PIL for uint8 images, so pixel values may differ by rounding).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "HFlipTransform",
    "NoOpTransform",
    "RandomFlip",
    "ResizeShortestEdge",
    "ResizeTransform",
    "Transform",
    "TransformList",
    "apply_augmentations",
]


class Transform:
    """detectron2 ``Transform``: a deterministic operation on an image and its coordinates."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """Transform an ``(H, W[, C])`` image."""
        raise NotImplementedError

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Transform an Nx2 array of ``(x, y)`` points."""
        raise NotImplementedError

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        """Transform Nx4 XYXY boxes: the axis-aligned box around the four transformed corners."""
        box = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        corners = box[:, [0, 1, 2, 1, 0, 3, 2, 3]].reshape(-1, 2)
        pts = self.apply_coords(corners).reshape(-1, 4, 2)
        return np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)


class NoOpTransform(Transform):
    """detectron2 ``NoOpTransform``: returns its inputs unchanged."""

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords


class ResizeTransform(Transform):
    """detectron2 ``ResizeTransform``: resize from ``(h, w)`` to ``(new_h, new_w)``.

    Raises:
        ValueError: when a size is not positive, or (in ``apply_image``) the image is not ``h`` x ``w``.
    """

    def __init__(self, h: int, w: int, new_h: int, new_w: int) -> None:
        if min(h, w, new_h, new_w) <= 0:
            raise ValueError(f"ResizeTransform sizes must be positive, got {(h, w, new_h, new_w)}")
        self.h, self.w, self.new_h, self.new_w = h, w, new_h, new_w

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        if img.shape[:2] != (self.h, self.w):
            raise ValueError(f"image of shape {img.shape} does not match the transform's {(self.h, self.w)}")
        if (self.h, self.w) == (self.new_h, self.new_w):
            return img
        t = torch.from_numpy(np.ascontiguousarray(img)).float()
        t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
        out = F.interpolate(t, size=(self.new_h, self.new_w), mode="bilinear", align_corners=False, antialias=True)
        res = out[0].permute(1, 2, 0).numpy() if img.ndim == 3 else out[0, 0].numpy()
        if img.dtype == np.uint8:
            return np.clip(np.rint(res), 0, 255).astype(np.uint8)
        return res.astype(img.dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float32, copy=True)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords


class HFlipTransform(Transform):
    """detectron2 ``HFlipTransform``: mirror an image of the given ``width`` left-right."""

    def __init__(self, width: int) -> None:
        self.width = width

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.array(coords, dtype=np.float32, copy=True)
        coords[:, 0] = self.width - coords[:, 0]
        return coords


class TransformList(Transform):
    """detectron2 ``TransformList``: several transforms applied in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            img = t.apply_image(img)
        return img

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        for t in self.transforms:
            coords = t.apply_coords(coords)
        return coords

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box, dtype=np.float32).reshape(-1, 4)
        for t in self.transforms:
            box = t.apply_box(box)
        return box


class ResizeShortestEdge:
    """detectron2 ``ResizeShortestEdge``: scale so the short edge is a sampled length, the long edge capped.

    Args:
        short_edge_length: an int, or with ``sample_style="range"`` a ``(min, max)`` interval sampled
            uniformly (inclusive), or with ``"choice"`` a list of lengths to pick from. A sampled 0 means
            no resize.
        max_size: the longest edge never exceeds this after resizing.
        sample_style: ``"range"`` or ``"choice"``.

    Raises:
        ValueError: for an unknown ``sample_style`` or a "range" that is not two values.

    Example::

        >>> t = ResizeShortestEdge(64, 100).get_transform(np.zeros((48, 96, 3), np.uint8))
        >>> t.apply_image(np.zeros((48, 96, 3), np.uint8)).shape
        (50, 100, 3)
    """

    def __init__(
        self, short_edge_length: int | Sequence[int], max_size: int = sys.maxsize, sample_style: str = "range"
    ) -> None:
        if sample_style not in ("range", "choice"):
            raise ValueError(f"sample_style={sample_style!r} must be 'range' or 'choice'")
        lengths = [short_edge_length] * 2 if isinstance(short_edge_length, int) else list(short_edge_length)
        if sample_style == "range" and len(lengths) != 2:
            raise ValueError(f"short_edge_length={short_edge_length!r} must be two values with 'range' sampling")
        if not lengths or any(int(v) < 0 for v in lengths):
            raise ValueError(f"short_edge_length={short_edge_length!r} must be non-negative ints")
        self.short_edge_length = [int(v) for v in lengths]
        self.max_size = max_size
        self.is_range = sample_style == "range"

    def get_transform(self, image: np.ndarray) -> Transform:
        """Sample a short-edge length (with ``np.random``) and return the resize for ``image``."""
        h, w = image.shape[:2]
        if self.is_range:
            size = int(np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1))
        else:
            size = int(np.random.choice(self.short_edge_length))
        if size == 0:
            return NoOpTransform()
        new_h, new_w = self.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, new_h, new_w)

    @staticmethod
    def get_output_shape(old_h: int, old_w: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        """``(new_h, new_w)``: short edge scaled to ``short_edge_length``, then capped, rounded half up."""
        scale = short_edge_length / min(old_h, old_w)
        new_h, new_w = old_h * scale, old_w * scale
        if max(new_h, new_w) > max_size:
            cap = max_size / max(new_h, new_w)
            new_h, new_w = new_h * cap, new_w * cap
        return int(new_h + 0.5), int(new_w + 0.5)


class RandomFlip:
    """detectron2 ``RandomFlip`` (horizontal only): flip with probability ``prob``.

    Raises:
        ValueError: when ``prob`` is outside ``[0, 1]`` or ``vertical`` is requested.
    """

    def __init__(self, prob: float = 0.5, *, horizontal: bool = True, vertical: bool = False) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob} must be in [0, 1]")
        if vertical or not horizontal:
            raise ValueError("only horizontal=True, vertical=False is supported")
        self.prob = prob

    def get_transform(self, image: np.ndarray) -> Transform:
        """An :class:`HFlipTransform` with probability ``prob`` (drawn with ``np.random``), else a no-op."""
        if np.random.rand() < self.prob:
            return HFlipTransform(image.shape[1])
        return NoOpTransform()


def apply_augmentations(
    augmentations: Sequence[ResizeShortestEdge | RandomFlip], image: np.ndarray
) -> tuple[np.ndarray, TransformList]:
    """detectron2 ``apply_augmentations``: apply each in turn; returns the image and the transforms."""
    transforms = []
    for aug in augmentations:
        t = aug.get_transform(image)
        image = t.apply_image(image)
        transforms.append(t)
    return image, TransformList(transforms)
