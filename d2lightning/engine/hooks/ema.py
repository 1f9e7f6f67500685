"""d2lightning ``EMA``: an exponential moving average of the model's weights, which the evaluations use.

No detectron2 counterpart (d2go's ``EMAHook`` is the nearest). The average is torch's ``AveragedModel`` with
``get_ema_multi_avg_fn``, updated by an optimizer step post-hook, i.e. right after every optimizer step and
before any ``after_step`` hook, whatever the hook order. before_train → ``on_train_start`` (average created,
step hook registered, ``EvalHook``s switched to the average); after_train → ``on_train_end`` /
``on_exception`` (step hook removed).

Lightning's ``EMAWeightAveraging`` is not used: it averages the whole LightningModule (a deep copy of a
``D2LightningModule`` copies its trainer, data loader and hooks, and fails on generator loaders), swaps the
average in only around Lightning's validation loop, which ``EvalHook`` does not use, and at the end of
training overwrites the model with the average after the final checkpoint was written.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from d2lightning.engine.hook_base import HookBase

__all__ = ["EMA"]

logger = logging.getLogger(__name__)


class EMA(HookBase):
    """Keep ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; evaluate ``ema``.

    The average covers the parameters and the buffers (BatchNorm statistics included). It starts as a copy
    of the weights after the first optimizer step; an AMP step that the grad scaler skipped is not averaged.
    With ``evaluate`` (the default), every ``EvalHook`` of the same trainer evaluates the averaged weights:
    they are swapped into the model for the evaluation and swapped back after it, so training, ``PreciseBN``
    and the saved ``"model"`` weights stay the raw ones. The hook's state — ``{"decay", "num_updates",
    "model"}``, ``"model"`` being the averaged state dict — is saved with the trainer's hooks (in a
    ``DefaultTrainer`` checkpoint: ``checkpoint["trainer"]["hooks"]["EMA"]["model"]``) and in Lightning
    checkpoints, and a resumed run continues the average. Register it on every rank.

    Args:
        decay: the weight of the old average, in [0, 1] (0 follows the weights, 1 freezes the first copy).
        model: the model to average; by default the trainer's (unwrapped from ``DistributedDataParallel``).
        evaluate: make the trainer's ``EvalHook``s evaluate the averaged weights.

    Raises:
        ValueError: when ``decay`` is not a number in [0, 1].
        TypeError: when ``model`` is given and is not an ``nn.Module``.
        RuntimeError: in ``before_train``, when the trainer has no optimizer.

    Example::

        ema = hooks.EMA(decay=0.999)
        trainer.register_hooks([ema, hooks.EvalHook(100, evaluate)])   # evaluate() sees the averaged weights
        with ema.swapped():
            torch.save(trainer.model.state_dict(), "ema_weights.pth")
    """

    def __init__(self, decay: float = 0.999, model: nn.Module | None = None, *, evaluate: bool = True) -> None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be a number in [0, 1], got {decay!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"EMA model must be a torch.nn.Module, got {type(model).__qualname__}")
        self.decay = float(decay)
        self._model = model
        self._evaluate = bool(evaluate)
        self._averaged: AveragedModel | None = None
        self._pending: Mapping[str, Any] | None = None
        self._step_hook: Any = None

    @property
    def averaged_model(self) -> nn.Module | None:
        """The module holding the averaged weights (a copy of the model), or None before training."""
        return self._averaged.module if self._averaged is not None else None

    @property
    def num_updates(self) -> int:
        """How many optimizer steps have been averaged."""
        return int(self._averaged.n_averaged) if self._averaged is not None else 0

    @contextlib.contextmanager
    def swapped(self) -> Iterator[nn.Module]:
        """Inside the block the model holds the averaged weights (yielded); the raw ones come back after it."""
        model = self._target()
        if self._averaged is None:
            yield model
            return
        _swap(self._averaged.module, model)
        try:
            yield model
        finally:
            _swap(self._averaged.module, model)

    def before_train(self) -> None:
        optimizer = getattr(self.trainer, "optimizer", None)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise RuntimeError(f"EMA needs the trainer's optimizer to follow its steps, got {optimizer!r}")
        if self._averaged is None:
            self._averaged = AveragedModel(
                self._target(), multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True
            )
        if self._pending is not None:
            self._apply(self._pending)
            self._pending = None
        if self._step_hook is None:
            self._step_hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        if self._evaluate:
            for hook in getattr(self.trainer, "_hooks", ()):
                _evaluate_with(hook, self)

    def after_train(self) -> None:
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None

    def state_dict(self) -> dict[str, Any]:
        if self._averaged is None:
            return dict(self._pending) if self._pending is not None else {}
        return {"decay": self.decay, "num_updates": self.num_updates, "model": self._averaged.module.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the average now, or when training starts if it does not exist yet."""
        if not state_dict:
            return
        if self._averaged is None:
            self._pending = state_dict
        else:
            self._apply(state_dict)

    # ------------------------------------------------------------ helpers
    def _target(self) -> nn.Module:
        model = self._model if self._model is not None else self.trainer.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._averaged.update_parameters(self._target())  # type: ignore[union-attr]

    def _apply(self, state: Mapping[str, Any]) -> None:
        saved_decay = state.get("decay", self.decay)
        if saved_decay != self.decay:
            logger.warning(f"EMA: the checkpoint's average used decay {saved_decay}; continuing with {self.decay}")
        self._averaged.module.load_state_dict(state["model"])  # type: ignore[union-attr]
        self._averaged.n_averaged.fill_(int(state["num_updates"]))  # type: ignore[union-attr]


@torch.no_grad()
def _swap(a: nn.Module, b: nn.Module) -> None:
    """Exchange the values of two models' parameters and buffers (same architecture)."""
    for x, y in zip(
        itertools.chain(a.parameters(), a.buffers()), itertools.chain(b.parameters(), b.buffers()), strict=True
    ):
        tmp = x.detach().clone()
        x.copy_(y)
        y.copy_(tmp)


def _evaluate_with(hook: Any, ema: EMA) -> None:
    """Make an ``EvalHook`` (ours or detectron2's: both keep the function as ``_func``) evaluate the average."""
    if type(hook).__name__ != "EvalHook" or not callable(getattr(hook, "_func", None)):
        return
    func: Callable[[], Any] = hook._func
    if getattr(func, "_d2l_ema", None) is ema:
        return

    @functools.wraps(func)
    def evaluate_average() -> Any:
        with ema.swapped():
            return func()

    evaluate_average._d2l_ema = ema  # type: ignore[attr-defined]
    hook._func = evaluate_average
