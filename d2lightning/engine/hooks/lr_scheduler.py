"""detectron2 ``LRScheduler``: record the learning rate of the iteration just run, then step the scheduler.

before_train → ``on_train_start`` (optimizer/scheduler resolved, a ``ParamScheduler`` wrapped); after_step →
``on_train_batch_end`` (``lr`` put, ``scheduler.step()``). The scheduler is stepped by this hook, not by
Lightning (it never appears in ``configure_optimizers``); its state is this hook's ``state_dict``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import torch

from d2lightning.engine.hook_base import HookBase
from d2lightning.solver.lr_scheduler import LRMultiplier
from d2lightning.solver.param_scheduler import is_param_scheduler

__all__ = ["LRScheduler"]

logger = logging.getLogger(__name__)


class LRScheduler(HookBase):
    """Put the ``lr`` used in each iteration into the storage (``smoothing_hint=False``), then step the scheduler.

    The logged group is the one with the most parameters or, when every group has a single parameter, the
    first whose learning rate is the most common one (detectron2's heuristic). A ``ParamScheduler`` (a
    function of training progress, like detectron2's fvcore schedulers) is wrapped in an ``LRMultiplier`` over
    ``max_iter`` that starts at the current iteration, so a resumed run stays on schedule. Register it before
    the checkpointer so the saved scheduler state is the one after the step.

    Args:
        optimizer: the optimizer whose lr is logged; default ``trainer.optimizer``.
        scheduler: a torch LR scheduler (or a ``ParamScheduler``); default ``trainer.scheduler``.

    Raises:
        ValueError: at the start of training, when neither this hook nor the trainer has an optimizer or a
            scheduler, or when a torch scheduler is bound to another optimizer than the one given.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None) -> None:
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"LRScheduler optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._optimizer = optimizer
        self._scheduler = scheduler
        self._best_param_group_id = 0

    def before_train(self) -> None:
        self._optimizer = self._optimizer or getattr(self.trainer, "optimizer", None)
        if self._optimizer is None:
            raise ValueError("LRScheduler got no optimizer and the trainer has no 'optimizer' attribute")
        scheduler = self.scheduler
        if scheduler is None:
            raise ValueError("LRScheduler got no scheduler and the trainer has no 'scheduler' attribute")
        if is_param_scheduler(scheduler):
            self._scheduler = LRMultiplier(
                self._optimizer, scheduler, self.trainer.max_iter, last_iter=self.trainer.iter - 1
            )
        elif not callable(getattr(scheduler, "step", None)):
            raise ValueError(
                "LRScheduler scheduler must be a torch LR scheduler or a ParamScheduler, "
                f"got {type(scheduler).__name__}"
            )
        bound = getattr(self.scheduler, "optimizer", None)
        if bound is not None and bound is not self._optimizer:
            raise ValueError(
                "LRScheduler scheduler is bound to another optimizer than the one it logs: build the scheduler "
                "on the same optimizer object (the trainer's, or the one passed to LRScheduler)"
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """The index of the param group whose lr is logged (see the class docstring)."""
        groups = optimizer.param_groups
        largest = max(len(g["params"]) for g in groups)
        if largest == 1:
            common_lr = Counter(g["lr"] for g in groups).most_common(1)[0][0]
            return next(i for i, g in enumerate(groups) if g["lr"] == common_lr)
        return next(i for i, g in enumerate(groups) if len(g["params"]) == largest)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]  # type: ignore[union-attr]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self) -> Any:
        """The scheduler stepped: the one given, else ``trainer.scheduler``."""
        return self._scheduler or getattr(self.trainer, "scheduler", None)

    def state_dict(self) -> dict[str, Any]:
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            return scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            scheduler.load_state_dict(state_dict)
