"""Each use of Lightning's private API (``d2lightning/engine/_lightning.py``) against the installed Lightning.

When a Lightning release moves one of these names, the test of that function fails here, naming it, instead of a
training run failing somewhere deep inside. The last test checks that no other module of the package touches a
private attribute of a Lightning object.
"""

from __future__ import annotations

import ast
import csv
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from d2lightning.engine import D2LightningModule, _lightning
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
    _lightning.start_at_iteration(trainer, 4)
    loop = trainer.fit_loop.epoch_loop
    assert loop.manual_optimization.optim_step_progress.total.completed == 4
    assert loop._batches_that_stepped == 4
    steps: list[int] = []
    trainer.callbacks.append(Capture(lambda t: steps.append(t.global_step)))
    trainer.fit(module())
    assert steps == [4]  # a manual-optimization fit starts at the iteration given
    assert trainer.global_step == 7


def test_iteration_counter_adds_one_to_global_step() -> None:
    capture = Capture(lambda t: _lightning.iteration_counter(t))
    trainer = lightning_trainer(2, [capture])
    trainer.fit(module())
    before = trainer.global_step
    capture.result()
    assert trainer.global_step == before + 1


def test_before_batch_transfer_calls_the_datamodules_hook_when_the_module_has_none() -> None:
    class DM(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(torch.rand(4, 3), batch_size=2)

        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch + 1

    plain = PlainModule()
    capture = Capture(lambda t: _lightning.before_batch_transfer(t.lightning_module, torch.zeros(1)))
    lightning_trainer(1, [capture]).fit(plain, datamodule=DM())
    assert torch.equal(capture.result, torch.ones(1))  # the datamodule's hook
    capture = Capture(lambda t: _lightning.before_batch_transfer(t.lightning_module, torch.zeros(1)))
    lightning_trainer(1, [capture]).fit(plain, train_dataloaders=DataLoader(torch.rand(4, 3), batch_size=2))
    assert torch.equal(capture.result, torch.zeros(1))  # the module's default hook: the batch as it is


def test_dump_training_state_is_what_save_checkpoint_writes(tmp_path: Path) -> None:
    capture = Capture(lambda t: sorted(_lightning.dump_training_state(t)))
    trainer = lightning_trainer(2, [capture])
    trainer.fit(module())
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert set(capture.result) == set(saved)
    assert {"state_dict", "loops", "optimizer_states", "global_step", "callbacks"} <= set(saved)


def test_callback_metrics_of_is_the_dict_behind_callback_metrics() -> None:
    def write_then_read(trainer: pl.Trainer) -> Any:
        _lightning.callback_metrics_of(trainer)["written"] = torch.tensor(1.0)
        return trainer.callback_metrics.get("written")

    capture = Capture(write_then_read)
    lightning_trainer(2, [capture]).fit(module())
    assert capture.result == 1.0


def test_monitor_after_evaluation_switches_the_monitors_to_after_validation() -> None:
    stop = EarlyStopping(monitor="x")
    best = ModelCheckpoint(monitor="x")
    given = ModelCheckpoint(monitor="x", save_on_train_epoch_end=True)
    for cb in (stop, best, given):
        _lightning.monitor_after_evaluation(cb)
    assert stop._check_on_train_epoch_end is False
    assert best._save_on_train_epoch_end is False
    assert given._save_on_train_epoch_end is True  # the user's choice stays


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
    capture = Capture(lambda t: _lightning.train_data_source(t))
    trainer = lightning_trainer(1, [capture])
    if how == "module":
        trainer.fit(plain)
    elif how == "loaders":
        trainer.fit(plain, train_dataloaders=loader)
    else:
        trainer.fit(plain, datamodule=dm)
    assert capture.result is {"module": plain, "loaders": loader, "datamodule": dm}[expected]


def test_val_data_defined_sees_validation_data_before_it_is_loaded() -> None:
    capture = Capture(lambda t: _lightning.val_data_defined(t))
    lightning_trainer(1, [capture], num_sanity_val_steps=0).fit(PlainModule())
    assert capture.result is False
    capture = Capture(lambda t: _lightning.val_data_defined(t))
    lightning_trainer(1, [capture], num_sanity_val_steps=0, limit_val_batches=0).fit(
        PlainModule(), val_dataloaders=DataLoader(torch.rand(4, 3), batch_size=2)
    )
    assert capture.result is True


def test_resolve_last_checkpoint_with_falls_back_only_when_lightning_has_none(tmp_path: Path) -> None:
    trainer = lightning_trainer(1)
    connector = trainer._checkpoint_connector
    fn = trainer.state.fn = TrainerFn.FITTING
    found: list[str | None] = [str(tmp_path / "d2.pth")]
    _lightning.resolve_last_checkpoint_with(trainer, lambda: found[0])
    assert connector._parse_ckpt_path(fn, "last", model_provided=True, model_connected=False) == found[0]
    assert connector._parse_ckpt_path(fn, None, model_provided=True, model_connected=False) is None
    found[0] = None
    with pytest.warns(UserWarning, match="no last checkpoint available"):
        assert connector._parse_ckpt_path(fn, "last", model_provided=True, model_connected=False) is None
    _lightning.resolve_last_checkpoint_with(trainer, None)  # Lightning's own method again
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
    allowed = {REPO / "d2lightning" / "engine" / "_lightning.py"}
    offenders = []
    for path in sorted((REPO / "d2lightning").rglob("*.py")):
        if path in allowed:
            continue
        visitor = _PrivateLightningUse()
        visitor.visit(ast.parse(path.read_text()))
        offenders += [f"{path.relative_to(REPO)}:{line}: {expr}" for line, expr in visitor.found]
    # our own trainers' private attributes (``_hooks``, ``_trainer``, ``_run``...) are ours, not Lightning's
    ours = (
        "._hooks",
        "._trainer",
        "._run",
        "._data_loader_iter_obj",
        "._convert_batches",
        "._pending_rng_states",
        "._next_batch",
    )
    assert [o for o in offenders if not o.endswith(ours)] == []


class _EveryHook(pl.Callback):
    """Records each per-step hook point with ``global_step`` and ``batch_idx``; logs a value with ``self.log``."""

    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append(("batch_start", trainer.global_step, batch_idx))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: Any) -> None:
        self.calls.append(("before_backward", trainer.global_step))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append(("after_backward", trainer.global_step))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.calls.append(("before_optimizer_step", trainer.global_step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.calls.append(("batch_end", trainer.global_step, idx, pl_module._current_fx_name))
        pl_module.log("seen", float(trainer.global_step), on_step=True)


@pytest.mark.parametrize("stop_at", [None, 3])
def test_the_lean_step_behaves_as_lightnings_own(tmp_path: Path, stop_at: int | None) -> None:
    """Without a profiler, d2lightning's fits take the lean step; with one, Lightning's own: same everything."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.profilers import SimpleProfiler

    def fit(profiler: Any, name: str) -> tuple[list[Any], torch.Tensor, list[dict[str, str]], bool]:
        torch.manual_seed(0)
        calls: list[Any] = []
        took: list[bool] = []
        callbacks: list[Any] = [
            _EveryHook(calls),
            Capture(lambda t: took.append(_lightning.LeanTrainingLoop.applies(t))),
        ]
        if stop_at is not None:
            callbacks.append(_StopAt(stop_at))
        logger = CSVLogger(tmp_path, name=name)
        trainer = lightning_trainer(6, callbacks, logger=logger, log_every_n_steps=2, profiler=profiler)
        m = module()
        trainer.fit(m)
        with open(Path(logger.log_dir) / "metrics.csv") as f:  # timings differ from run to run: left out
            rows = [{k: v for k, v in row.items() if "time" not in k} for row in csv.DictReader(f)]
        return calls, m.model.mod.weight.detach().clone(), rows, took[0]

    lean = fit(None, "lean")
    own = fit(SimpleProfiler(), "own")
    assert lean[3] and not own[3]
    assert lean[0] == own[0]
    assert torch.equal(lean[1], own[1])
    assert lean[2] == own[2]
    steps = 6 if stop_at is None else stop_at
    assert [c[1] for c in lean[0] if c[0] == "batch_end"] == list(range(1, steps + 1))
    assert {c[3] for c in lean[0] if c[0] == "batch_end"} == {"on_train_batch_end"}
    assert [r["seen"] for r in lean[2] if r["seen"]][:2] == ["2.0", "4.0" if stop_at is None else "3.0"]


class _StopAt(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def test_the_progress_bar_stays_visible_during_the_lean_step() -> None:
    """A RichProgressBar's refresh thread reads ``trainer.progress_bar_callback`` at any moment, the step included
    (the lean step's shorter callback list once hid it: an AssertionError in that thread)."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    seen: list[Any] = []

    class InStep(pl.Callback):
        def on_after_backward(self, trainer: pl.Trainer, pl_module: Any) -> None:
            seen.append(trainer.progress_bar_callback)

    bar = TQDMProgressBar(refresh_rate=0)
    took: list[bool] = []
    trainer = lightning_trainer(
        3,
        [bar, InStep(), Capture(lambda t: took.append(_lightning.LeanTrainingLoop.applies(t)))],
        enable_progress_bar=True,
    )
    trainer.fit(module())
    assert took == [True] and seen == [bar, bar, bar]
