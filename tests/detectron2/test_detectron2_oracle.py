"""detectron2's own hooks in d2lightning reproduce the run recorded from detectron2 itself (the oracle).

The ``hooked_run`` of ``detectron2-oracle.json`` (detectron2 0.6 at 02b5c4e, CPU): IterationTimer, LRScheduler
over ``build_lr_scheduler``, PeriodicCheckpointer with a DetectionCheckpointer, EvalHook and a PeriodicWriter with
a JSONWriter, all detectron2's, run under both d2lightning entry points; the values below are the recorded ones.
"""

from __future__ import annotations

import json
import os
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers.detectron2_runs import DETECTRON2_MARKS, MODES, train_d2lightning
from tests.helpers.training import SimpleModel

pytestmark = DETECTRON2_MARKS

#: ``hooked_run`` of the detectron2 oracle (0.6 at 02b5c4e, CPU): one metrics.json line per write as
#: (iteration, keys, lr or None, bbox/AP or None), the eval calls, and the checkpoint files at the end.
ORACLE_METRICS = [
    (4, ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"], 0.1, None),
    (9, ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"], 0.1, None),
    (7, ["bbox/AP", "bbox/AP50", "iteration"], None, 10.0),
    (14, ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"], 0.01, None),
    (19, ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"], 0.001, None),
    (15, ["bbox/AP", "bbox/AP50", "iteration"], None, 20.0),
    (22, ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "time", "total_loss"], 0.001, None),
    (23, ["bbox/AP", "bbox/AP50", "iteration"], None, 30.0),
]
ORACLE_EVAL_AT = [7, 15, 23]
ORACLE_FILES = ["last_checkpoint", "metrics.json", "model_0000011.pth", "model_0000017.pth", "model_final.pth"]


@pytest.mark.parametrize("mode", MODES)
def test_detectron2_oracle_run_is_reproduced(mode: str, tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.engine import hooks as d2_hooks
    from detectron2.solver import build_lr_scheduler
    from detectron2.utils.events import JSONWriter

    cfg = get_cfg()
    cfg.SOLVER.BASE_LR, cfg.SOLVER.STEPS, cfg.SOLVER.MAX_ITER = 0.1, (12, 18), 23
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = 4, 0.01
    torch.manual_seed(0)
    model = SimpleModel(two_losses=True)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    calls = count(1)
    eval_at: list[int] = []

    def evaluate(trainer_ref: list[Any]) -> dict[str, Any]:
        eval_at.append(trainer_ref[0].iter)
        return {"bbox": {"AP": 10.0 * next(calls), "AP50": 20.0}}

    trainer_ref: list[Any] = []
    run_hooks = [
        d2_hooks.IterationTimer(),
        d2_hooks.LRScheduler(opt, build_lr_scheduler(cfg, opt)),
        d2_hooks.PeriodicCheckpointer(
            DetectionCheckpointer(model, str(tmp_path), optimizer=opt), 6, max_iter=23, max_to_keep=2
        ),
        d2_hooks.EvalHook(8, lambda: evaluate(trainer_ref)),
        d2_hooks.PeriodicWriter([JSONWriter(str(tmp_path / "metrics.json"))], period=5),
    ]
    train_d2lightning(mode, model, opt, run_hooks, 0, 23, setup=trainer_ref.append)
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    got = [(d["iteration"], sorted(d), None if "lr" not in d else round(d["lr"], 10), d.get("bbox/AP")) for d in lines]
    assert got == ORACLE_METRICS
    assert eval_at == ORACLE_EVAL_AT
    assert sorted(os.listdir(tmp_path)) == ORACLE_FILES
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert (sorted(final), final["iteration"]) == (["iteration", "model", "optimizer"], 22)
