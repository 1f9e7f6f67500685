"""detectron2 ``IterationTimer``: per-iteration ``time`` in the storage and a summary at the end.

before_step → ``on_train_batch_start`` (timer starts); after_step → ``on_train_batch_end`` (``time`` put);
after_train → ``on_train_end`` / ``on_exception`` (summary logged).
"""

from __future__ import annotations

import datetime
import logging
import time

from d2lightning.engine.hook_base import HookBase
from d2lightning.utils.validation import check_int

__all__ = ["IterationTimer"]

logger = logging.getLogger(__name__)


class _Timer:
    """A stopwatch that can pause (the time spent in hooks outside the timed span is left out)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._start = time.perf_counter()
        self._paused_at: float | None = None
        self._paused_total = 0.0

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.perf_counter()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.perf_counter() - self._paused_at
            self._paused_at = None

    def seconds(self) -> float:
        end = self._paused_at if self._paused_at is not None else time.perf_counter()
        return end - self._start - self._paused_total


class IterationTimer(HookBase):
    """Track the time of each iteration and log a summary at the end of training.

    The span timed is from this hook's ``before_step`` to its ``after_step``: ``run_step`` plus the hooks
    registered after it (``before_step``) and before it (``after_step``) — register it first to time the step
    alone. From the ``warmup_iter``-th iteration after ``start_iter`` on, the seconds go into the storage as
    ``time`` (so 50 iterations with the default give 48 values); the first ones only restart the clocks. At the
    end it logs "Overall training speed: N iterations in H:MM:SS (x s / it)" (when any iteration was timed)
    and "Total training time: H:MM:SS (H:MM:SS on hooks)".

    Args:
        warmup_iter: iterations at the start that are not timed.

    Raises:
        ValueError: when ``warmup_iter`` is negative or not an int.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = check_int("warmup_iter", warmup_iter, minimum=0)
        self._step_timer = _Timer()
        self._start_time = time.perf_counter()
        self._total_timer = _Timer()

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        total_time_minus_hooks = self._total_timer.seconds()
        hook_time = total_time - total_time_minus_hooks
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and total_time_minus_hooks > 0:
            logger.info(
                f"Overall training speed: {num_iter} iterations in {_hms(total_time_minus_hooks)} "
                f"({total_time_minus_hooks / num_iter:.4f} s / it)"
            )
        logger.info(f"Total training time: {_hms(total_time)} ({_hms(hook_time)} on hooks)")

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        iter_done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if iter_done >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
        else:
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


def _hms(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
