"""detectron2 ``BestCheckpointer``: save the model when an evaluation metric improves.

after_step → ``on_train_batch_end`` (at the iterations where ``EvalHook`` evaluates); after_train →
``on_train_end`` / ``on_exception`` (when training finished, after the final evaluation).
"""

from __future__ import annotations

import logging
import math
import operator
import os
from typing import Any

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_finished, is_last_iter
from d2lightning.utils.validation import check_int

__all__ = ["BestCheckpointer"]

logger = logging.getLogger(__name__)


class BestCheckpointer(HookBase):
    """Save ``{file_prefix}.pth`` whenever ``val_metric`` reaches a new best value.

    Runs when ``EvalHook(eval_period, ...)`` does — after iterations ``i`` with ``(i + 1) % eval_period == 0``
    except the last, and in ``after_train`` once training finished — so register it *after* the ``EvalHook``
    that puts the metric. It reads ``(value, iteration)`` from ``trainer.storage.latest()[val_metric]``. The
    first finite value is saved (with ``iteration`` = the metric's iteration); afterwards only a strict
    improvement (``>`` for ``"max"``, ``<`` for ``"min"``) is. NaN and infinite values are never best. A metric
    that is not in the storage logs a warning and saves nothing.

    As in detectron2, the best value is not checkpointed (a resumed run saves its first evaluation again),
    and each save also points ``last_checkpoint`` at ``{file_prefix}.pth``, so ``resume_or_load`` right after
    a best save resumes from it rather than from the newest periodic checkpoint.

    Args:
        eval_period: the ``EvalHook``'s period (0: only the evaluation after training).
        checkpointer: the checkpointer that saves (``save(name, **extra)``).
        val_metric: the storage key of the metric, e.g. ``"bbox/AP50"``.
        mode: ``"max"`` or ``"min"``: whether larger or smaller values are better.
        file_prefix: the file name, without ``.pth``.

    Raises:
        ValueError: naming ``eval_period``, ``mode``, ``val_metric`` or ``file_prefix`` when invalid.
        TypeError: when ``checkpointer`` has no ``save`` method.

    Example::

        trainer.register_hooks([
            hooks.EvalHook(1000, evaluate),
            hooks.BestCheckpointer(1000, DetectionCheckpointer(model, "output"), "bbox/AP50", mode="max"),
        ])
    """

    def __init__(
        self,
        eval_period: int,
        checkpointer: Any,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ) -> None:
        self._period = check_int("BestCheckpointer eval_period", eval_period, minimum=0)
        if not callable(getattr(checkpointer, "save", None)):
            raise TypeError(f"checkpointer must have a save(name, **extra) method, got {type(checkpointer).__name__}")
        if not isinstance(val_metric, str) or not val_metric:
            raise ValueError(f"BestCheckpointer val_metric must be a non-empty metric name, got {val_metric!r}")
        if mode not in ("max", "min"):
            raise ValueError(f'Mode "{mode}" to `BestCheckpointer` is unknown. It should be one of {{"max", "min"}}.')
        if not isinstance(file_prefix, str) or not file_prefix or os.path.basename(file_prefix) != file_prefix:
            raise ValueError(f"BestCheckpointer file_prefix must be a non-empty file name, got {file_prefix!r}")
        self._checkpointer = checkpointer
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._file_prefix = file_prefix
        self.best_metric: float | None = None
        self.best_iter: int | None = None

    def after_step(self) -> None:
        if every_n_iters(self.trainer, self._period) and not is_last_iter(self.trainer):
            self._best_checking()

    def after_train(self) -> None:
        if is_finished(self.trainer):
            self._best_checking()

    def _best_checking(self) -> None:
        found = self.trainer.storage.latest().get(self._val_metric)
        if found is None:
            logger.warning(
                f"Given val metric {self._val_metric} does not seem to be computed/stored."
                "Will not be checkpointing based on it."
            )
            return
        value, metric_iter = found
        if self.best_metric is None:
            if self._update_best(value, metric_iter):
                self._checkpointer.save(self._file_prefix, iteration=metric_iter)
                logger.info(f"Saved first model at {self.best_metric:0.5f} @ {self.best_iter} steps")
        elif self._compare(value, self.best_metric):
            self._checkpointer.save(self._file_prefix, iteration=metric_iter)
            logger.info(
                f"Saved best model as latest eval score for {self._val_metric} is {value:0.5f}, better than "
                f"last best score {self.best_metric:0.5f} @ iteration {self.best_iter}."
            )
            self._update_best(value, metric_iter)
        else:
            logger.info(
                f"Not saving as latest eval score for {self._val_metric} is {value:0.5f}, not better than best "
                f"score {self.best_metric:0.5f} @ iteration {self.best_iter}."
            )

    def _update_best(self, value: float, iteration: int) -> bool:
        if math.isnan(value) or math.isinf(value):
            return False
        self.best_metric = value
        self.best_iter = iteration
        return True
