"""Helpers for tests against a real detectron2: the skip marker, and runs under both libraries' trainers.

Nothing here imports detectron2 at module import: every test module can import this file without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from d2lightning._compat import DETECTRON2_MISSING_REASON, detectron2_available
from d2lightning.engine import D2LightningModule, SimpleTrainer
from d2lightning.engine.adapter import as_callback
from tests.helpers.training import infinite_loader, lightning_trainer, recorder_class

#: ``pytestmark = DETECTRON2_MARKS`` marks every test of a module ``requires_detectron2`` and skips it with
#: "detectron2 is not installed" when detectron2 is absent.
DETECTRON2_MARKS = [
    pytest.mark.requires_detectron2,
    pytest.mark.skipif(not detectron2_available(), reason=DETECTRON2_MISSING_REASON),
]

#: The d2lightning entry points: ``SimpleTrainer.train`` and ``lightning.pytorch.Trainer.fit(D2LightningModule)``.
MODES = ["simple", "lightning"]

Calls = list[tuple[str, str, int, int]]


def requires_detectron2(test: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the :data:`DETECTRON2_MARKS` of one test (in a module whose other tests run without it)."""
    for mark in reversed(DETECTRON2_MARKS):
        test = mark(test)
    return test


def d2_recorder(name: str, calls: Calls, fail_in: tuple[str, int] | None = None) -> Any:
    """The recording hook (:func:`tests.helpers.training.recorder_class`) on detectron2's ``HookBase``, so both
    libraries' trainers accept it; it records ``(name, method, trainer.iter, storage.iter)``."""
    from detectron2.engine import HookBase

    return recorder_class(HookBase)(name, calls, fail_in, storage_iter=True)


def train_d2lightning(
    mode: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    hooks: list[Any],
    start: int,
    stop: int,
    loader: Any = None,
    setup: Callable[[Any], None] | None = None,
) -> Any:
    """Train with d2lightning (``mode`` in :data:`MODES`); ``setup(trainer)`` runs before training.

    Returns the detectron2-style trainer the hooks saw. In "lightning" mode ``start`` must be 0.
    """
    loader = infinite_loader() if loader is None else loader
    if mode == "simple":
        trainer = SimpleTrainer(model, loader, optimizer)
        trainer.register_hooks(hooks)
        if setup is not None:
            setup(trainer)
        trainer.train(start, stop)
        return trainer
    if start != 0:
        raise ValueError(f"a plain Lightning fit starts at iteration 0, got start={start}")
    module = D2LightningModule(model, loader, optimizer)
    if setup is not None:
        setup(module.d2_trainer)
    lightning_trainer(stop, [as_callback(h) for h in hooks]).fit(module)
    return module.d2_trainer


def train_detectron2(
    model: nn.Module, optimizer: torch.optim.Optimizer, hooks: list[Any], start: int, stop: int, loader: Any = None
) -> Any:
    """Train with detectron2's own ``SimpleTrainer``; returns it."""
    from detectron2.engine import SimpleTrainer as D2SimpleTrainer

    trainer = D2SimpleTrainer(model, infinite_loader() if loader is None else loader, optimizer)
    trainer.register_hooks(hooks)
    trainer.train(start, stop)
    return trainer


# ---------------------------------------------------------------- the shrunk GeneralizedRCNN
RCNN_OVERRIDES = [
    "MODEL.DEVICE", "cpu",
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.PIXEL_STD", "[57.375,57.120,58.395]",
    "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "256",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "256",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "64",
]  # fmt: skip


def small_rcnn(seed: int = 0, overrides: list[str] | None = None) -> nn.Module:
    """detectron2's Faster R-CNN R50-FPN config shrunk to ResNet-18 and 2 classes (about 0.3 s/iteration on CPU).

    ``overrides`` (``merge_from_list`` pairs) are applied after the shrinking ones.
    """
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(RCNN_OVERRIDES + list(overrides or []))
    torch.manual_seed(seed)
    return build_model(cfg)


def rcnn_loader(seed: int = 1, batch_size: int = 2) -> Iterator[list[dict[str, Any]]]:
    """An endless stream of batches of random 128x128 images with one box each, in detectron2's input format."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    while True:
        batch = []
        for i in range(batch_size):
            instances = Instances((128, 128))
            instances.gt_boxes = Boxes(torch.tensor([[10.0 + 5 * i, 20.0, 90.0, 100.0 - 5 * i]]))
            instances.gt_classes = torch.tensor([i % 2])
            image = torch.randint(0, 256, (3, 128, 128), generator=g).float()
            batch.append({"image": image, "height": 128, "width": 128, "instances": instances})
        yield batch


# ---------------------------------------------------------------- DefaultTrainer runs on a synthetic dataset
RCNN_ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
SYNTH_CLASSES = ["square", "bar"]


def register_synthetic_detection(name: str, root: Any, num_images: int = 4, seed: int = 0) -> None:
    """Register ``name`` in detectron2's ``DatasetCatalog``/``MetadataCatalog`` (``evaluator_type="coco"``).

    Writes ``num_images`` 64x64 PNG files into ``root``: noise with a bright square (class 0) and a dark bar
    (class 1), boxes in ``XYXY_ABS``. An existing registration of ``name`` is replaced.
    """
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode
    from PIL import Image

    rng = np.random.default_rng(seed)
    dicts = []
    for i in range(num_images):
        image = rng.integers(60, 120, size=(64, 64, 3), dtype=np.uint8)
        x, y = 4 + 3 * i, 6 + 2 * i
        image[y : y + 24, x : x + 24] = 230
        image[40:56, 8 + 4 * i : 44 + 4 * i] = 10
        path = f"{root}/{name}_{i}.png"
        Image.fromarray(image).save(path)
        boxes = [([x, y, x + 24, y + 24], 0), ([8 + 4 * i, 40, 44 + 4 * i, 56], 1)]
        annotations = [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": 0} for b, c in boxes]
        dicts.append({"file_name": path, "image_id": i, "height": 64, "width": 64, "annotations": annotations})
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(thing_classes=list(SYNTH_CLASSES), evaluator_type="coco")


def rcnn_train_opts(output_dir: Any, train: str, test: str | None, max_iter: int = 4, period: int = 2) -> list[str]:
    """``merge_from_list`` options: :data:`RCNN_OVERRIDES`, 64-pixel inputs, 2 images per batch, ``SEED`` 3."""
    return [
        *RCNN_OVERRIDES,
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{test}',)" if test else "()",
        "INPUT.MIN_SIZE_TRAIN", "(64,)",
        "INPUT.MAX_SIZE_TRAIN", "128",
        "INPUT.MIN_SIZE_TEST", "64",
        "INPUT.MAX_SIZE_TEST", "128",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.01",
        "SOLVER.STEPS", "(3,)",
        "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(period),
        "TEST.EVAL_PERIOD", "0",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "SEED", "3",
        "OUTPUT_DIR", str(output_dir),
    ]  # fmt: skip


def rcnn_cfg(output_dir: Any, train: str, test: str | None, max_iter: int = 4, period: int = 2) -> Any:
    """detectron2's ``CfgNode`` of the model-zoo Faster R-CNN with :func:`rcnn_train_opts`."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(RCNN_ZOO_CONFIG))
    cfg.merge_from_list(rcnn_train_opts(output_dir, train, test, max_iter, period))
    return cfg


@contextlib.contextmanager
def synthetic_datasets(root: Any, **datasets: tuple[int, int]) -> Iterator[None]:
    """Register ``name=(num_images, seed)`` datasets (:func:`register_synthetic_detection`); remove them on exit."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, (num_images, seed) in datasets.items():
        register_synthetic_detection(name, root, num_images, seed)
    try:
        yield
    finally:
        for name in datasets:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


TRAIN_NET_MISSING = (
    "detectron2's tools/train_net.py not found: set DETECTRON2_SOURCE to a detectron2 source checkout "
    "(or DETECTRON2_TRAIN_NET to the script itself)"
)
"""The skip reason of the tests that run detectron2's own ``tools/train_net.py``."""


def train_net_path() -> Path | None:
    """detectron2's ``tools/train_net.py``: ``$DETECTRON2_TRAIN_NET``, else ``$DETECTRON2_SOURCE/tools/``, else
    next to the imported detectron2 when it is built in place (``pip install -e``); None when none exists."""
    candidates = [os.environ.get("DETECTRON2_TRAIN_NET", "")]
    if os.environ.get("DETECTRON2_SOURCE"):
        candidates.append(str(Path(os.environ["DETECTRON2_SOURCE"]) / "tools" / "train_net.py"))
    if detectron2_available():
        import detectron2

        candidates.append(str(Path(detectron2.__file__).resolve().parents[1] / "tools" / "train_net.py"))
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def run_train_net(argv: list[str], d2lightning_engine: bool) -> None:
    """Execute detectron2's ``tools/train_net.py`` as ``__main__`` with ``sys.argv = argv``.

    With ``d2lightning_engine``, its ``from detectron2.engine import`` line becomes ``from d2lightning.engine
    import`` (in memory), the only change a user makes.
    """
    path = train_net_path()
    if path is None:
        raise FileNotFoundError(TRAIN_NET_MISSING)
    source = path.read_text()
    if d2lightning_engine:
        if source.count("from detectron2.engine import") != 1:
            raise ValueError(f"{path} does not import detectron2.engine exactly once")
        source = source.replace("from detectron2.engine import", "from d2lightning.engine import")
    saved = sys.argv
    sys.argv = ["train_net.py", *argv]
    try:
        exec(compile(source, str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    finally:
        sys.argv = saved


TIMING_KEYS = frozenset({"time", "data_time", "rank_data_time", "eta_seconds"})


def metrics_lines(path: Any) -> list[dict[str, Any]]:
    """The lines of a ``metrics.json`` without measured times, NaN written as the string "NaN" (comparable)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [
        {k: "NaN" if isinstance(v, float) and math.isnan(v) else v for k, v in d.items() if k not in TIMING_KEYS}
        for d in lines
    ]
