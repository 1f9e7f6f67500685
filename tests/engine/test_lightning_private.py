"""Each use of Lightning's private API (``d2lightning/engine/lightning/_private.py``) against the installed Lightning.

When a Lightning release moves one of these names, the test of that function fails here, naming it, instead of a
training run failing somewhere deep inside. The last test checks that no other module of the package touches a
private attribute of a Lightning object.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from d2lightning.engine import D2LightningModule
from d2lightning.engine.lightning import _private
from tests.helpers import REPO
from tests.helpers.training import PlainModule, SimpleModel, infinite_loader, lightning_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class Capture(pl.Callback):
    """Runs ``fn(trainer)`` in ``on_train_start`` and keeps its result."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.result: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.result = self.fn(trainer)


def module() -> D2LightningModule:
    model = SimpleModel()
    return D2LightningModule(model, infinite_loader(), torch.optim.SGD(model.parameters(), 0.1))


def test_start_at_iteration_sets_global_step_and_the_loggers_step() -> None:
    trainer = lightning_trainer(7)
    _private.start_at_iteration(trainer, 4)
    loop = trainer.fit_loop.epoch_loop
    assert loop.manual_optimization.optim_step_progress.total.completed == 4
    assert loop._batches_that_stepped == 4
    steps: list[int] = []
    trainer.callbacks.append(Capture(lambda t: steps.append(t.global_step)))
    trainer.fit(module())
    assert steps == [4]  # a manual-optimization fit starts at the iteration given
    assert trainer.global_step == 7


def test_count_iteration_adds_one_to_global_step() -> None:
    capture = Capture(lambda t: t)
    trainer = lightning_trainer(2, [capture])
    trainer.fit(module())
    before = trainer.global_step
    _private.count_iteration(trainer)
    assert trainer.global_step == before + 1


class _Seen(pl.Callback):
    """Records the hook points Lightning calls, with the module's ``_current_fx_name`` there."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append(("on_after_backward", pl_module._current_fx_name))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.calls.append(("on_before_optimizer_step", pl_module._current_fx_name))


def test_call_after_backward_and_before_optimizer_step_dispatch_as_lightning_does() -> None:
    seen = _Seen()
    m = module()
    module_calls: list[str] = []
    m.on_after_backward = lambda: module_calls.append("after_backward")  # type: ignore[method-assign]
    m.on_before_optimizer_step = lambda opt: module_calls.append("before_optimizer_step")  # type: ignore[method-assign]
    optimizer = m.d2_trainer.optimizer
    trainer = lightning_trainer(1, [seen])
    trainer.fit(m)
    seen.calls.clear()
    module_calls.clear()
    _private.call_after_backward(trainer)
    _private.call_before_optimizer_step(trainer, optimizer)
    assert seen.calls == [
        ("on_after_backward", "on_after_backward"),
        ("on_before_optimizer_step", "on_before_optimizer_step"),
    ]
    assert module_calls == ["after_backward", "before_optimizer_step"]


def test_before_batch_transfer_calls_the_datamodules_hook_when_the_module_has_none() -> None:
    class DM(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(torch.rand(4, 3), batch_size=2)

        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch + 1

    plain = PlainModule()
    capture = Capture(lambda t: _private.before_batch_transfer(t.lightning_module, torch.zeros(1)))
    lightning_trainer(1, [capture]).fit(plain, datamodule=DM())
    assert torch.equal(capture.result, torch.ones(1))  # the datamodule's hook
    capture = Capture(lambda t: _private.before_batch_transfer(t.lightning_module, torch.zeros(1)))
    lightning_trainer(1, [capture]).fit(plain, train_dataloaders=DataLoader(torch.rand(4, 3), batch_size=2))
    assert torch.equal(capture.result, torch.zeros(1))  # the module's default hook: the batch as it is


def test_dump_training_state_is_what_save_checkpoint_writes(tmp_path: Path) -> None:
    capture = Capture(lambda t: sorted(_private.dump_training_state(t)))
    trainer = lightning_trainer(2, [capture])
    trainer.fit(module())
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert set(capture.result) == set(saved)
    assert {"state_dict", "loops", "optimizer_states", "global_step", "callbacks"} <= set(saved)


def test_callback_metrics_of_is_the_dict_behind_callback_metrics() -> None:
    def write_then_read(trainer: pl.Trainer) -> Any:
        _private.callback_metrics_of(trainer)["written"] = torch.tensor(1.0)
        return trainer.callback_metrics.get("written")

    capture = Capture(write_then_read)
    lightning_trainer(2, [capture]).fit(module())
    assert capture.result == 1.0


def test_monitor_after_evaluation_switches_the_monitors_to_after_validation_and_back() -> None:
    stop = EarlyStopping(monitor="x")
    best = ModelCheckpoint(monitor="x")
    given = ModelCheckpoint(monitor="x", save_on_train_epoch_end=True)
    undos = [_private.monitor_after_evaluation(cb) for cb in (stop, best, given)]
    assert stop._check_on_train_epoch_end is False
    assert best._save_on_train_epoch_end is False
    assert given._save_on_train_epoch_end is True  # the user's choice stays
    for undo in undos:
        undo()
    assert stop._check_on_train_epoch_end is None
    assert best._save_on_train_epoch_end is None
    assert given._save_on_train_epoch_end is True


@pytest.mark.parametrize(
    ("how", "expected"), [("module", "module"), ("loaders", "loaders"), ("datamodule", "datamodule")]
)
def test_train_data_source_tells_where_the_training_data_comes_from(how: str, expected: str) -> None:
    plain = PlainModule()
    loader = DataLoader(torch.rand(8, 3), batch_size=4)

    class DM(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return loader

    dm = DM()
    capture = Capture(lambda t: _private.train_data_source(t))
    trainer = lightning_trainer(1, [capture])
    if how == "module":
        trainer.fit(plain)
    elif how == "loaders":
        trainer.fit(plain, train_dataloaders=loader)
    else:
        trainer.fit(plain, datamodule=dm)
    assert capture.result is {"module": plain, "loaders": loader, "datamodule": dm}[expected]


def test_val_data_defined_sees_validation_data_before_it_is_loaded() -> None:
    capture = Capture(lambda t: _private.val_data_defined(t))
    lightning_trainer(1, [capture], num_sanity_val_steps=0).fit(PlainModule())
    assert capture.result is False
    capture = Capture(lambda t: _private.val_data_defined(t))
    lightning_trainer(1, [capture], num_sanity_val_steps=0, limit_val_batches=0).fit(
        PlainModule(), val_dataloaders=DataLoader(torch.rand(4, 3), batch_size=2)
    )
    assert capture.result is True


def test_resolve_last_checkpoint_with_falls_back_only_when_lightning_has_none(tmp_path: Path) -> None:
    trainer = lightning_trainer(1)
    connector = trainer._checkpoint_connector
    fn = trainer.state.fn = TrainerFn.FITTING
    found: list[str | None] = [str(tmp_path / "d2.pth")]
    undo = _private.resolve_last_checkpoint_with(trainer, lambda: found[0])
    assert connector._parse_ckpt_path(fn, "last", model_provided=True, model_connected=False) == found[0]
    assert connector._parse_ckpt_path(fn, None, model_provided=True, model_connected=False) is None
    found[0] = None
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        assert connector._parse_ckpt_path(fn, "last", model_provided=True, model_connected=False) is None
    undo()  # Lightning's own method again
    assert "_parse_ckpt_path" not in vars(connector)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert connector._parse_ckpt_path(fn, "last", model_provided=True, model_connected=False) is None
    assert any("no last checkpoint available" in str(w.message) for w in caught)


class _PrivateLightningUse(ast.NodeVisitor):
    """``x._name`` on an object whose expression mentions a Lightning trainer, module, callback or connector."""

    SUSPECTS = ("trainer", "fit_loop", "connector", "strategy", "callback", "pl_module", "epoch_loop")

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = ast.unparse(node.value)
            if any(s in owner.lower() for s in self.SUSPECTS) and not owner.startswith(("self", "cls")):
                self.found.append((node.lineno, f"{owner}.{node.attr}"))
        self.generic_visit(node)


def test_no_other_module_touches_lightnings_private_api() -> None:
    allowed = {REPO / "d2lightning" / "engine" / "lightning" / "_private.py"}
    offenders = []
    for path in sorted((REPO / "d2lightning").rglob("*.py")):
        if path in allowed:
            continue
        visitor = _PrivateLightningUse()
        visitor.visit(ast.parse(path.read_text()))
        offenders += [f"{path.relative_to(REPO)}:{line}: {expr}" for line, expr in visitor.found]
    # our own trainers' private attributes (``_hooks``, ``_trainer``, ``_run``...) are ours, not Lightning's
    ours = ("._hooks", "._trainer", "._fetch")  # our own trainers (detectron2's names, and the step's fetch)
    assert [o for o in offenders if not o.endswith(ours)] == []
