"""Helpers for tests against a real detectron2: the skip marker, and runs under both libraries' trainers.

Nothing here imports detectron2 at module import: every test module can import this file without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

import pytest
import torch
from torch import nn

from d2lightning._compat import DETECTRON2_MISSING_REASON, detectron2_available
from d2lightning.engine import D2LightningModule, SimpleTrainer
from d2lightning.engine.adapter import as_callback
from tests.helpers import infinite_loader, lightning_trainer

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


@lru_cache(maxsize=1)
def _recorder_class() -> type:
    from detectron2.engine import HookBase

    class D2Recorder(HookBase):
        """A detectron2 hook appending ``(name, method, trainer.iter, storage.iter)`` to ``calls``.

        With ``fail_in=(method, iter)`` it raises ``RuntimeError("hook failed")`` after recording that call.
        """

        def __init__(self, name: str, calls: Calls, fail_in: tuple[str, int] | None = None) -> None:
            self.name = name
            self.calls = calls
            self.fail_in = fail_in

        def _record(self, method: str) -> None:
            self.calls.append((self.name, method, self.trainer.iter, self.trainer.storage.iter))
            if self.fail_in == (method, self.trainer.iter):
                raise RuntimeError("hook failed")

        def before_train(self) -> None:
            self._record("before_train")

        def before_step(self) -> None:
            self._record("before_step")

        def after_backward(self) -> None:
            self._record("after_backward")

        def after_step(self) -> None:
            self._record("after_step")

        def after_train(self) -> None:
            self._record("after_train")

    return D2Recorder


def d2_recorder(name: str, calls: Calls, fail_in: tuple[str, int] | None = None) -> Any:
    """A recording hook that subclasses detectron2's ``HookBase`` (so both libraries' trainers accept it)."""
    return _recorder_class()(name, calls, fail_in)


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


def small_rcnn(seed: int = 0) -> nn.Module:
    """detectron2's Faster R-CNN R50-FPN config shrunk to ResNet-18 and 2 classes (about 0.3 s/iteration on CPU)."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(RCNN_OVERRIDES)
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
