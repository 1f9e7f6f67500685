"""Shared pieces of the DefaultTrainer / DefaultPredictor / CLI tests: a tiny demo config and its datasets.

The tiny config is the shipped demo (built-in ``shapes_detector``) shrunk to run in about a second: 32x32
shapes images, a 4-channel detector, batches of 2 and a 4-image validation split.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from d2lightning.config import get_cfg
from d2lightning.data import DatasetCatalog
from d2lightning.data.datasets import ShapesSpec, register_shapes
from d2lightning.modeling import META_ARCH_REGISTRY, detector_postprocess
from d2lightning.structures import Boxes, Instances
from tests.helpers import DEMO_CONFIG

TINY_SPEC = ShapesSpec(seed=5, height=32, width=32, min_objects=1, max_objects=2, min_size=8.0, max_size=16.0)
TINY_TRAIN, TINY_VAL, TINY_VAL2 = "tiny_shapes_train", "tiny_shapes_val", "tiny_shapes_val2"

TINY_OPTS = [
    "MODEL.SHAPES_DETECTOR.BACKBONE_WIDTHS", "[4, 4, 8, 8]",
    "MODEL.SHAPES_DETECTOR.HEAD_WIDTH", "4",
    "INPUT.MIN_SIZE_TRAIN", "(32,)",
    "INPUT.MAX_SIZE_TRAIN", "32",
    "INPUT.MIN_SIZE_TEST", "32",
    "INPUT.MAX_SIZE_TEST", "32",
    "DATASETS.TRAIN", f"('{TINY_TRAIN}',)",
    "DATASETS.TEST", f"('{TINY_VAL}',)",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "6",
    "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.CHECKPOINT_PERIOD", "3",
    "TEST.EVAL_PERIOD", "3",
    "TEST.PRECISE_BN.ENABLED", "False",
    "TEST.PRECISE_BN.NUM_ITER", "2",
    "LIGHTNING.PROGRESS_BAR", "False",
]  # fmt: skip
"""Overrides turning the demo config into the tiny one (``OUTPUT_DIR`` still to be set)."""


DEMO_VAL_SUBSET = "shapes_val_first8"
"""The first 8 images of the demo's ``shapes_val`` split."""


def register_tiny_datasets() -> None:
    """Register the tiny train split (16 images), two validation splits (4 and 2 images) and
    :data:`DEMO_VAL_SUBSET`, once."""
    for name, spec, n in (
        (TINY_TRAIN, TINY_SPEC, 16),
        (TINY_VAL, ShapesSpec(**{**TINY_SPEC.__dict__, "seed": 6}), 4),
        (TINY_VAL2, ShapesSpec(**{**TINY_SPEC.__dict__, "seed": 7}), 2),
    ):
        if name not in DatasetCatalog:
            register_shapes(name, spec, n)
    if DEMO_VAL_SUBSET not in DatasetCatalog:
        from d2lightning.data.datasets import BUILTIN_SHAPES

        register_shapes(DEMO_VAL_SUBSET, BUILTIN_SHAPES["shapes_val"][0], 8)


def tiny_cfg(output_dir: Path | str, *opts: str) -> Any:
    """The demo config shrunk by :data:`TINY_OPTS`, writing to ``output_dir``, then ``opts`` applied."""
    register_tiny_datasets()
    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO_CONFIG))
    cfg.merge_from_list([*TINY_OPTS, "OUTPUT_DIR", str(output_dir), *opts])
    return cfg


def write_tiny_config(path: Path, *extra_lines: str) -> Path:
    """A config file at ``path``: the demo as ``_BASE_`` plus the tiny overrides, then ``extra_lines`` of YAML."""
    register_tiny_datasets()
    tree: dict[str, Any] = {}
    for key, value in zip(TINY_OPTS[::2], TINY_OPTS[1::2], strict=True):
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value

    def emit(node: dict[str, Any], depth: int) -> list[str]:
        lines = []
        for k, v in node.items():
            lines += (
                [f"{'  ' * depth}{k}:", *emit(v, depth + 1)] if isinstance(v, dict) else [f"{'  ' * depth}{k}: {v}"]
            )
        return lines

    path.write_text("\n".join([f'_BASE_: "{DEMO_CONFIG}"', *emit(tree, 0), *extra_lines]) + "\n")
    return path


# ---- a test meta-architecture with a known answer ------------------------------------------------------------


class RedSquareDetector(nn.Module):
    """Finds the pure-red pixels of its input and reports their bounding box, like a detectron2 model would.

    The box is computed on the (resized) input tensor, read in ``INPUT.FORMAT`` channel order, then rescaled to
    the ``height``/``width`` of the input dict with :func:`detector_postprocess`. The score is the weight
    ``scale`` times 0.9 (so loaded weights show in the output). The last inputs are kept in ``last_inputs``.
    """

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.red = 2 if cfg.INPUT.FORMAT == "BGR" else 0
        self.last_inputs: list[dict] = []

    def forward(self, batched_inputs: list[dict]) -> Any:
        self.last_inputs = batched_inputs
        if self.training:
            return {"loss": self.scale.sum() * 0.0}
        outputs = []
        for x in batched_inputs:
            image = x["image"]
            others = [c for c in range(3) if c != self.red]
            mask = (image[self.red] > 200) & (image[others[0]] < 60) & (image[others[1]] < 60)
            ys, xs = torch.nonzero(mask, as_tuple=True)
            inst = Instances(tuple(image.shape[1:]))
            if len(xs):
                box = [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]
                inst.pred_boxes = Boxes(torch.tensor([box], dtype=torch.float32))
                inst.scores = (self.scale.detach() * 0.9).reshape(1)
                inst.pred_classes = torch.tensor([1])
            else:
                inst.pred_boxes = Boxes(torch.zeros(0, 4))
                inst.scores = torch.zeros(0)
                inst.pred_classes = torch.zeros(0, dtype=torch.long)
            h, w = x.get("height", image.shape[1]), x.get("width", image.shape[2])
            outputs.append({"instances": detector_postprocess(inst, h, w)})
        return outputs


if "RedSquareDetector" not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(RedSquareDetector)


def red_square_image(height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """A grey BGR uint8 image with a pure red square filling ``box`` (x0, y0, x1, y1, exclusive ends)."""
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (0, 0, 255)  # BGR red
    return image


def red_square_cfg(output_dir: Path | str, *opts: str) -> Any:
    """A config for :class:`RedSquareDetector` on CPU, testing at 64 pixels (shortest edge)."""
    register_tiny_datasets()
    cfg = get_cfg()
    cfg.merge_from_list(
        [
            "MODEL.META_ARCHITECTURE", "RedSquareDetector",
            "MODEL.DEVICE", "cpu",
            "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.MAX_SIZE_TEST", "100",
            "DATASETS.TEST", f"('{TINY_VAL}',)",
            "OUTPUT_DIR", str(output_dir),
            *opts,
        ]
    )  # fmt: skip
    return cfg
