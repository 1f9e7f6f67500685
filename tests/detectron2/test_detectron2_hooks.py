"""detectron2's own hooks and writers, unchanged, in d2lightning's loop (both entry points).

``detectron2.engine.hooks`` IterationTimer, LRScheduler, PeriodicCheckpointer (with ``DetectionCheckpointer``),
EvalHook, BestCheckpointer, PreciseBN and PeriodicWriter (with ``default_writers``) run registered in
``d2lightning.engine.SimpleTrainer`` ("simple") and as ``HookCallback`` in a ``lightning.pytorch.Trainer``
fitting a ``D2LightningModule`` ("lightning"). Expected values are detectron2's (its hook semantics, and the
oracle run recorded from detectron2 0.6 at 02b5c4e).
"""

from __future__ import annotations

import json
import logging
import os
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from d2lightning.engine import HookCallback, hooks
from tests.helpers.detectron2_runs import DETECTRON2_MARKS, MODES, train_d2lightning
from tests.helpers.training import PlainModule, SimpleModel, lightning_trainer

pytestmark = DETECTRON2_MARKS


def _model_and_sgd(lr: float = 0.1, two_losses: bool = False) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = SimpleModel(two_losses=two_losses)
    return model, torch.optim.SGD(model.parameters(), lr)


def _lrs(trainer: Any) -> list[tuple[float, int]]:
    return [(round(v, 10), it) for v, it in trainer.storage.history("lr").values()]


# ---------------------------------------------------------------- IterationTimer
@pytest.mark.parametrize("mode", MODES)
def test_iteration_timer(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    with caplog.at_level(logging.INFO, logger="detectron2.engine.hooks"):
        trainer = train_d2lightning(mode, model, opt, [d2_hooks.IterationTimer()], 0, 5)
    assert [it for _, it in trainer.storage.history("time").values()] == [2, 3, 4]
    messages = [r.getMessage() for r in caplog.records if r.name == "detectron2.engine.hooks"]
    assert any(m.startswith("Overall training speed: 3 iterations in 0:00:") for m in messages), messages
    assert any(m.startswith("Total training time: 0:00:") for m in messages), messages


# ---------------------------------------------------------------- LRScheduler
@pytest.mark.parametrize("mode", MODES)
def test_lr_scheduler_with_a_torch_scheduler(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    trainer = train_d2lightning(mode, model, opt, [d2_hooks.LRScheduler(opt, sched)], 0, 5)
    assert _lrs(trainer) == [(0.1, 0), (0.1, 1), (0.01, 2), (0.01, 3), (0.001, 4)]


@pytest.mark.parametrize("mode", MODES)
def test_lr_scheduler_takes_optimizer_and_scheduler_from_the_trainer(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)

    def setup(trainer: Any) -> None:
        trainer.scheduler = sched  # what detectron2's DefaultTrainer has

    hook = d2_hooks.LRScheduler()
    trainer = train_d2lightning(mode, model, opt, [hook], 0, 5, setup=setup)
    assert _lrs(trainer) == [(0.1, 0), (0.1, 1), (0.01, 2), (0.01, 3), (0.001, 4)]
    assert hook.scheduler is sched and hook._optimizer is opt


@pytest.mark.parametrize("mode", MODES)
def test_lr_scheduler_with_an_fvcore_param_scheduler(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    model, opt = _model_and_sgd()
    multiplier = MultiStepParamScheduler(values=[1.0, 0.5], milestones=[3], num_updates=5)
    trainer = train_d2lightning(mode, model, opt, [d2_hooks.LRScheduler(opt, multiplier)], 0, 5)
    assert _lrs(trainer) == [(0.1, 0), (0.1, 1), (0.1, 2), (0.05, 3), (0.05, 4)]


@pytest.mark.parametrize("mode", MODES)
def test_lr_scheduler_without_a_scheduler_anywhere_fails_clearly(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    with pytest.raises(
        AttributeError,
        match=r"^detectron2\.engine\.hooks\.LRScheduler was created without scheduler= and reads trainer\.scheduler "
        r"instead, but the trainer it runs in \(SimpleTrainer\) has no attribute 'scheduler'\.",
    ):
        train_d2lightning(mode, model, opt, [d2_hooks.LRScheduler(opt)], 0, 3)
    assert model.calls == 0


def test_lr_scheduler_in_a_foreign_lightning_module_takes_lightnings_optimizer() -> None:
    from detectron2.engine import hooks as d2_hooks
    from fvcore.common.param_scheduler import MultiStepParamScheduler

    module = PlainModule()
    multiplier = MultiStepParamScheduler(values=[1.0, 0.5], milestones=[3], num_updates=5)
    seen: list[Any] = []  # the hooks' trainer lives as long as the fit: read its storage at the end
    lrs = hooks.CallbackHook(after_train=lambda trainer: seen.append(_lrs(trainer)))
    lightning_trainer(5, [HookCallback(d2_hooks.LRScheduler(scheduler=multiplier)), lrs]).fit(module)
    assert seen == [[(0.1, 0), (0.1, 1), (0.1, 2), (0.05, 3), (0.05, 4)]]
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == 0.05


def test_lr_scheduler_in_a_foreign_lightning_module_without_scheduler_fails_clearly() -> None:
    from detectron2.engine import hooks as d2_hooks

    with pytest.raises(AttributeError, match=r"runs in \(LightningTrainerView\) has no attribute 'scheduler'\."):
        lightning_trainer(5, [HookCallback(d2_hooks.LRScheduler())]).fit(PlainModule())


# ---------------------------------------------------------------- PeriodicCheckpointer
@pytest.mark.parametrize("mode", MODES)
def test_periodic_checkpointer(mode: str, tmp_path: Path) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    seen: list[tuple[int, list[str]]] = []
    checkpointer = d2_hooks.PeriodicCheckpointer(
        DetectionCheckpointer(model, str(tmp_path), optimizer=opt), 2, max_to_keep=1
    )
    files = hooks.CallbackHook(after_step=lambda t: seen.append((t.iter, sorted(os.listdir(tmp_path)))))
    train_d2lightning(mode, model, opt, [checkpointer, files], 0, 5)
    assert seen == [
        (0, []),
        (1, ["last_checkpoint", "model_0000001.pth"]),
        (2, ["last_checkpoint", "model_0000001.pth"]),
        (3, ["last_checkpoint", "model_0000003.pth"]),
        (4, ["last_checkpoint", "model_0000003.pth", "model_final.pth"]),
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert sorted(final) == ["iteration", "model", "optimizer"]
    assert final["iteration"] == 4
    assert torch.equal(final["model"]["mod.weight"], model.mod.weight.detach())
    assert torch.load(tmp_path / "model_0000003.pth", weights_only=False)["iteration"] == 3


# ---------------------------------------------------------------- EvalHook and BestCheckpointer
@pytest.mark.parametrize("mode", MODES)
def test_eval_hook(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    n = count(1)
    evaluated_at: list[int] = []
    trainer_ref: list[Any] = []

    def evaluate() -> dict[str, Any]:
        evaluated_at.append(trainer_ref[0].iter)
        return {"acc": {"top1": float(next(n))}}

    trainer = train_d2lightning(mode, model, opt, [d2_hooks.EvalHook(2, evaluate)], 0, 5, setup=trainer_ref.append)
    assert list(trainer.storage.history("acc/top1").values()) == [(1.0, 1), (2.0, 3), (3.0, 5)]
    assert evaluated_at == [1, 3, 5]


@pytest.mark.parametrize("mode", MODES)
def test_best_checkpointer_after_eval_hook(mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd()
    scores = iter([1.0, 3.0, 2.0])
    best_iters: list[tuple[int, int | None]] = []
    checkpointer = DetectionCheckpointer(model, str(tmp_path))
    run_hooks = [
        d2_hooks.EvalHook(2, lambda: {"acc": next(scores)}),
        d2_hooks.BestCheckpointer(2, checkpointer, "acc", mode="max"),
        hooks.CallbackHook(
            after_step=lambda t: best_iters.append((t.iter, _saved_iteration(tmp_path / "model_best.pth")))
        ),
    ]
    with caplog.at_level(logging.INFO, logger="detectron2.engine.hooks"):
        train_d2lightning(mode, model, opt, run_hooks, 0, 6)
    assert best_iters == [(0, None), (1, 1), (2, 1), (3, 3), (4, 3), (5, 3)]
    assert _saved_iteration(tmp_path / "model_best.pth") == 3
    assert "Not saving as latest eval score for acc is 2.00000, not better than best score 3.00000 @ iteration 3." in [
        r.getMessage() for r in caplog.records
    ]


def _saved_iteration(path: Path) -> int | None:
    return torch.load(path, weights_only=False)["iteration"] if path.exists() else None


# ---------------------------------------------------------------- PreciseBN
class _BNModel(nn.Module):
    """BatchNorm then Linear; every forward puts ``bn_forward`` into detectron2's current storage."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)
        self.lin = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        from detectron2.utils.events import get_event_storage

        get_event_storage().put_scalar("bn_forward", 1.0)
        return {"loss": self.lin(self.bn(x)).pow(2).mean()}


class _ConstantBatches:
    """Batches ``full((4, 3), k)`` for k = 1, 2, ... (one iterator shared by every ``iter()``: PreciseBN keeps it)."""

    def __iter__(self) -> Any:
        return (torch.full((4, 3), float(k)) for k in count(1))


@pytest.mark.parametrize("mode", MODES)
def test_precise_bn(mode: str) -> None:
    from detectron2.engine import hooks as d2_hooks

    torch.manual_seed(0)
    model = _BNModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    precise = d2_hooks.PreciseBN(3, model, _ConstantBatches(), num_iter=4)
    trainer = train_d2lightning(mode, model, opt, [precise], 0, 5)
    # run after iteration 2 (batches 1..4) and after the last one (batches 5..8): the true mean is 6.5
    assert model.bn.running_mean.tolist() == [6.5, 6.5, 6.5]
    # the forwards of PreciseBN went to the storage detectron2 opened for them, not to the run's
    assert [it for _, it in trainer.storage.history("bn_forward").values()] == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- PeriodicWriter with default_writers
@pytest.mark.parametrize("mode", MODES)
def test_periodic_writer_with_default_writers(mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from detectron2.engine import default_writers
    from detectron2.engine import hooks as d2_hooks

    model, opt = _model_and_sgd(two_losses=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
    run_hooks = [
        d2_hooks.IterationTimer(),
        d2_hooks.LRScheduler(opt, sched),
        d2_hooks.PeriodicWriter(default_writers(str(tmp_path), 5), period=2),
    ]
    with caplog.at_level(logging.INFO, logger="detectron2.utils.events"):
        train_d2lightning(mode, model, opt, run_hooks, 0, 5)
    lines = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    base = ["data_time", "iteration", "loss_a", "loss_b", "lr", "rank_data_time", "total_loss"]
    assert [(d["iteration"], sorted(d)) for d in lines] == [
        (1, base),
        (3, sorted([*base, "eta_seconds", "time"])),
        (4, sorted([*base, "eta_seconds", "time"])),
    ]
    assert [round(d["lr"], 10) for d in lines] == [0.1, 0.01, 0.001]
    assert any(name.startswith("events.out.tfevents.") for name in os.listdir(tmp_path))
    printed = [r.getMessage() for r in caplog.records if r.name == "detectron2.utils.events"]
    assert [m.split("iter: ")[1].split()[0] for m in printed] == ["1", "3", "4"]
    assert printed[0].startswith(" iter: 1  total_loss: ") and " lr: 0.1  " in printed[0] + " "
    assert printed[1].startswith(" eta: 0:00:00  iter: 3  total_loss: ")
