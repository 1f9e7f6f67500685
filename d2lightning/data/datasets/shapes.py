"""The built-in synthetic "shapes" detection dataset, generated on the fly (no detectron2 counterpart).

Each image shows a few coloured circles, squares and triangles on a smooth, noisy background. Everything
about image ``index`` of a split — object classes, sizes, positions, colours and the background — is a
deterministic function of ``(seed, index)``, so nothing is stored on disk. A dataset dict names its image
with a ``shapes://`` URL that encodes the whole recipe; :func:`d2lightning.data.detection_utils.read_image`
renders it, in any process, without the catalog.

Boxes are the exact XYXY bounds of the continuous shapes; a pixel is painted when its centre lies inside
the shape, so the painted pixels always lie within the box and touch all four of its sides to within a pixel.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from d2lightning.data.catalog import DatasetCatalog, MetadataCatalog
from d2lightning.structures import BoxMode

__all__ = ["SHAPES_CLASSES", "ShapesSpec", "load_shapes_dicts", "register_shapes", "render_shapes_image"]

SHAPES_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
_MAX_OVERLAP = 0.15  # max intersection / smaller area between two objects of one image
_URL = re.compile(
    r"^shapes://(?P<seed>\d+)/(?P<index>\d+)\?size=(?P<h>\d+)x(?P<w>\d+)"
    r"&objects=(?P<n0>\d+)-(?P<n1>\d+)&scale=(?P<s0>[\d.]+)-(?P<s1>[\d.]+)$"
)


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    """Recipe of one split of the shapes dataset.

    Args:
        seed: split seed; images of different seeds are unrelated.
        height: image height in pixels.
        width: image width in pixels.
        min_objects: fewest objects per image (>= 1).
        max_objects: most objects per image (fewer when they cannot be placed without overlap).
        min_size: smallest object side in pixels (sizes are log-uniform).
        max_size: largest object side in pixels (<= min(height, width)).
    """

    seed: int
    height: int = 96
    width: int = 96
    min_objects: int = 1
    max_objects: int = 4
    min_size: float = 10.0
    max_size: float = 40.0

    def __post_init__(self) -> None:
        if self.seed < 0 or self.height < 8 or self.width < 8:
            raise ValueError(f"ShapesSpec needs seed >= 0 and sizes >= 8, got {self}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"ShapesSpec needs 1 <= min_objects <= max_objects, got {self}")
        if not 2 <= self.min_size <= self.max_size <= min(self.height, self.width):
            raise ValueError(f"ShapesSpec needs 2 <= min_size <= max_size <= min(height, width), got {self}")

    def url(self, index: int) -> str:
        """The ``file_name`` of image ``index``: a ``shapes://`` URL holding the whole recipe."""
        return (
            f"shapes://{self.seed}/{index}?size={self.height}x{self.width}"
            f"&objects={self.min_objects}-{self.max_objects}&scale={self.min_size:g}-{self.max_size:g}"
        )

    @staticmethod
    def parse_url(url: str) -> tuple[ShapesSpec, int]:
        """Inverse of :meth:`url`: ``(spec, index)``.

        Raises:
            ValueError: when ``url`` is not a shapes URL.
        """
        m = _URL.match(url)
        if m is None:
            raise ValueError(f"{url!r} is not a shapes:// URL like {ShapesSpec(0).url(0)!r}")
        g = m.groupdict()
        spec = ShapesSpec(
            int(g["seed"]),
            int(g["h"]),
            int(g["w"]),
            int(g["n0"]),
            int(g["n1"]),
            float(g["s0"]),
            float(g["s1"]),
        )
        return spec, int(g["index"])


def _sample_objects(spec: ShapesSpec, index: int) -> list[tuple[int, np.ndarray, tuple[int, int, int]]]:
    """``[(class, xyxy box, rgb colour)]`` of image ``index``; depends only on ``(spec, index)``."""
    rng = np.random.default_rng([spec.seed, index, 0])
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    log_lo, log_hi = math.log(spec.min_size), math.log(spec.max_size)
    objects: list[tuple[int, np.ndarray, tuple[int, int, int]]] = []
    for _ in range(10 * n):
        if len(objects) == n:
            break
        cls, size = int(rng.integers(len(SHAPES_CLASSES))), math.exp(rng.uniform(log_lo, log_hi))
        x0, y0 = rng.uniform(0, spec.width - size), rng.uniform(0, spec.height - size)
        box = np.array([x0, y0, x0 + size, y0 + size])
        hue, sat, val = rng.uniform(), rng.uniform(0.5, 1.0), rng.uniform(0.75, 1.0)
        if any(_overlap(box, b) > _MAX_OVERLAP for _, b, _ in objects):
            continue
        rgb = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, sat, val))
        objects.append((cls, box, (rgb[0], rgb[1], rgb[2])))
    return objects


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / smaller)


def _shape_mask(cls: int, box: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Which pixel centres ``(xs, ys)`` (broadcastable grids) lie inside the shape."""
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if SHAPES_CLASSES[cls] == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    if SHAPES_CLASSES[cls] == "square":
        return inside
    # triangle: apex at the top centre, base along the bottom edge
    return inside & (np.abs(xs - cx) <= (ys - y0) / (y1 - y0) * half)


def render_shapes_image(spec: ShapesSpec, index: int) -> np.ndarray:
    """Image ``index`` of ``spec`` as an RGB uint8 array of shape ``(height, width, 3)``."""
    rng = np.random.default_rng([spec.seed, index, 1])
    h, w = spec.height, spec.width
    grid = torch.from_numpy(rng.uniform(20, 150, size=(1, 3, 4, 4)).astype(np.float32))
    bg = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    img = bg.copy()
    ys, xs = np.arange(h)[:, None] + 0.5, np.arange(w)[None, :] + 0.5
    for cls, box, rgb in _sample_objects(spec, index):
        r0, r1 = max(int(box[1]) - 1, 0), min(math.ceil(box[3]) + 1, h)
        c0, c1 = max(int(box[0]) - 1, 0), min(math.ceil(box[2]) + 1, w)
        mask = _shape_mask(cls, box, xs[:, c0:c1], ys[r0:r1, :])
        img[r0:r1, c0:c1][mask] = rgb
    img += rng.normal(0.0, 8.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def load_shapes_dicts(spec: ShapesSpec, num_images: int) -> list[dict]:
    """The detectron2 dataset dicts of images ``0 .. num_images - 1`` of ``spec``.

    Each dict has ``file_name`` (a ``shapes://`` URL), ``image_id`` (the index), ``height``, ``width`` and
    ``annotations``: a list of ``{"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id",
    "iscrowd": 0}``.
    """
    dicts = []
    for i in range(num_images):
        anns = [
            {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls, "iscrowd": 0}
            for cls, box, _ in _sample_objects(spec, i)
        ]
        dicts.append(
            {
                "file_name": spec.url(i),
                "image_id": i,
                "height": spec.height,
                "width": spec.width,
                "annotations": anns,
            }
        )
    return dicts


def register_shapes(name: str, spec: ShapesSpec, num_images: int) -> None:
    """Register ``num_images`` images of ``spec`` as dataset ``name``, with its metadata.

    Metadata: ``thing_classes`` (circle, square, triangle), ``thing_colors``, ``evaluator_type="coco"``.

    Raises:
        ValueError: when ``num_images`` is not positive or ``name`` is taken.
    """
    if num_images <= 0:
        raise ValueError(f"num_images={num_images} must be positive")
    DatasetCatalog.register(name, lambda: load_shapes_dicts(spec, num_images))
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        thing_colors=[(220, 20, 60), (0, 130, 200), (60, 180, 75)],
        evaluator_type="coco",
    )
