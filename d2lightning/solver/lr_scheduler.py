"""LR schedulers with detectron2's names and semantics (``detectron2.solver.lr_scheduler``).

:class:`WarmupParamScheduler` adds a warmup stage in front of a parameter scheduler;
:class:`LRMultiplier` is a ``torch.optim.lr_scheduler.LRScheduler`` that sets every param group's lr to
``base_lr * multiplier(iter / max_iter)``. Both are stepped once per iteration (by the ``LRScheduler``
hook), so "epoch" in torch's names means "iteration" here. The deprecated ``WarmupMultiStepLR`` and
``WarmupCosineLR`` are re-exported from :mod:`d2lightning.solver.legacy_lr_scheduler`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from d2lightning.solver import _checks
from d2lightning.solver.legacy_lr_scheduler import WarmupCosineLR, WarmupMultiStepLR
from d2lightning.solver.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
    is_param_scheduler,
)

__all__ = ["LRMultiplier", "LRScheduler", "WarmupCosineLR", "WarmupMultiStepLR", "WarmupParamScheduler"]


class WarmupParamScheduler(CompositeParamScheduler):
    """detectron2 ``WarmupParamScheduler``: a warmup stage, then ``scheduler``.

    During the first ``warmup_length`` of training the value is
    ``"linear"``: linear from ``warmup_factor * scheduler(0)`` to ``scheduler(warmup_length)``
    (to ``scheduler(0)`` when ``rescale_interval``), or ``"constant"``: ``warmup_factor * scheduler(0)``.
    Afterwards it is ``scheduler(where)`` or, when ``rescale_interval``, ``scheduler`` squeezed into the
    remaining ``1 - warmup_length`` of training (so it starts at its own beginning).

    Args:
        scheduler: the schedule to prepend the warmup to (ours or fvcore's).
        warmup_factor: factor of ``scheduler(0)`` warmup starts from, e.g. 0.001 (>= 0).
        warmup_length: fraction of training spent warming up, in ``[0, 1]``, e.g. ``1000 / max_iter``.
        warmup_method: ``"linear"`` or ``"constant"``.
        rescale_interval: whether to rescale ``scheduler``'s interval to the post-warmup part.

    Raises:
        TypeError: ``scheduler`` is not a :class:`ParamScheduler`, or a number argument is not a number.
        ValueError: ``warmup_length`` outside ``[0, 1]``, negative ``warmup_factor`` or unknown
            ``warmup_method``.

    Example::

        WarmupParamScheduler(
            MultiStepParamScheduler([1, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000),
            warmup_factor=0.001,
            warmup_length=1000 / 90000,
        )
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ) -> None:
        if not is_param_scheduler(scheduler):
            raise TypeError(f"scheduler must be a ParamScheduler, got {scheduler!r}")
        factor = _checks.real("warmup_factor", warmup_factor, non_negative=True)
        length = _checks.real("warmup_length", warmup_length, non_negative=True)
        if length > 1.0:
            raise ValueError(f"warmup_length must be in [0, 1], got {warmup_length!r}")
        _checks.choice("warmup_method", warmup_method, ("linear", "constant"))
        if not isinstance(rescale_interval, bool):
            raise TypeError(f"rescale_interval must be a bool, got {rescale_interval!r}")

        end_value = scheduler(0.0) if rescale_interval else scheduler(length)
        start_value = factor * scheduler(0.0)
        warmup: ParamScheduler
        if warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        else:
            warmup = LinearParamScheduler(start_value, end_value)
        super().__init__(
            [warmup, scheduler],
            lengths=[length, 1 - length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


class LRMultiplier(LRScheduler):
    """detectron2 ``LRMultiplier``: ``lr = base_lr * multiplier(last_epoch / max_iter)`` for every group.

    ``base_lrs`` are the groups' ``initial_lr`` (their lr when the first scheduler was attached), so the
    relative scale between groups never changes. As with any torch ``LRScheduler``, construction calls
    :meth:`step` once, so right after ``LRMultiplier(opt, m, max_iter)`` the lr is
    ``base_lr * m(0)`` and ``last_epoch == 0``; after ``k`` more steps it is ``base_lr * m(k / max_iter)``.
    The parameter scheduler is stateless, so :meth:`state_dict` is just ``{"base_lrs", "last_epoch"}``.

    Args:
        optimizer: the optimizer whose lrs are set.
        multiplier: a :class:`ParamScheduler` (fvcore's are accepted too) giving the lr multiplier.
        max_iter: total number of training iterations (positive integer).
        last_iter: torch's ``last_epoch``: ``-1`` for a fresh start; ``k >= 0`` to continue after
            iteration ``k`` (the lr becomes ``base_lr * multiplier((k + 1) / max_iter)``), which needs
            ``"initial_lr"`` in every param group (torch raises ``KeyError`` otherwise).

    Raises:
        ValueError: ``multiplier`` is not a ParamScheduler (detectron2 raises ValueError too),
            ``max_iter`` is not positive or ``last_iter < -1``.
        TypeError: ``optimizer`` is not an optimizer, or ``max_iter``/``last_iter`` is not an integer.

    Example::

        LRMultiplier(
            opt,
            WarmupParamScheduler(
                MultiStepParamScheduler([1, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000),
                0.001,
                100 / 90000,
            ),
            max_iter=90000,
        )
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ) -> None:
        if not is_param_scheduler(multiplier):
            raise ValueError(f"LRMultiplier(multiplier=) must be an instance of ParamScheduler, got {multiplier!r}")
        if not _checks.is_int(last_iter):
            raise TypeError(f"last_iter must be an integer, got {last_iter!r}")
        if last_iter < -1:
            raise ValueError(f"last_iter must be -1 (fresh start) or >= 0, got {last_iter!r}")
        self._multiplier = multiplier
        self._max_iter = _checks.positive_int("max_iter", max_iter)
        super().__init__(optimizer, last_epoch=int(last_iter))

    def state_dict(self) -> dict[str, Any]:
        """Return ``{"base_lrs": [...], "last_epoch": int}``, detectron2's checkpoint format."""
        return {"base_lrs": self.base_lrs, "last_epoch": self.last_epoch}

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """Return ``base_lr * multiplier(last_epoch / max_iter)`` for each param group."""
        factor = self._multiplier(self.last_epoch / self._max_iter)
        return [base_lr * factor for base_lr in self.base_lrs]  # type: ignore[misc]
