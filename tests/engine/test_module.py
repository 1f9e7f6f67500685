"""D2LightningModule in user-built Lightning Trainers: loggers, checkpoints, foreign modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from d2lightning.engine import D2LightningModule, SimpleTrainer, hooks
from d2lightning.utils.events import has_event_storage
from tests.helpers.training import (
    PlainModule,
    Recorder,
    SimpleModel,
    expected_calls,
    infinite_loader,
    lightning_trainer,
)


class RecordingLogger(Logger):
    """A Lightning logger keeping every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))  # type: ignore[arg-type]


def test_storage_scalars_reach_lightning_loggers_at_their_iteration() -> None:
    model = SimpleModel(two_losses=True)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    logger = RecordingLogger()
    final = hooks.CallbackHook(after_train=lambda t: t.storage.put_scalar("bbox/AP", 42.0, smoothing_hint=False))
    trainer = lightning_trainer(10, [hooks.LRScheduler(opt, torch.optim.lr_scheduler.StepLR(opt, 5)), final],
                                logger=logger, log_every_n_steps=4)  # fmt: skip
    trainer.fit(D2LightningModule(model, infinite_loader(), opt))
    steps = [step for step, _ in logger.records]
    # every 4 iterations (3, 7), after the last (9), and the final values put in after_train (10)
    assert steps == [3, 7, 9, 10]
    assert set(logger.records[0][1]) == {
        "loss_a",
        "loss_b",
        "total_loss",
        "data_time",
        "rank_data_time",
        "lr",
    }
    assert logger.records[-1] == (10, {"bbox/AP": 42.0})
    assert logger.records[2][1]["lr"] == pytest.approx(0.01)  # lr used at iteration 9


def test_simple_trainer_with_a_lightning_logger() -> None:
    model = SimpleModel()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    logger = RecordingLogger()
    trainer.lightning_kwargs = {"logger": logger, "log_every_n_steps": 2}
    trainer.train(0, 5)
    assert [step for step, _ in logger.records] == [1, 3, 4]


def test_foreign_lightning_module_gets_a_trainer_view() -> None:
    calls: list = []
    seen: dict = {}

    class Probe(hooks.CallbackHook):
        pass

    probe = Probe(before_train=lambda t: seen.update(model=t.model, optimizer=t.optimizer, max_iter=t.max_iter))
    module = PlainModule()
    lightning_trainer(3, [Recorder("A", calls), hooks.IterationTimer(warmup_iter=0), probe]).fit(module)
    assert calls == expected_calls(["A"], 0, 3)
    assert seen["model"] is module and seen["max_iter"] == 3
    assert isinstance(seen["optimizer"], torch.optim.SGD)
    assert not has_event_storage(), "the last hook callback closes the run for a foreign module"


def test_resume_from_a_lightning_checkpoint_continues_iterations_and_hook_state(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def make() -> tuple[D2LightningModule, Any, list]:
        model = SimpleModel()
        opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, 3)
        calls: list = []
        return (
            D2LightningModule(model, infinite_loader(), opt),
            [hooks.LRScheduler(opt, sched), Recorder("A", calls)],
            calls,
        )

    module, cbs, _ = make()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1, filename="{step}")
    lightning_trainer(6, [*cbs, ckpt], enable_checkpointing=True).fit(module)
    path = tmp_path / "step=4.ckpt"
    assert path.exists()

    module2, cbs2, calls2 = make()
    trainer2 = lightning_trainer(6, cbs2)
    trainer2.fit(module2, ckpt_path=path)
    assert calls2 == expected_calls(["A"], 4, 6)
    sched2 = cbs2[0].scheduler
    assert sched2.last_epoch == 6
    assert [lr for lr, _ in module2.d2_trainer.storage.history("lr").values()] == pytest.approx([0.01, 0.01])
