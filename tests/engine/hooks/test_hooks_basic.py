"""CallbackHook, IterationTimer, LRScheduler, PeriodicWriter: detectron2's behaviour under both entry points."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from d2lightning.engine import SimpleTrainer, hooks
from d2lightning.utils.events import CommonMetricPrinter, JSONWriter
from tests.helpers.training import SimpleModel, infinite_loader, run

MODES = ["simple", "lightning"]


# ---------------------------------------------------------------- CallbackHook
@pytest.mark.parametrize("mode", MODES)
def test_callback_hook_calls_functions_with_the_trainer(mode: str) -> None:
    calls: list = []
    hook = hooks.CallbackHook(
        before_train=lambda t: calls.append(("before_train", t.iter)),
        before_step=lambda t: calls.append(("before_step", t.iter)),
        after_step=lambda t: calls.append(("after_step", t.iter)),
        after_train=lambda t: calls.append(("after_train", t.iter)),
    )
    run(mode, [hook], 0, 2)
    assert calls == [
        ("before_train", 0),
        ("before_step", 0), ("after_step", 0),
        ("before_step", 1), ("after_step", 1),
        ("after_train", 2),
    ]  # fmt: skip
    with pytest.raises(AttributeError):  # functions are released after training, as in detectron2
        hook.before_step()


def test_callback_hook_validates_arguments() -> None:
    with pytest.raises(TypeError, match="CallbackHook after_step must be callable or None, got 3"):
        hooks.CallbackHook(after_step=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- IterationTimer
@pytest.mark.parametrize("mode", MODES)
def test_iteration_timer_puts_time_after_warmup(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="d2lightning.engine.hooks.iteration_timer"):
        trainer = run(mode, [hooks.IterationTimer()], 0, 50)
    # detectron2: the first 2 iterations after start_iter put no time; 50 iterations give 48 values.
    times = trainer.storage.history("time").values()
    assert [it for _, it in times] == list(range(2, 50))
    assert all(t > 0 for t, _ in times)
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("Overall training speed: 48 iterations in 0:00:0") and m.endswith(" s / it)") for m in messages
    )
    assert any(m.startswith("Total training time: 0:00:") and "on hooks)" in m for m in messages)


def test_iteration_timer_resumed_run_and_validation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="d2lightning.engine.hooks.iteration_timer"):
        trainer = run("simple", [hooks.IterationTimer(warmup_iter=1)], 10, 14)
    assert [it for _, it in trainer.storage.history("time").values()] == [10, 11, 12, 13]
    assert any(r.getMessage().startswith("Overall training speed: 4 iterations") for r in caplog.records)
    with pytest.raises(ValueError, match="warmup_iter must be an int >= 0, got -1"):
        hooks.IterationTimer(warmup_iter=-1)


# ---------------------------------------------------------------- LRScheduler
@pytest.mark.parametrize("mode", MODES)
def test_lr_scheduler_records_lr_used_then_steps(mode: str) -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)
    if mode == "simple":
        trainer = SimpleTrainer(model, infinite_loader(), opt)
        trainer.register_hooks([hooks.LRScheduler(opt, sched)])
        trainer.train(0, 7)
    else:
        from d2lightning.engine import D2LightningModule
        from tests.helpers.training import lightning_trainer

        module = D2LightningModule(model, infinite_loader(), opt)
        lightning_trainer(7, [hooks.LRScheduler(opt, sched)]).fit(module)
        trainer = module.d2_trainer
    lrs = trainer.storage.history("lr").values()
    assert [it for _, it in lrs] == list(range(7))
    assert [lr for lr, _ in lrs] == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])
    assert trainer.storage.smoothing_hints()["lr"] is False
    assert sched.last_epoch == 7


def test_lr_scheduler_takes_optimizer_and_scheduler_from_trainer() -> None:
    class WithScheduler(SimpleTrainer):
        pass

    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 1.0)
    trainer = WithScheduler(model, infinite_loader(), opt)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (it + 1))  # type: ignore[attr-defined]
    trainer.register_hooks([hooks.LRScheduler()])
    trainer.train(0, 3)
    assert [lr for lr, _ in trainer.storage.history("lr").values()] == pytest.approx([1.0, 0.5, 1 / 3])


def test_lr_scheduler_errors_name_what_is_missing() -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.register_hooks([hooks.LRScheduler()])
    with pytest.raises(ValueError, match="LRScheduler got no scheduler and the trainer has no 'scheduler' attribute"):
        trainer.train(0, 2)
    other = torch.optim.SGD(SimpleModel().parameters(), 0.1)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.register_hooks([hooks.LRScheduler(opt, torch.optim.lr_scheduler.StepLR(other, 2))])
    with pytest.raises(ValueError, match="scheduler is bound to another optimizer"):
        trainer.train(0, 2)
    with pytest.raises(TypeError, match=r"LRScheduler optimizer must be a torch\.optim\.Optimizer, got str"):
        hooks.LRScheduler("sgd")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ([(2, 0.1), (3, 0.1), (1, 0.5)], 1),  # the group with the most params
        ([(1, 0.1), (1, 0.2), (1, 0.2)], 1),  # all single-param: first with the most common lr
        ([(1, 0.3), (1, 0.3), (1, 0.2)], 0),
    ],
)
def test_best_param_group(groups: list[tuple[int, float]], expected: int) -> None:
    params = [{"params": [nn.Parameter(torch.zeros(1)) for _ in range(n)], "lr": lr} for n, lr in groups]
    assert hooks.LRScheduler.get_best_param_group_id(torch.optim.SGD(params, 0.1)) == expected


def test_lr_scheduler_state_is_saved_and_restored_by_the_trainer() -> None:
    # detectron2 test_checkpoint_resume, through trainer.state_dict(): StepLR(3), 12 iterations.
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.register_hooks([hooks.LRScheduler(scheduler=sched)])
    trainer.train(0, 12)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    assert sched.last_epoch == 12
    state = trainer.state_dict()
    assert state["hooks"]["LRScheduler"]["last_epoch"] == 12

    opt2 = torch.optim.SGD(model.parameters(), 999.0)  # lr is loaded
    trainer2 = SimpleTrainer(model, infinite_loader(), opt2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 3)
    trainer2.register_hooks([hooks.LRScheduler(scheduler=sched2)])
    trainer2.load_state_dict(state)
    assert trainer2.iter == 12
    assert sched2.last_epoch == 12
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-5)


# ---------------------------------------------------------------- PeriodicWriter
class _CountingWriter:
    def __init__(self) -> None:
        self.writes: list[int] = []
        self.closed = False

    def write(self) -> None:
        from d2lightning.utils.events import get_event_storage

        self.writes.append(get_event_storage().iter)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("mode", MODES)
def test_periodic_writer_writes_every_period_and_after_last(mode: str) -> None:
    writer = _CountingWriter()
    run(mode, [hooks.PeriodicWriter([writer], period=20)], 0, 50)
    assert writer.writes == [19, 39, 49, 50]
    assert writer.closed


def test_writer_hooks_oracle(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # detectron2 test_writer_hooks: a final metric put in after_train (EvalHook(0) there) lands at iteration 50.
    json_file = tmp_path / "metrics.json"
    writers = [CommonMetricPrinter(50), JSONWriter(json_file)]
    final_eval = hooks.CallbackHook(after_train=lambda t: t.storage.put_scalars(metric=100, smoothing_hint=False))
    with caplog.at_level(logging.INFO, logger="d2lightning.utils.events"):
        run("simple", [final_eval, hooks.PeriodicWriter(writers)], 0, 50)
    data = [json.loads(line) for line in json_file.read_text().splitlines()]
    assert [d["iteration"] for d in data] == [19, 39, 49, 50]
    assert "metric" in data[-1]
    printed = [r.getMessage() for r in caplog.records if r.name == "d2lightning.utils.events"]
    assert len(printed) == 3
    for line, it in zip(printed, [19, 39, 49], strict=True):
        assert f"iter: {it} " in line
    assert "eta: 0:00:00" in printed[-1]


def test_periodic_writer_closes_writers_after_a_failure() -> None:
    writer = _CountingWriter()
    with pytest.raises(RuntimeError, match="model failed"):
        run("simple", [hooks.PeriodicWriter([writer], period=2)], 0, 10, model=SimpleModel(fail_at_call=3))
    assert writer.writes == [1, 3]
    assert writer.closed


def test_periodic_writer_validation() -> None:
    with pytest.raises(TypeError, match="PeriodicWriter writers must be EventWriters"):
        hooks.PeriodicWriter([object()])
    with pytest.raises(ValueError, match="PeriodicWriter period must be an int >= 1, got 0"):
        hooks.PeriodicWriter([], period=0)


def test_lr_scheduler_wraps_a_param_scheduler_and_stays_aligned_on_resume() -> None:
    from d2lightning.solver import MultiStepParamScheduler

    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 1.0)
    opt.param_groups[0]["initial_lr"] = 1.0  # what a loaded optimizer state carries on resume
    schedule = MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[4, 8], num_updates=10)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.register_hooks([hooks.LRScheduler(opt, schedule)])
    trainer.train(6, 10)  # a resumed run: the multiplier starts at iteration 6
    assert [lr for lr, _ in trainer.storage.history("lr").values()] == pytest.approx([0.1, 0.1, 0.01, 0.01])
