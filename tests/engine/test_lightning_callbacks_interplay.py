"""Lightning's own callbacks in the same Trainer as detectron2 hooks; EarlyStopping on an EvalHook metric."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import CSVLogger

from d2lightning.engine import D2LightningModule, hooks
from tests.helpers.training import Recorder, SimpleModel, infinite_loader, lightning_trainer, run

MODES = ["simple", "lightning"]


class Sequence:
    """An eval function returning ``{"metric": values[n]}`` at its n-th call and recording ``trainer.iter``."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.iters: list[int] = []
        self.hook: Any = None

    def __call__(self) -> dict[str, float]:
        self.iters.append(self.hook.trainer.iter)
        return {"metric": self.values[len(self.iters) - 1]}


def eval_on(period: int, values: list[float]) -> tuple[hooks.EvalHook, Sequence]:
    fn = Sequence(values)
    fn.hook = hooks.EvalHook(period, fn)
    return fn.hook, fn


def test_lr_monitor_model_checkpoint_and_rich_progress_bar_alongside_hooks(tmp_path: Path) -> None:
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    calls: list = []
    ev, fn = eval_on(4, [3.0, 5.0, 6.0])
    lr_monitor = LearningRateMonitor(logging_interval="step")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="metric", mode="max", save_top_k=1)
    bar = RichProgressBar()
    pl_trainer = lightning_trainer(
        10,
        [Recorder("first", calls), hooks.LRScheduler(optimizer, scheduler), lr_monitor, ev, checkpoint, bar,
         Recorder("last", calls)],
        logger=CSVLogger(tmp_path, name="csv", version=0),
        log_every_n_steps=1,
        enable_progress_bar=True,
        enable_checkpointing=True,
    )  # fmt: skip
    module = D2LightningModule(model, infinite_loader(), optimizer)
    pl_trainer.fit(module)

    # the hooks ran as in detectron2, around Lightning's callbacks
    assert [c for c in calls if c[0] == "first" and c[1] in ("before_train", "after_train")] == [
        ("first", "before_train", 0),
        ("first", "after_train", 10),
    ]
    assert [c[2] for c in calls if c[0] == "last" and c[1] == "after_step"] == list(range(10))
    assert fn.iters == [3, 7, 10]
    # LearningRateMonitor logged the lr of every step: 0.1 for steps 0-3, 0.05 for 4-7, 0.025 for 8-9
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        lrs = [float(row["lr-SGD"]) for row in csv.DictReader(f) if row.get("lr-SGD")]
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025]
    # ModelCheckpoint(monitor=) saw every evaluation, the final one (in after_train) included
    assert checkpoint.best_model_score == torch.tensor(6.0)
    # saved in after_train, where Lightning has already closed its (only) epoch: hence epoch=1
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=1-step=10.ckpt"]
    assert pl_trainer.progress_bar_callback is bar


def test_model_checkpoint_keeps_the_best_periodic_evaluation(tmp_path: Path) -> None:
    ev, _ = eval_on(2, [1.0, 4.0, 2.0, 3.0])  # evaluations at iter 1, 3, 5 and the final one at 6
    checkpoint = ModelCheckpoint(dirpath=tmp_path, monitor="metric", mode="max", save_top_k=1)
    model = SimpleModel()
    lightning_trainer(6, [ev, checkpoint], enable_checkpointing=True).fit(
        D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    )
    assert checkpoint.best_model_score == torch.tensor(4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=4.ckpt"]  # after iteration 3


@pytest.mark.parametrize("mode", MODES)
def test_early_stopping_on_an_eval_hook_metric_stops_cleanly(mode: str) -> None:
    calls: list = []
    final: list = []
    # evaluations at iter 1 (best), 3 and 5 (no improvement): patience 2 is exhausted at iter 5
    ev, fn = eval_on(2, [5.0, 4.0, 3.0, 2.0, 1.0])
    stopper = EarlyStopping(monitor="metric", mode="max", patience=2)
    final_checkpoint = hooks.CallbackHook(
        after_train=lambda t: (
            final.append(("final_checkpoint", t.iter, t.max_iter)) if t.iter + 1 >= t.max_iter else None
        )
    )
    trainer = run(mode, [Recorder("a", calls), ev, stopper, final_checkpoint, Recorder("z", calls)], 0, 100)

    assert trainer.iter == 6 and trainer.max_iter == 6  # max_iter lowered to the iterations done
    assert [c[2] for c in calls if c[0] == "z" and c[1] == "after_step"] == [0, 1, 2, 3, 4, 5]
    assert [c for c in calls if c[1] == "after_train"] == [("a", "after_train", 6), ("z", "after_train", 6)]
    # the final evaluation still runs (after_train, iter == max_iter), once; EarlyStopping ignores it
    assert fn.iters == [1, 3, 5, 6]
    assert final == [("final_checkpoint", 6, 6)]
    assert stopper.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED
    assert stopper.wait_count == 2
    assert stopper.best_score == torch.tensor(5.0)


@pytest.mark.parametrize("mode", MODES)
def test_early_stopping_without_periodic_evaluation_does_not_fail_at_the_end(mode: str) -> None:
    # With eval_period=0 the metric exists only after training; Lightning's epoch-end check (strict=True)
    # would raise for the missing metric: EvalHook switched it to check after evaluations.
    ev, fn = eval_on(0, [1.0])
    stopper = EarlyStopping(monitor="metric", mode="max", patience=1)
    trainer = run(mode, [stopper, ev], 0, 4)
    assert fn.iters == [4]
    assert trainer.max_iter == 4
    assert stopper.stopping_reason == EarlyStoppingReason.NOT_STOPPED
