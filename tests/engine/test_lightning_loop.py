"""A fit of detectron2's trainers runs in Lightning's own loop, and leaves the Trainer as it found it.

What a Lightning user sees with ``D2LightningModule`` and with ``SimpleTrainer.train`` is what Lightning gives a
plain LightningModule under the same Trainer: validation at the same steps, progress bars that work, the same
``trainer.callbacks`` and ``trainer.profiler`` in every hook of a step. Every trainer steps through one seam, so the
Trainer's options reach all of them (gradient clipping, ``on_before_optimizer_step``). Whatever a fit changes on the
user's Trainer or in the process is undone when it ends — also when it fails.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from torch import nn
from torch.utils.data import DataLoader

from d2lightning.engine import AMPTrainer, D2LightningModule, SimpleTrainer
from tests.helpers.lightning_data import DataModule, Indexed, IndexModel, endless, module_without_loader
from tests.helpers.training import SimpleModel, infinite_loader, lightning_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class ValidationSteps(pl.Callback):
    """Records ``global_step`` at every validation run (sanity checks excluded)."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_validation_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.steps.append(trainer.global_step)


class PlainIndexModule(pl.LightningModule):
    """A Lightning user's own module over the same data: the reference for Lightning's loop."""

    def __init__(self) -> None:
        super().__init__()
        self.model = IndexModel()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.model(batch)["loss_mse"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.model.eval()
        self.model(batch)
        self.model.train()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), 0.1)


def validation_steps(module: pl.LightningModule, **fit: Any) -> list[int]:
    recorder = ValidationSteps()
    trainer = lightning_trainer(
        60, [recorder], val_check_interval=20, check_val_every_n_epoch=None, num_sanity_val_steps=0
    )
    trainer.fit(module, **fit)
    assert trainer.global_step == 60
    return recorder.steps


# ---------------------------------------------------------------- Lightning's loop
def test_validation_runs_at_the_steps_of_a_plain_lightning_module() -> None:
    datamodule = DataModule(n=112, batch_size=2, val=True)  # 56 batches per epoch
    expected = validation_steps(PlainIndexModule(), datamodule=datamodule)
    assert expected == [20, 40, 60]
    assert validation_steps(module_without_loader(), datamodule=DataModule(n=112, batch_size=2, val=True)) == expected


def test_validation_on_the_modules_own_endless_loader_runs_every_n_steps() -> None:
    model = IndexModel()
    module = D2LightningModule(model, endless(), torch.optim.SGD(model.parameters(), 0.1))
    assert validation_steps(module, val_dataloaders=DataLoader(Indexed(4), batch_size=2)) == [20, 40, 60]


class ThreadErrors:
    """Collects exceptions raised in any thread (``threading.excepthook``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.errors: list[str] = []
        monkeypatch.setattr(threading, "excepthook", self._hook)

    def _hook(self, args: Any) -> None:
        self.errors.append(f"{args.exc_type.__name__}: {args.exc_value}")


@pytest.mark.parametrize("bar", [RichProgressBar, TQDMProgressBar])
@pytest.mark.parametrize("entry", ["module", "simple_trainer"])
def test_progress_bars_run_without_an_error_in_any_thread(
    bar: type[pl.Callback], entry: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = ThreadErrors(monkeypatch)
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    if entry == "module":
        trainer = lightning_trainer(6, [bar()], enable_progress_bar=True)
        trainer.fit(D2LightningModule(model, infinite_loader(), optimizer))
        assert trainer.global_step == 6
    else:
        d2_trainer = SimpleTrainer(model, infinite_loader(), optimizer)
        d2_trainer.register_hooks([bar()])
        d2_trainer.lightning_kwargs = {"enable_progress_bar": True}
        d2_trainer.train(0, 6)
        assert d2_trainer.iter == 6
    assert threads.errors == []


_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_train_batch_end",
)


class TrainerState(pl.Callback):
    """Records, in every hook of a step, which callbacks and profiler the Trainer has."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, tuple[int, ...], int]] = []

    def _record(self, hook: str, trainer: pl.Trainer) -> None:
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        self.seen.append((hook, trainer.global_step, tuple(map(id, callbacks)), id(trainer.profiler)))

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record("on_train_batch_start", trainer)

    def on_before_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record("on_before_backward", trainer)

    def on_after_backward(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record("on_after_backward", trainer)

    def on_before_optimizer_step(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record("on_before_optimizer_step", trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._record("on_train_batch_end", trainer)


@pytest.mark.parametrize("entry", ["module", "simple_trainer"])
def test_the_trainers_callbacks_and_profiler_are_the_same_in_every_hook_of_a_step(entry: str) -> None:
    state = TrainerState()
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    if entry == "module":
        lightning_trainer(3, [state]).fit(D2LightningModule(model, infinite_loader(), optimizer))
    else:
        d2_trainer = SimpleTrainer(model, infinite_loader(), optimizer)
        d2_trainer.register_hooks([state])
        d2_trainer.train(0, 3)
    assert [hook for hook, *_ in state.seen] == list(_STEP_HOOKS) * 3
    assert len({(callbacks, profiler) for _, _, callbacks, profiler in state.seen}) == 1
    assert len(state.seen[0][2]) >= 2  # the run and this callback, at least


# ---------------------------------------------------------------- one step seam
class Steep(nn.Module):
    """One weight vector whose loss gradient has norm 1e4 * sqrt(4) = 2e4."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4))

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return {"loss": 1e4 * self.weight.sum() + 0.0 * batch.sum()}


class OwnStep(SimpleTrainer):
    """A detectron2-style subclass with its own run_step: plain backward and optimizer.step()."""

    def run_step(self) -> None:
        data = next(self._data_loader_iter)
        losses = sum(self.model(data).values())
        self.optimizer.zero_grad()
        losses.backward()  # type: ignore[union-attr]
        self.after_backward()
        self.optimizer.step()


class CountBeforeOptimizerStep(pl.Callback):
    def __init__(self) -> None:
        self.calls: list[int] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.calls.append(trainer.global_step)


def _steep_trainer(kind: str) -> SimpleTrainer:
    model = Steep()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    if kind == "simple":
        return SimpleTrainer(model, infinite_loader(), optimizer)
    if kind == "amp":
        return AMPTrainer(model, infinite_loader(), optimizer, precision=torch.bfloat16)
    return OwnStep(model, infinite_loader(), optimizer)


@pytest.mark.parametrize("kind", ["simple", "amp", "own_run_step"])
@pytest.mark.parametrize("entry", ["module", "simple_trainer"])
def test_the_trainers_gradient_clipping_reaches_every_trainer(kind: str, entry: str) -> None:
    d2_trainer = _steep_trainer(kind)
    weight = d2_trainer.model.weight
    counter = CountBeforeOptimizerStep()
    if entry == "module":
        trainer = lightning_trainer(1, [counter], gradient_clip_val=1e-3)
        trainer.fit(D2LightningModule(trainer=d2_trainer))
    else:
        d2_trainer.register_hooks([counter])
        d2_trainer.lightning_kwargs = {"gradient_clip_val": 1e-3}
        d2_trainer.train(0, 1)
    update = weight.detach()  # from zeros, lr 1: the weights are minus the applied gradient
    assert update.norm().item() == pytest.approx(1e-3, rel=1e-3)  # 2e4 unclipped
    assert counter.calls == [0]  # Lightning's on_before_optimizer_step, once per iteration


def test_amp_trainer_under_a_trainer_with_its_own_mixed_precision_is_refused() -> None:
    d2_trainer = _steep_trainer("amp")
    trainer = lightning_trainer(1, precision="bf16-mixed")
    with pytest.raises(ValueError, match=r"AMPTrainer.*precision='bf16-mixed'.*'32-true'"):
        trainer.fit(D2LightningModule(trainer=d2_trainer))


# ---------------------------------------------------------------- the Trainer is left as it was
def _settings(trainer: pl.Trainer) -> dict[str, Any]:
    return {
        "gradient_clip_val": trainer.gradient_clip_val,
        "gradient_clip_algorithm": trainer.gradient_clip_algorithm,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "callbacks": list(trainer.callbacks),  # type: ignore[attr-defined]
    }


class FailAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("stop here")


@pytest.mark.parametrize("ending", ["no_data", "fails_in_step_2", "finishes"])
def test_a_fit_leaves_the_trainer_and_the_warning_filters_as_they_were(ending: str) -> None:
    model = SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    loader = None if ending == "no_data" else infinite_loader()
    module = D2LightningModule(model, loader, optimizer)
    callbacks = [FailAt(2)] if ending == "fails_in_step_2" else []
    trainer = lightning_trainer(4, callbacks, gradient_clip_val=0.5, accumulate_grad_batches=2)
    before = _settings(trainer)
    filters = list(warnings.filters)
    hooks_before = list(optimizer._optimizer_step_pre_hooks)
    if ending == "no_data":
        with pytest.raises(ValueError, match="No training data"):
            trainer.fit(module)
    elif ending == "fails_in_step_2":
        with pytest.raises(RuntimeError, match="stop here"):
            trainer.fit(module)
        assert trainer.global_step == 2
    else:
        trainer.fit(module)
        assert trainer.global_step == 4
    assert _settings(trainer) == before
    assert warnings.filters == filters
    assert list(optimizer._optimizer_step_pre_hooks) == hooks_before
    assert module.d2_trainer.accumulate_grad_batches == 1


def test_a_trainer_fits_again_after_a_failed_fit() -> None:
    model = SimpleModel()
    module = D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))
    trainer = lightning_trainer(3, [FailAt(1)])
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit(module)
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, FailAt)]  # type: ignore[attr-defined]
    trainer.fit(module)
    assert trainer.global_step == 3
    assert module.d2_trainer.iter == 3
