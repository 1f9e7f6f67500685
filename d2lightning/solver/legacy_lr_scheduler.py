"""detectron2's deprecated ``WarmupMultiStepLR`` and ``WarmupCosineLR`` (``detectron2.solver.lr_scheduler``).

Kept so code importing them keeps working; like detectron2 they log a deprecation warning. New code
should use ``LRMultiplier`` with a ``WarmupParamScheduler`` (what ``build_lr_scheduler`` returns).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LRScheduler

from d2lightning.solver import _checks

__all__ = ["WarmupCosineLR", "WarmupMultiStepLR"]

logger = logging.getLogger(__name__)


def _warmup_factor_at_iter(method: str, it: int, warmup_iters: int, warmup_factor: float) -> float:
    """detectron2 ``_get_warmup_factor_at_iter``: 1 after warmup, else constant or linear ramp."""
    if it >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    alpha = it / warmup_iters
    return warmup_factor * (1 - alpha) + alpha


def _check_warmup(warmup_factor: float, warmup_iters: int, warmup_method: str) -> None:
    _checks.real("warmup_factor", warmup_factor, non_negative=True)
    if not _checks.is_int(warmup_iters) or warmup_iters < 0:
        raise ValueError(f"warmup_iters must be a non-negative integer, got {warmup_iters!r}")
    _checks.choice("warmup_method", warmup_method, ("linear", "constant"))


class WarmupMultiStepLR(LRScheduler):
    """detectron2 ``WarmupMultiStepLR`` (deprecated there too): warmup, then ``gamma`` at each milestone.

    ``lr = base_lr * warmup(last_epoch) * gamma ** bisect_right(milestones, last_epoch)``, where warmup is
    ``warmup_factor`` (constant) or ramps linearly from ``warmup_factor`` to 1 over ``warmup_iters``.

    Args:
        optimizer: the optimizer whose lrs are set.
        milestones: increasing iterations at which the lr is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_factor: lr factor at iteration 0.
        warmup_iters: number of warmup iterations.
        warmup_method: ``"linear"`` or ``"constant"``.
        last_epoch: torch's ``last_epoch`` (-1 for a fresh start).

    Raises:
        ValueError: milestones not increasing, bad warmup arguments.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        logger.warning("WarmupMultiStepLR is deprecated! Use LRMultiplier with a ParamScheduler instead!")
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones should be a list of increasing integers, got {list(milestones)}")
        _check_warmup(warmup_factor, warmup_iters, warmup_method)
        self.milestones = list(milestones)
        self.gamma = _checks.real("gamma", gamma)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Return the lr of each param group at ``last_epoch``."""
        warmup = _warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        decay = self.gamma ** bisect.bisect_right(self.milestones, self.last_epoch)
        return [base_lr * warmup * decay for base_lr in self.base_lrs]  # type: ignore[misc]


class WarmupCosineLR(LRScheduler):
    """detectron2 ``WarmupCosineLR`` (deprecated there too): warmup factor times a half cosine to 0.

    ``lr = base_lr * warmup(last_epoch) * 0.5 * (1 + cos(pi * last_epoch / max_iters))``.

    Args:
        optimizer: the optimizer whose lrs are set.
        max_iters: length of the cosine (positive integer).
        warmup_factor: lr factor at iteration 0.
        warmup_iters: number of warmup iterations.
        warmup_method: ``"linear"`` or ``"constant"``.
        last_epoch: torch's ``last_epoch`` (-1 for a fresh start).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ) -> None:
        logger.warning("WarmupCosineLR is deprecated! Use LRMultiplier with a ParamScheduler instead!")
        _check_warmup(warmup_factor, warmup_iters, warmup_method)
        self.max_iters = _checks.positive_int("max_iters", max_iters)
        self.warmup_factor = float(warmup_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Return the lr of each param group at ``last_epoch``."""
        warmup = _warmup_factor_at_iter(self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor)
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.last_epoch / self.max_iters))
        return [base_lr * warmup * cosine for base_lr in self.base_lrs]  # type: ignore[misc]
