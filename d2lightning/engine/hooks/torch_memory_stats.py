"""detectron2 ``TorchMemoryStats``: log CUDA memory statistics at the writer's points, a few times.

after_step → ``on_train_batch_end``.
"""

from __future__ import annotations

import logging

import torch

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_last_iter
from d2lightning.utils.validation import check_int

__all__ = ["TorchMemoryStats"]

logger = logging.getLogger(__name__)

_MB = 1024.0 * 1024.0


class TorchMemoryStats(HookBase):
    """Log PyTorch's CUDA memory statistics every ``period`` iterations and after the last, ``max_runs`` times.

    At the points where ``PeriodicWriter(period)`` writes, and only when CUDA is available (a no-op
    otherwise), it logs the peak and current reserved and allocated memory of the current device in MB, adds
    ``torch.cuda.memory_summary()`` on the ``max_runs``-th report, and resets the peak statistics with
    ``torch.cuda.reset_peak_memory_stats()`` — which also resets the ``max_mem`` the metric printer shows.
    After ``max_runs`` reports it stays silent. (detectron2's logs one report too many, ``max_runs + 1``.)

    Args:
        period: iterations between reports.
        max_runs: the number of reports; 0 disables the hook.

    Raises:
        ValueError: when ``period`` is not an int >= 1 or ``max_runs`` not an int >= 0.
    """

    def __init__(self, period: int = 20, max_runs: int = 10) -> None:
        self._period = check_int("TorchMemoryStats period", period, minimum=1)
        self._max_runs = check_int("TorchMemoryStats max_runs", max_runs, minimum=0)
        self._runs = 0

    def after_step(self) -> None:
        if self._runs >= self._max_runs or not torch.cuda.is_available():
            return
        if not (every_n_iters(self.trainer, self._period) or is_last_iter(self.trainer)):
            return
        logger.info(
            f" iter: {self.trainer.iter} "
            f" max_reserved_mem: {torch.cuda.max_memory_reserved() / _MB:.0f}MB "
            f" reserved_mem: {torch.cuda.memory_reserved() / _MB:.0f}MB "
            f" max_allocated_mem: {torch.cuda.max_memory_allocated() / _MB:.0f}MB "
            f" allocated_mem: {torch.cuda.memory_allocated() / _MB:.0f}MB "
        )
        self._runs += 1
        if self._runs == self._max_runs:
            logger.info("\n" + torch.cuda.memory_summary())
        torch.cuda.reset_peak_memory_stats()
