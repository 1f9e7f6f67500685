"""Shared test helpers: a boring detectron2-style model, loaders, and recording hooks/callbacks."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from d2lightning.engine import D2LightningModule, HookBase, SimpleTrainer

HOOK_METHODS = ("before_train", "before_step", "after_backward", "after_step", "after_train")


class SimpleModel(nn.Module):
    """detectron2's test model: one Linear; the loss depends on the input and on every parameter."""

    def __init__(self, fail_at_call: int | None = None, two_losses: bool = False) -> None:
        super().__init__()
        self.mod = nn.Linear(3, 2)
        self.calls = 0
        self.fail_at_call = fail_at_call
        self.two_losses = two_losses

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        call = self.calls
        self.calls += 1
        if self.fail_at_call is not None and call == self.fail_at_call:
            raise RuntimeError("model failed")
        out = self.mod(x)
        if self.two_losses:
            return {"loss_a": out.pow(2).mean(), "loss_b": out.abs().mean()}
        return {"loss": x.sum() * 0.0 + out.mean() + sum(p.mean() for p in self.parameters())}


class PlainModule(pl.LightningModule):
    """A Lightning user's own module (automatic optimization); hooks see it through ``LightningTrainerView``."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.layer(batch).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), 0.1)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.rand(64, 3), batch_size=4)


def infinite_loader(seed: int = 0) -> Iterator[torch.Tensor]:
    """An endless stream of (3, 3) batches, like detectron2's test loader."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.rand(3, 3, generator=g)


class _Recording:
    """The body of the recording hook, whatever ``HookBase`` it derives from (see :func:`recorder_class`).

    Appends ``(name, method, trainer.iter)`` to ``calls`` in every hook method (with ``storage_iter``, also
    ``trainer.storage.iter``); with ``fail_in=(method, iter)`` it raises ``RuntimeError("hook failed")`` after
    recording that call.
    """

    trainer: Any

    def __init__(
        self,
        name: str,
        calls: list[Any],
        fail_in: tuple[str, int] | None = None,
        storage_iter: bool = False,
    ) -> None:
        self.name = name
        self.calls = calls
        self.fail_in = fail_in
        self.storage_iter = storage_iter

    def _record(self, method: str) -> None:
        entry: tuple[Any, ...] = (self.name, method, self.trainer.iter)
        if self.storage_iter:
            entry += (self.trainer.storage.iter,)
        self.calls.append(entry)
        if self.fail_in == (method, self.trainer.iter):
            raise RuntimeError("hook failed")

    def before_train(self) -> None:
        self._record("before_train")

    def before_step(self) -> None:
        self._record("before_step")

    def after_backward(self) -> None:
        self._record("after_backward")

    def after_step(self) -> None:
        self._record("after_step")

    def after_train(self) -> None:
        self._record("after_train")


@functools.cache
def recorder_class(base: type) -> type:
    """The recording hook as a subclass of ``base`` (d2lightning's ``HookBase`` or a real detectron2's)."""
    return type("Recorder", (_Recording, base), {"__doc__": _Recording.__doc__})


class Recorder(_Recording, HookBase):
    """The recording hook on d2lightning's ``HookBase`` (see :class:`_Recording`)."""


class DuckRecorder:
    """Not a HookBase: only detectron2's method names (like a hook from a real detectron2 install)."""

    trainer: Any = None

    def __init__(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.calls = calls

    def before_train(self) -> None:
        self.calls.append((self.name, "before_train", self.trainer.iter))

    def before_step(self) -> None:
        self.calls.append((self.name, "before_step", self.trainer.iter))

    def after_step(self) -> None:
        self.calls.append((self.name, "after_step", self.trainer.iter))

    def after_train(self) -> None:
        self.calls.append((self.name, "after_train", self.trainer.iter))


class LightningRecorder(Callback):
    """A plain Lightning callback recording the detectron2-equivalent hook points with ``global_step``."""

    def __init__(self, name: str, calls: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.calls = calls

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append((self.name, "on_train_start", trainer.global_step))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.calls.append((self.name, "on_train_batch_start", trainer.global_step))

    def on_after_backward(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append((self.name, "on_after_backward", trainer.global_step))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        self.calls.append((self.name, "on_train_batch_end", trainer.global_step))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.calls.append((self.name, "on_train_end", trainer.global_step))


def expected_calls(names: list[str], start: int, stop: int, fail: tuple[str, int] | None = None) -> list[Any]:
    """detectron2's call sequence for hooks ``names`` over iterations ``start..stop-1`` (spec §2)."""
    seq: list[Any] = [(n, "before_train", start) for n in names]
    for it in range(start, stop):
        for method in ("before_step", "after_backward", "after_step"):
            seq += [(n, method, it) for n in names]
    seq += [(n, "after_train", stop) for n in names]
    return seq


def lightning_trainer(max_steps: int, callbacks: list[Any] | None = None, **kwargs: Any) -> pl.Trainer:
    """A quiet CPU Lightning Trainer as a Lightning user would create one for a D2LightningModule."""
    defaults: dict[str, Any] = {
        "max_steps": max_steps,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    defaults.update(kwargs)
    return pl.Trainer(callbacks=callbacks or [], **defaults)


def run(mode: str, hooks: list[Any], start: int, stop: int, model: nn.Module | None = None, lr: float = 0.1) -> Any:
    """Train ``model`` with ``hooks`` either via ``SimpleTrainer.train`` or ``Trainer.fit(D2LightningModule)``.

    Returns the detectron2-style trainer the hooks saw. In "lightning" mode ``start`` must be 0 (a plain
    Lightning fit starts at its restored global_step).
    """
    model = model or SimpleModel()
    optimizer = torch.optim.SGD(model.parameters(), lr)
    if mode == "simple":
        trainer = SimpleTrainer(model, infinite_loader(), optimizer)
        trainer.register_hooks(hooks)
        trainer.train(start, stop)
        return trainer
    assert start == 0, "a plain Lightning fit starts at 0"
    module = D2LightningModule(model, infinite_loader(), optimizer)
    from d2lightning.engine.adapter import as_callback

    lightning_trainer(stop, [as_callback(h) for h in hooks]).fit(module)
    return module.d2_trainer


def take(iterable: Any, n: int) -> list[Any]:
    return list(itertools.islice(iterable, n))
