"""detectron2 ``PreciseBN``: re-estimate BatchNorm statistics every ``period`` iterations and at the end.

after_step → ``on_train_batch_end``; after_train → ``on_train_end`` (only after an early stop, see the class).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_last_iter
from d2lightning.layers.batch_norm import get_bn_modules, update_bn_stats
from d2lightning.utils.events import EventStorage
from d2lightning.utils.sharding import gathered_weights
from d2lightning.utils.validation import check_int

__all__ = ["PreciseBN"]

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 100


class PreciseBN(HookBase):
    """Replace the running statistics of the model's BN layers with their true values on training data.

    BatchNorm's running statistics are a moving average taken while the weights changed; this hook
    recomputes them for the current weights over ``num_iter`` batches (see
    :func:`~d2lightning.layers.batch_norm.update_bn_stats`). It runs after iteration ``max_iter - 1`` and,
    with ``period > 0``, after every ``period``-th iteration — register it before the checkpointer and the
    ``EvalHook`` so both see the precise statistics. It draws batches from one iterator over ``data_loader``
    that lives as long as the hook, and runs the model inside a throw-away ``EventStorage`` (models put
    scalars in training-mode forwards; those are discarded).

    Differences from detectron2:

    - A model without BN layers in training mode (checked at construction) logs "PreciseBN is disabled
      because model does not contain BN layers in training mode." once and makes the hook a no-op
      (detectron2's then fails with AttributeError at the first iteration).
    - Under DDP or FSDP the statistics are all-reduced, so every rank ends with the same buffers (computed on all
      ranks' batches). The hook is then collective: register it on **every rank**. A sharded model gets its full
      weights on every rank for the update.
    - When Lightning stops training early (``EarlyStopping``), ``after_train`` runs the update that would
      have followed the last iteration, unless it already ran then.

    Args:
        period: iterations between updates; 0 updates only after the last iteration.
        model: the model whose BN layers in training mode are updated (usually ``trainer.model``).
        data_loader: an iterable of model inputs, typically a training loader (infinite or long enough).
        num_iter: batches per update.

    Raises:
        TypeError: when ``model`` is not an ``nn.Module`` or ``data_loader`` is not iterable.
        ValueError: when ``period`` is not an int >= 0 or ``num_iter`` not an int >= 1.

    Example::

        hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, trainer.model, build_train_loader(cfg), cfg.TEST.PRECISE_BN.NUM_ITER)
    """

    def __init__(self, period: int, model: nn.Module, data_loader: Iterable[Any], num_iter: int) -> None:
        self._period = check_int("PreciseBN period", period, minimum=0)
        self._num_iter = check_int("PreciseBN num_iter", num_iter, minimum=1)
        if not isinstance(model, nn.Module):
            raise TypeError(f"PreciseBN model must be a torch.nn.Module, got {type(model).__qualname__}")
        if not isinstance(data_loader, Iterable):
            raise TypeError(f"PreciseBN data_loader must be iterable, got {type(data_loader).__qualname__}")
        self._model = model
        self._data_loader = data_loader
        self._data_iter: Iterator[Any] | None = None
        self._last_update_iter: int | None = None
        self._disabled = not get_bn_modules(model)
        if self._disabled:
            logger.info("PreciseBN is disabled because model does not contain BN layers in training mode.")

    def after_step(self) -> None:
        if is_last_iter(self.trainer) or every_n_iters(self.trainer, self._period):
            self.update_stats()
            self._last_update_iter = self.trainer.iter

    def after_train(self) -> None:
        trainer = self.trainer
        # Only an early-stopped run gets here with iter == max_iter and the final update missing: after a
        # normal end it ran after iteration max_iter - 1, and a failed run ends with iter < max_iter.
        stopped = trainer.iter == trainer.max_iter and trainer.iter > trainer.start_iter
        if stopped and self._last_update_iter != trainer.iter - 1:
            self.update_stats()
            self._last_update_iter = trainer.iter - 1

    def update_stats(self) -> None:
        """Update the model's BN statistics now (collective under DDP). Can also be called by hand."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)
        with EventStorage():  # models put scalars in training forwards; discard them
            logger.info(
                f"Running precise-BN for {self._num_iter} iterations...  "
                "Note that this could produce different statistics every time."
            )
            # a sharded (FSDP) model: every rank's full weights once, not an all-gather per batch
            with gathered_weights(self._model):
                update_bn_stats(self._model, self._batches(self._data_iter), self._num_iter)

    def _batches(self, data_iter: Iterator[Any]) -> Iterator[Any]:
        """The shared iterator, with a progress line every 100 batches."""
        for n in itertools.count(1):
            if n % _PROGRESS_EVERY == 0:
                logger.info(f"Running precise-BN ... {n}/{self._num_iter} iterations.")
            try:
                yield next(data_iter)
            except StopIteration:
                return
