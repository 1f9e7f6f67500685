"""detectron2's ``GeneralizedRCNN`` trains in d2lightning unchanged, with the losses detectron2's trainer gets.

The model is detectron2's Faster R-CNN config shrunk to ResNet-18 and 2 classes (``tests.helpers.detectron2_runs.small_rcnn``),
fed 128x128 random images with one box each. The model itself writes to "the current storage" through
``detectron2.utils.events.get_event_storage()`` (``fast_rcnn/cls_accuracy``, ``rpn/num_pos_anchors``...), so
these keys showing up in the run's storage prove that detectron2 sees d2lightning's storage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.detectron2_runs import DETECTRON2_MARKS, rcnn_loader, small_rcnn, train_d2lightning, train_detectron2

pytestmark = [*DETECTRON2_MARKS, pytest.mark.slow]

ITERS = 2
#: scalars GeneralizedRCNN (its RPN and ROI heads) puts into the storage itself, plus SimpleTrainer's
MODEL_KEYS = {
    "fast_rcnn/cls_accuracy",
    "fast_rcnn/false_negative",
    "fast_rcnn/fg_cls_accuracy",
    "roi_head/num_bg_samples",
    "roi_head/num_fg_samples",
    "rpn/num_neg_anchors",
    "rpn/num_pos_anchors",
}
TRAINER_KEYS = {"data_time", "rank_data_time", "total_loss", "loss_box_reg", "loss_cls", "loss_rpn_cls", "loss_rpn_loc"}


def _train(runner: Any, hooks: list[Any]) -> tuple[Any, torch.nn.Module, dict[str, torch.Tensor]]:
    model = small_rcnn(seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    opt = torch.optim.SGD(model.parameters(), 1e-3, momentum=0.9)
    torch.manual_seed(1)  # the RPN and ROI samplers draw from the global generator
    return runner(model, opt, hooks, rcnn_loader()), model, before


def _losses(trainer: Any) -> list[tuple[float, int]]:
    return list(trainer.storage.history("total_loss").values())


@pytest.fixture(scope="module")
def detectron2_run() -> dict[str, Any]:
    """What detectron2's own SimpleTrainer records for the model over ``ITERS`` iterations."""
    trainer, _, _ = _train(lambda m, o, h, loader: train_detectron2(m, o, h, 0, ITERS, loader=loader), [])
    return {"keys": set(trainer.storage.histories()), "losses": _losses(trainer)}


def test_detectron2_reference_run_is_sane(detectron2_run: dict[str, Any]) -> None:
    assert detectron2_run["keys"] == MODEL_KEYS | TRAINER_KEYS
    assert [it for _, it in detectron2_run["losses"]] == [0, 1]
    assert all(torch.isfinite(torch.tensor(v)) for v, _ in detectron2_run["losses"])


def test_generalized_rcnn_in_simple_trainer(detectron2_run: dict[str, Any]) -> None:
    trainer, model, before = _train(
        lambda m, o, h, loader: train_d2lightning("simple", m, o, h, 0, ITERS, loader=loader), []
    )
    assert set(trainer.storage.histories()) == detectron2_run["keys"]
    assert _losses(trainer) == detectron2_run["losses"]  # same arithmetic, bit for bit
    after = dict(model.named_parameters())
    assert not torch.equal(
        before["roi_heads.box_predictor.cls_score.weight"], after["roi_heads.box_predictor.cls_score.weight"]
    )


def test_generalized_rcnn_in_a_lightning_trainer_with_detectron2_hooks(
    detectron2_run: dict[str, Any], tmp_path: Path
) -> None:
    from detectron2.engine import hooks as d2_hooks
    from detectron2.utils.events import JSONWriter

    hooks = [d2_hooks.IterationTimer(warmup_iter=0), d2_hooks.PeriodicWriter([JSONWriter(str(tmp_path / "m.json"))], 1)]
    trainer, _, _ = _train(
        lambda m, o, h, loader: train_d2lightning("lightning", m, o, h, 0, ITERS, loader=loader), hooks
    )
    assert _losses(trainer) == detectron2_run["losses"]
    lines = [json.loads(line) for line in (tmp_path / "m.json").read_text().splitlines()]
    assert [d["iteration"] for d in lines] == [0, 1]
    assert [set(d) for d in lines] == [MODEL_KEYS | TRAINER_KEYS | {"iteration", "time"}] * 2
