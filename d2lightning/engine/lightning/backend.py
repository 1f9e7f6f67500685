"""The step seam: how a detectron2-style trainer runs its per-step hooks, backward passes and optimizer steps.

Every trainer (``SimpleTrainer``, ``AMPTrainer``, ``DefaultTrainer``'s inner trainer, user subclasses) goes through
its step backend, always present:

* :class:`TorchStepBackend` outside a fit — plain torch, and the trainer calls its hooks itself, as detectron2's
  loop does;
* :class:`LightningStepBackend` inside a fit — ``manual_backward`` and the strategy's ``optimizer_step``, so that
  the Trainer's precision plugin, strategy, gradient clipping and ``on_before_backward`` /
  ``on_after_backward`` / ``on_before_optimizer_step`` reach every trainer; Lightning calls the per-step hooks
  itself, each at its place among the callbacks.

A ``run_step`` written for detectron2 that calls ``losses.backward()``, ``self.after_backward()`` and
``self.optimizer.step()`` (or ``grad_scaler.step(self.optimizer)``) itself goes through the same seam: the Lightning
backend puts a step pre-hook on the trainer's optimizer for the fit, which gives Lightning's
``on_before_optimizer_step`` (and so the Trainer's gradient clipping) to every step that did not come through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import torch
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from d2lightning.engine.lightning import _private

__all__ = ["LightningStepBackend", "StepBackend", "TorchStepBackend", "call_hooks"]

_NO_CONTEXT = contextlib.nullcontext()  # one shared, reusable null context


def call_hooks(hooks: Iterable[Any], method: str) -> None:
    """Call ``hook.<method>()`` on every hook that has it, in order (detectron2's hook dispatch)."""
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn()


class StepBackend(Protocol):
    """What a trainer asks of its backend (see the module docstring)."""

    def call_hooks(self, hooks: Iterable[Any], method: str) -> None:
        """The per-step hook method ``method`` (``before_step``, ``after_step``) of every hook that is not called
        otherwise."""

    def backward(self, loss: torch.Tensor, hooks: Iterable[Any]) -> None:
        """``loss.backward()``, then every hook's ``after_backward``."""

    def after_backward(self, hooks: Iterable[Any]) -> None:
        """Every hook's ``after_backward``, after a backward pass the trainer ran itself."""

    def optimizer_step(self, optimizer: torch.optim.Optimizer, grad_scaler: Any = None) -> None:
        """``optimizer.step()`` — through ``grad_scaler.step`` and ``grad_scaler.update`` when one is given."""

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context in which backward passes accumulate gradients locally, without DDP's all-reduce."""


class TorchStepBackend:
    """Plain torch, outside a fit: the trainer's hooks are called here, in order, as in detectron2's loop."""

    def call_hooks(self, hooks: Iterable[Any], method: str) -> None:
        call_hooks(hooks, method)

    def backward(self, loss: torch.Tensor, hooks: Iterable[Any]) -> None:
        loss.backward()
        call_hooks(hooks, "after_backward")

    def after_backward(self, hooks: Iterable[Any]) -> None:
        call_hooks(hooks, "after_backward")

    def optimizer_step(self, optimizer: torch.optim.Optimizer, grad_scaler: Any = None) -> None:
        if grad_scaler is None:
            optimizer.step()
        else:
            grad_scaler.step(optimizer)
            grad_scaler.update()

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        return _no_sync(model)


class LightningStepBackend:
    """Inside a fit: the step goes through the Lightning Trainer (see the module docstring).

    Args:
        pl_trainer: the Trainer of the fit (its LightningModule is attached).
    """

    def __init__(self, pl_trainer: Any) -> None:
        self._pl_trainer = pl_trainer
        self._in_strategy_step = False

    def call_hooks(self, hooks: Iterable[Any], method: str) -> None:
        pass  # Lightning calls each hook's per-step methods at its place among the callbacks

    def backward(self, loss: torch.Tensor, hooks: Iterable[Any]) -> None:
        # the precision plugin scales the loss (16-mixed) and calls on_before_backward / on_after_backward
        self._pl_trainer.lightning_module.manual_backward(loss)

    def after_backward(self, hooks: Iterable[Any]) -> None:
        _private.call_after_backward(self._pl_trainer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, grad_scaler: Any = None) -> None:
        if grad_scaler is not None:
            # the trainer's own scaler (AMPTrainer): it unscales, then steps the optimizer, whose pre-hook gives
            # Lightning's on_before_optimizer_step (and the Trainer's clipping) the unscaled gradients
            grad_scaler.step(optimizer)
            grad_scaler.update()
            return
        pl_trainer = self._pl_trainer
        self._in_strategy_step = True  # the precision plugin calls on_before_optimizer_step itself
        try:
            pl_trainer.strategy.optimizer_step(optimizer, closure=_no_closure, model=pl_trainer.lightning_module)
        finally:
            self._in_strategy_step = False

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        if isinstance(model, (DistributedDataParallel, FSDPModule)):  # Lightning's strategy did not wrap it
            return _no_sync(model)
        block = getattr(self._pl_trainer.strategy, "block_backward_sync", None)
        return block() if block is not None else _NO_CONTEXT

    def watch(self, optimizer: torch.optim.Optimizer) -> Any:
        """Give every step of ``optimizer`` that does not come through :meth:`optimizer_step` Lightning's
        ``on_before_optimizer_step``; returns the handle whose ``remove()`` ends it."""
        return optimizer.register_step_pre_hook(self._before_optimizer_step)

    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if not self._in_strategy_step:
            _private.call_before_optimizer_step(self._pl_trainer, optimizer)


def _no_sync(model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """DDP's ``no_sync``; for a model sharded with FSDP2, its gradients reduced only after the context."""
    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    if isinstance(model, FSDPModule):
        return _fsdp_no_sync(model)
    return _NO_CONTEXT


@contextlib.contextmanager
def _fsdp_no_sync(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _no_closure() -> None:
    return None
