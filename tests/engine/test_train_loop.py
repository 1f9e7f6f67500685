"""TrainerBase / SimpleTrainer / AMPTrainer: detectron2's loop order and step semantics, on Lightning."""

from __future__ import annotations

import math
import signal
import weakref

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from torch import nn

from d2lightning.engine import (
    AMPTrainer,
    D2LightningModule,
    HookBase,
    HookCallback,
    SimpleTrainer,
    TrainerBase,
)
from d2lightning.utils.events import get_event_storage, has_event_storage
from tests.helpers.training import (
    DuckRecorder,
    LightningRecorder,
    Recorder,
    SimpleModel,
    expected_calls,
    infinite_loader,
    lightning_trainer,
    run,
)

MODES = ["simple", "lightning"]


# ---------------------------------------------------------------- order parity (detectron2-oracle.json)
@pytest.mark.parametrize("mode", MODES)
def test_plain_run_sequence_matches_detectron2(mode: str) -> None:
    calls: list = []
    trainer = run(mode, [Recorder("A", calls)], 0, 4)
    # Written out from detectron2-oracle.json sequences[0] (start 0, max 4).
    assert calls == [
        ("A", "before_train", 0),
        ("A", "before_step", 0), ("A", "after_backward", 0), ("A", "after_step", 0),
        ("A", "before_step", 1), ("A", "after_backward", 1), ("A", "after_step", 1),
        ("A", "before_step", 2), ("A", "after_backward", 2), ("A", "after_step", 2),
        ("A", "before_step", 3), ("A", "after_backward", 3), ("A", "after_step", 3),
        ("A", "after_train", 4),
    ]  # fmt: skip
    assert trainer.iter == 4


def test_plain_run_of_five_iterations() -> None:
    calls: list = []
    trainer = run("simple", [Recorder("A", calls)], 0, 5)
    assert calls == expected_calls(["A"], 0, 5)
    assert trainer.iter == trainer.max_iter == 5
    assert trainer.start_iter == 0


def test_resumed_run_two_hooks_sequence_matches_detectron2() -> None:
    calls: list = []
    trainer = run("simple", [Recorder("A", calls), Recorder("B", calls)], 2, 6)
    # detectron2-oracle.json sequences[1]: start 2, max 6, hooks A and B
    assert calls[:4] == [
        ("A", "before_train", 2),
        ("B", "before_train", 2),
        ("A", "before_step", 2),
        ("B", "before_step", 2),
    ]
    assert calls[-4:] == [
        ("A", "after_step", 5),
        ("B", "after_step", 5),
        ("A", "after_train", 6),
        ("B", "after_train", 6),
    ]
    assert calls == expected_calls(["A", "B"], 2, 6)
    assert len(calls) == 28
    assert (trainer.start_iter, trainer.iter) == (2, 6)


def test_run_started_at_three() -> None:
    calls: list = []
    trainer = run("simple", [Recorder("A", calls)], 3, 5)
    assert calls == [
        ("A", "before_train", 3),
        ("A", "before_step", 3), ("A", "after_backward", 3), ("A", "after_step", 3),
        ("A", "before_step", 4), ("A", "after_backward", 4), ("A", "after_step", 4),
        ("A", "after_train", 5),
    ]  # fmt: skip
    assert trainer.pl_trainer.global_step == 5


@pytest.mark.parametrize("mode", MODES)
def test_model_failure_runs_after_train_at_failing_iteration(mode: str) -> None:
    calls: list = []
    with pytest.raises(RuntimeError, match="model failed"):
        run(mode, [Recorder("A", calls)], 0, 5, model=SimpleModel(fail_at_call=3))
    # detectron2-oracle.json sequences[2]: model fails at its 4th call (iteration 3)
    assert calls == [
        ("A", "before_train", 0),
        ("A", "before_step", 0), ("A", "after_backward", 0), ("A", "after_step", 0),
        ("A", "before_step", 1), ("A", "after_backward", 1), ("A", "after_step", 1),
        ("A", "before_step", 2), ("A", "after_backward", 2), ("A", "after_step", 2),
        ("A", "before_step", 3),
        ("A", "after_train", 3),
    ]  # fmt: skip
    assert not has_event_storage(), "the storage must be closed after a failed run"


def test_model_failure_at_iteration_two() -> None:
    calls: list = []
    trainer = SimpleTrainer(
        SimpleModel(fail_at_call=2), infinite_loader(), torch.optim.SGD(nn.Linear(1, 1).parameters(), 0.1)
    )
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), 0.1)
    trainer.register_hooks([Recorder("A", calls)])
    with pytest.raises(RuntimeError, match="model failed"):
        trainer.train(0, 5)
    assert calls[-2:] == [("A", "before_step", 2), ("A", "after_train", 2)]
    assert trainer.iter == 2


def test_hook_failure_sequence_matches_detectron2() -> None:
    calls: list = []
    with pytest.raises(RuntimeError, match="hook failed"):
        run("simple", [Recorder("A", calls, fail_in=("after_step", 1))], 0, 5)
    # detectron2-oracle.json sequences[3]
    assert calls == [
        ("A", "before_train", 0),
        ("A", "before_step", 0), ("A", "after_backward", 0), ("A", "after_step", 0),
        ("A", "before_step", 1), ("A", "after_backward", 1), ("A", "after_step", 1),
        ("A", "after_train", 1),
    ]  # fmt: skip


def test_finished_run_resumed_runs_no_iteration() -> None:
    calls: list = []
    model = SimpleModel()
    trainer = run("simple", [Recorder("A", calls)], 4, 4, model=model)
    # detectron2-oracle.json sequences[4]: start_iter == max_iter == 4
    assert calls == [("A", "before_train", 4), ("A", "after_train", 5)]
    assert trainer.iter == 5
    assert model.calls == 0
    assert not has_event_storage()


def test_hooks_interleaved_with_lightning_callbacks_in_list_order() -> None:
    calls: list = []
    hooks = [
        Recorder("A", calls),
        LightningRecorder("L1", calls),
        DuckRecorder("D", calls),
        LightningRecorder("L2", calls),
    ]
    run("simple", hooks, 0, 2)
    # At each step, every callback's methods in the list order; Lightning sees global_step, which is iter in
    # before_step and iter + 1 in after_step. before_train/after_train are detectron2's TrainerBase methods (every
    # hook, in order), called by the run before Lightning's own on_train_start/on_train_end callbacks.
    assert calls == [
        ("A", "before_train", 0), ("D", "before_train", 0), ("L1", "on_train_start", 0), ("L2", "on_train_start", 0),
        ("A", "before_step", 0), ("L1", "on_train_batch_start", 0), ("D", "before_step", 0), ("L2", "on_train_batch_start", 0),
        ("A", "after_backward", 0), ("L1", "on_after_backward", 0), ("L2", "on_after_backward", 0),
        ("A", "after_step", 0), ("L1", "on_train_batch_end", 1), ("D", "after_step", 0), ("L2", "on_train_batch_end", 1),
        ("A", "before_step", 1), ("L1", "on_train_batch_start", 1), ("D", "before_step", 1), ("L2", "on_train_batch_start", 1),
        ("A", "after_backward", 1), ("L1", "on_after_backward", 1), ("L2", "on_after_backward", 1),
        ("A", "after_step", 1), ("L1", "on_train_batch_end", 2), ("D", "after_step", 1), ("L2", "on_train_batch_end", 2),
        ("A", "after_train", 2), ("D", "after_train", 2), ("L1", "on_train_end", 2), ("L2", "on_train_end", 2),
    ]  # fmt: skip


def test_same_sequence_in_a_user_built_lightning_trainer() -> None:
    simple_calls: list = []
    lightning_calls: list = []
    run(
        "simple",
        [Recorder("A", simple_calls), LightningRecorder("L", simple_calls), DuckRecorder("D", simple_calls)],
        0,
        3,
    )
    model = SimpleModel()
    module = D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    callbacks = [
        Recorder("A", lightning_calls),
        LightningRecorder("L", lightning_calls),
        HookCallback(DuckRecorder("D", lightning_calls)),
    ]
    lightning_trainer(3, callbacks).fit(module)
    assert lightning_calls == simple_calls
    assert len(simple_calls) == 3 + 3 * 8 + 3


# ---------------------------------------------------------------- register_hooks / trainer view
def test_register_hooks_filters_none_appends_and_sets_weak_proxy() -> None:
    trainer = SimpleTrainer(SimpleModel(), infinite_loader(), torch.optim.SGD(SimpleModel().parameters(), 0.1))
    a, b = HookBase(), HookBase()
    trainer.register_hooks([a, None])
    trainer.register_hooks([None, b])
    assert trainer._hooks == [a, b]
    assert isinstance(a.trainer, weakref.ProxyType)
    assert a.trainer.iter == trainer.iter
    a.trainer.iter = 7
    assert trainer.iter == 7


def test_register_hooks_rejects_non_hooks_naming_them() -> None:
    trainer = SimpleTrainer(SimpleModel(), infinite_loader(), torch.optim.SGD(SimpleModel().parameters(), 0.1))
    with pytest.raises(TypeError, match=r"register_hooks\(\) got 42 \(int\), which is neither a hook"):
        trainer.register_hooks([HookBase(), 42])
    with pytest.raises(TypeError, match=r"object is not a hook: it has none of the methods before_train"):
        HookCallback(object())


def test_hooks_see_trainer_attributes_under_both_entry_points() -> None:
    seen: dict = {}

    class Probe(HookBase):
        def before_step(self) -> None:
            t = self.trainer
            seen.setdefault("attrs", (t.start_iter, t.max_iter, t.model, t.optimizer, t.data_loader))
            seen["storage_iter"] = t.storage.iter
            assert get_event_storage() is t.storage

    for mode in MODES:
        seen.clear()
        trainer = run(mode, [Probe()], 0, 3)
        start, max_iter, model, optimizer, loader = seen["attrs"]
        assert (start, max_iter) == (0, 3)
        assert model is trainer.model and optimizer is trainer.optimizer and loader is trainer.data_loader
        assert seen["storage_iter"] == 2


def test_hook_keeps_its_own_log_attribute() -> None:
    """Lightning assigns ``callback.log`` on every callback; a detectron2 hook's own ``self.log`` survives."""

    class Logging(HookBase):
        def __init__(self) -> None:
            self.log = []

        def after_step(self) -> None:
            self.log.append(self.trainer.iter)

    hook = Logging()
    run("simple", [hook], 0, 3)
    assert hook.log == [0, 1, 2]


# ---------------------------------------------------------------- run_step
@pytest.mark.parametrize("mode", MODES)
def test_losses_data_time_and_total_loss_land_at_the_right_iteration(mode: str) -> None:
    trainer = run(mode, [], 0, 3, model=SimpleModel(two_losses=True))
    storage = trainer.storage
    for key in ("loss_a", "loss_b", "total_loss", "data_time", "rank_data_time"):
        assert [it for _, it in storage.history(key).values()] == [0, 1, 2], key
    a, b, total = (storage.history(k).latest() for k in ("loss_a", "loss_b", "total_loss"))
    assert total == pytest.approx(a + b)
    assert storage.history("data_time").latest() >= 0.0


def test_single_loss_puts_only_total_loss() -> None:
    trainer = run("simple", [], 0, 2)
    assert "loss" not in trainer.storage.histories()
    assert "total_loss" in trainer.storage.histories()


def test_nan_loss_raises_with_the_iteration() -> None:
    class NaNAt2(SimpleModel):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(x)
            if self.calls == 3:
                return {"loss": out["loss"] * float("nan")}
            return out

    calls: list = []
    with pytest.raises(
        FloatingPointError, match=r"Loss became infinite or NaN at iteration=2!\nloss_dict = \{'loss': nan\}"
    ):
        run("simple", [Recorder("A", calls)], 0, 5, model=NaNAt2())
    assert calls[-1] == ("A", "after_train", 2)


def test_gather_metric_period_and_async_writes() -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    trainer = SimpleTrainer(model, infinite_loader(), opt, gather_metric_period=5)
    trainer.train(0, 50)
    # detectron2 test oracle: history iterations 4, 9, ..., 49
    assert [it for _, it in trainer.storage.history("total_loss").values()] == list(range(4, 50, 5))
    trainer = SimpleTrainer(model, infinite_loader(), opt, async_write_metrics=True)
    trainer.train(0, 50)
    assert [it for _, it in trainer.storage.history("total_loss").values()] == list(range(50))


def test_zero_grad_before_forward_gives_same_update() -> None:
    results = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = SimpleModel()
        trainer = SimpleTrainer(
            model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1), zero_grad_before_forward=flag
        )
        trainer.train(0, 3)
        results.append(model.mod.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1])


def test_training_really_updates_the_weights_like_a_plain_loop() -> None:
    torch.manual_seed(0)
    reference = SimpleModel()
    model = SimpleModel()
    model.load_state_dict(reference.state_dict())
    ref_opt = torch.optim.SGD(reference.parameters(), 0.1, momentum=0.9)
    for batch in [b for b, _ in zip(infinite_loader(), range(5), strict=False)]:
        loss = sum(reference(batch).values())
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1, momentum=0.9))
    trainer.train(0, 5)
    torch.testing.assert_close(model.mod.weight, reference.mod.weight)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (
            [torch.tensor(1.0)],
            r"must return a dict of scalar loss tensors \(or one scalar tensor\); at iteration 0 it returned list",
        ),
        ({}, r"returned dict \(empty\)"),
        ({"loss": 1.0}, r"at iteration 0 loss 'loss' is float"),
        ({"loss": torch.ones(2)}, r"at iteration 0 loss 'loss' is shape \(2,\)"),
        (torch.ones(3), r"returned a tensor of shape \(3,\)"),
    ],
)
def test_model_returning_wrong_type_is_a_clear_error(output: object, message: str) -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> object:
            return output

    model = Bad()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(TypeError, match=message):
        trainer.train(0, 2)


def test_scalar_tensor_output_becomes_total_loss() -> None:
    class TensorModel(SimpleModel):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x)["loss"]

    trainer = run("simple", [], 0, 2, model=TensorModel())
    assert [it for _, it in trainer.storage.history("total_loss").values()] == [0, 1]


@pytest.mark.parametrize(
    ("start", "stop", "message"),
    [
        (-1, 3, "start_iter must be an int >= 0, got -1"),
        (0, -2, "max_iter must be an int >= 0, got -2"),
        (0, 2.5, "max_iter must be an int >= 0, got 2.5"),
    ],
)
def test_bad_iteration_bounds(start: object, stop: object, message: str) -> None:
    trainer = SimpleTrainer(SimpleModel(), infinite_loader(), torch.optim.SGD(SimpleModel().parameters(), 0.1))
    with pytest.raises(ValueError, match=message):
        trainer.train(start, stop)  # type: ignore[arg-type]


def test_constructor_validation() -> None:
    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str"):
        SimpleTrainer("model", infinite_loader(), opt)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer, got dict"):
        SimpleTrainer(model, infinite_loader(), {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gather_metric_period must be an int >= 1, got 0"):
        SimpleTrainer(model, infinite_loader(), opt, gather_metric_period=0)
    with pytest.raises(ValueError, match=r"precision must be torch\.float16 or torch\.bfloat16"):
        AMPTrainer(model, infinite_loader(), opt, precision=torch.float32)


def test_eval_mode_model_is_rejected_as_detectron2() -> None:
    class Evaluator(HookBase):
        def before_step(self) -> None:
            self.trainer.model.eval()

    with pytest.raises(AssertionError, match=r"\[SimpleTrainer\] model was changed to eval mode!"):
        run("simple", [Evaluator()], 0, 2)


# ---------------------------------------------------------------- data loaders
def test_finite_loader_is_iterated_again_without_disturbing_iterations() -> None:
    seen = []

    class Tap(SimpleModel):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(float(x[0, 0]))
            return super().forward(x)

    batches = [torch.full((3, 3), float(i)) for i in range(3)]
    model = Tap()
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), 0.1))
    calls: list = []
    trainer.register_hooks([Recorder("A", calls)])
    trainer.train(0, 7)
    assert seen == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]
    assert calls == expected_calls(["A"], 0, 7)


def test_empty_or_exhausted_loader_is_a_clear_error() -> None:
    model = SimpleModel()
    trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(RuntimeError, match=r"the data loader \(list\) yields no data"):
        trainer.train(0, 2)
    one_shot = iter([torch.rand(3, 3)])
    trainer = SimpleTrainer(model, one_shot, torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(RuntimeError, match="exhausted one-shot iterator"):
        trainer.train(0, 3)


def test_reset_data_loader_and_train_twice() -> None:
    # detectron2 test_simple_trainer_reset_dataloader
    model = SimpleModel()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    trainer.train(0, 10)
    trainer.reset_data_loader(lambda: infinite_loader(1))
    trainer.train(0, 10)
    assert model.calls == 20
    assert trainer.iter == 10


# ---------------------------------------------------------------- state_dict
def test_state_dict_round_trip_keys_hooks_by_qualname() -> None:
    class Stateful(HookBase):
        def __init__(self, value: int = 0) -> None:
            self.value = value

        def state_dict(self) -> dict:
            return {"value": self.value}

        def load_state_dict(self, state: dict) -> None:
            self.value = state["value"]

    model = SimpleModel()
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    trainer = SimpleTrainer(model, infinite_loader(), opt)
    trainer.register_hooks([Stateful(5), HookBase()])
    trainer.train(0, 3)
    sd = trainer.state_dict()
    qualname = Stateful.__qualname__
    assert sd["iteration"] == 3
    assert sd["hooks"] == {qualname: {"value": 5}}
    assert set(sd) == {"iteration", "hooks", "optimizer", "rng"}

    fresh_model = SimpleModel()
    fresh = SimpleTrainer(fresh_model, infinite_loader(), torch.optim.SGD(fresh_model.parameters(), 0.1, momentum=0.9))
    hook = Stateful()
    fresh.register_hooks([hook])
    fresh.load_state_dict(sd)
    assert fresh.iter == 3
    assert hook.value == 5
    assert fresh.optimizer.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_load_state_dict_warns_about_unknown_hooks(caplog: pytest.LogCaptureFixture) -> None:
    trainer = SimpleTrainer(SimpleModel(), infinite_loader(), torch.optim.SGD(SimpleModel().parameters(), 0.1))
    trainer.load_state_dict(
        {"iteration": 4, "hooks": {"Missing": {"a": 1}}, "optimizer": trainer.optimizer.state_dict()}
    )
    assert trainer.iter == 4
    assert "Cannot find the hook 'Missing', its state_dict is ignored." in caplog.text


# ---------------------------------------------------------------- AMP
def test_amp_trainer_bf16_on_cpu_autocasts_the_forward() -> None:
    dtypes = []

    class Probe(SimpleModel):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            dtypes.append(self.mod(x).dtype)
            return super().forward(x)

    model = Probe()
    trainer = AMPTrainer(
        model,
        infinite_loader(),
        torch.optim.SGD(model.parameters(), 0.1),
        precision=torch.bfloat16,
        log_grad_scaler=True,
    )
    before = model.mod.weight.detach().clone()
    trainer.train(0, 3)
    assert dtypes == [torch.bfloat16] * 3
    assert not torch.equal(before, model.mod.weight)
    assert [it for _, it in trainer.storage.history("[metric]grad_scaler").values()] == [0, 1, 2]
    sd = trainer.state_dict()
    assert "grad_scaler" in sd and "optimizer" in sd
    with pytest.raises(KeyError, match="has no 'grad_scaler'"):
        trainer.load_state_dict({"iteration": 1, "optimizer": sd["optimizer"]})


# ---------------------------------------------------------------- D2LightningModule specifics
def test_user_run_step_override_keeps_working() -> None:
    """A detectron2-style subclass with its own run_step (raw backward, self.after_backward, optimizer.step)."""

    class MyTrainer(SimpleTrainer):
        def run_step(self) -> None:
            data = next(self._data_loader_iter)
            loss = sum(self.model(data).values()) * 2.0
            self.optimizer.zero_grad()
            loss.backward()
            self.after_backward()
            self.storage.put_scalar("my_loss", float(loss))
            self.optimizer.step()

    calls: list = []
    model = SimpleModel()
    trainer = MyTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    trainer.register_hooks([Recorder("A", calls)])
    trainer.train(0, 3)
    assert calls == expected_calls(["A"], 0, 3)
    assert [it for _, it in trainer.storage.history("my_loss").values()] == [0, 1, 2]
    assert trainer.pl_trainer.global_step == 3


def test_lightning_trainer_needs_max_steps() -> None:
    model = SimpleModel()
    module = D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(ValueError, match=r"create the Trainer with max_steps=N \(got max_steps=-1\)"):
        trainer.fit(module)


def test_module_constructor_errors() -> None:
    with pytest.raises(TypeError, match=r"needs a model and an optimizer \(or trainer=\); missing \['optimizer'\]"):
        D2LightningModule(SimpleModel())
    model = SimpleModel()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    with pytest.raises(TypeError, match="either \\(model, data_loader, optimizer\\) or trainer=, not both"):
        D2LightningModule(model, trainer=trainer)
    with pytest.raises(TypeError, match="trainer must be a d2lightning TrainerBase, got int"):
        D2LightningModule(trainer=3)  # type: ignore[arg-type]


def test_lightning_kwargs_cannot_take_what_train_owns() -> None:
    model = SimpleModel()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    trainer.lightning_kwargs = {"callbacks": [LearningRateMonitor()]}
    with pytest.raises(
        ValueError, match=r"lightning_kwargs\['callbacks'\] is not allowed: it comes from register_hooks"
    ):
        trainer.train(0, 2)


def test_lightning_callbacks_registered_as_hooks_work() -> None:
    model = SimpleModel()
    trainer = SimpleTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    from lightning.pytorch.loggers import CSVLogger

    lr_monitor = LearningRateMonitor(logging_interval="step")
    trainer.register_hooks([lr_monitor])
    trainer.lightning_kwargs = {"logger": CSVLogger("/tmp/d2l_test_lrmon", name="x"), "log_every_n_steps": 1}
    trainer.train(0, 3)
    assert trainer.pl_trainer.global_step == 3
    assert math.isclose(lr_monitor.lrs["lr-SGD"][-1], 0.1)


def test_keyboard_interrupt_propagates_and_sigint_handler_is_restored() -> None:
    class Interrupting(SimpleModel):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            if self.calls == 1:
                raise KeyboardInterrupt
            return super().forward(x)

    calls: list = []
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run("simple", [Recorder("A", calls)], 0, 4, model=Interrupting())
    assert signal.getsignal(signal.SIGINT) is before
    assert calls[-1] == ("A", "after_train", 1)


def test_trainer_level_overrides_run_once_per_event() -> None:
    events: list = []

    class MyTrainer(SimpleTrainer):
        def before_step(self) -> None:
            super().before_step()
            events.append(("before_step", self.iter))

        def after_train(self) -> None:
            super().after_train()
            events.append(("after_train", self.iter))

    model = SimpleModel()
    trainer = MyTrainer(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    calls: list = []
    trainer.register_hooks([Recorder("A", calls)])
    trainer.train(0, 2)
    assert events == [("before_step", 0), ("before_step", 1), ("after_train", 2)]
    assert calls == expected_calls(["A"], 0, 2)
    assert trainer.concurrent_executor._shutdown


def test_trainer_base_without_lightning_calls_hooks_directly() -> None:
    calls: list = []

    class Loop(TrainerBase):
        def run_step(self) -> None:
            pass

    trainer = Loop()
    trainer.register_hooks([Recorder("A", calls)])
    trainer.iter = 3
    trainer.before_train()
    trainer.after_backward()
    assert calls == [("A", "before_train", 3), ("A", "after_backward", 3)]


def test_failing_after_train_stops_the_later_hooks_as_detectron2() -> None:
    calls: list = []
    with pytest.raises(RuntimeError, match="hook failed"):
        run("simple", [Recorder("A", calls, fail_in=("after_train", 2)), Recorder("B", calls)], 0, 2)
    # detectron2's after_train loop stops at the failing hook: B.after_train is never called
    assert calls[-2:] == [("B", "after_step", 1), ("A", "after_train", 2)]
    assert not has_event_storage()


def test_empty_run_with_failing_before_train_still_calls_every_after_train() -> None:
    calls: list = []
    with pytest.raises(RuntimeError, match="hook failed"):
        run("simple", [Recorder("A", calls), Recorder("B", calls, fail_in=("before_train", 2))], 2, 2)
    # detectron2: the exception leaves iter at start_iter; after_train runs in its `finally` for every hook
    assert calls == [
        ("A", "before_train", 2), ("B", "before_train", 2),
        ("A", "after_train", 2), ("B", "after_train", 2),
    ]  # fmt: skip
    assert not has_event_storage()


def test_train_zero_to_zero_calls_before_and_after_train() -> None:
    calls: list = []
    trainer = run("simple", [Recorder("A", calls)], 0, 0)
    assert calls == [("A", "before_train", 0), ("A", "after_train", 1)]
    assert trainer.iter == 1
