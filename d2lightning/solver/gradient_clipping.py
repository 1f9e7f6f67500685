"""Per-parameter gradient clipping as detectron2 does it (``detectron2.solver.build``).

When ``SOLVER.CLIP_GRADIENTS.ENABLED``, the optimizer's class is replaced by a dynamically created
subclass (``SGD`` -> ``SGDWithGradientClip``) whose ``step(closure=None)`` clips the gradient of *each
parameter separately* (by value, or to a per-parameter norm) and then calls the parent ``step``.

Clipping happens at the start of ``step``, so the gradients must already be computed when ``step`` is
called. d2lightning's trainers use Lightning's manual optimization (forward, ``zero_grad``, ``backward``,
then ``optimizer.step()``), so this holds. Under Lightning's *automatic* optimization the backward runs
inside the closure passed to ``step``, after the clipping, which would then see stale gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from enum import Enum
from typing import Any, TypeVar

import torch

from d2lightning.solver import _checks

__all__ = ["GradientClipType", "maybe_add_gradient_clipping"]

_GradientClipperInput = torch.Tensor | Iterable[torch.Tensor]
_GradientClipper = Callable[[_GradientClipperInput], Any]
_OptimizerOrType = TypeVar("_OptimizerOrType", torch.optim.Optimizer, type[torch.optim.Optimizer])


class GradientClipType(Enum):
    """detectron2 ``GradientClipType``: accepted values of ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``."""

    VALUE = "value"
    NORM = "norm"


def _create_gradient_clipper(clip_cfg: Any) -> _GradientClipper:
    """Build the per-parameter clipper described by ``SOLVER.CLIP_GRADIENTS`` (values read once, here)."""
    accepted = [t.value for t in GradientClipType]
    clip_type = clip_cfg.CLIP_TYPE
    if clip_type not in accepted:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {accepted}, got {clip_type!r}")
    clip_value = clip_cfg.CLIP_VALUE
    if not _checks.is_real(clip_value) or not 0 < clip_value < math.inf:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be a finite number > 0, got {clip_value!r}")
    clip_value = float(clip_value)
    if GradientClipType(clip_type) is GradientClipType.VALUE:
        return lambda p: torch.nn.utils.clip_grad_value_(p, clip_value)
    norm_type = clip_cfg.NORM_TYPE
    if not _checks.is_real(norm_type) or not norm_type > 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.NORM_TYPE must be a number > 0 (or inf), got {norm_type!r}")
    norm_type = float(norm_type)
    return lambda p: torch.nn.utils.clip_grad_norm_(p, clip_value, norm_type)


def _optimizer_class_with_gradient_clipping(
    optimizer: type[torch.optim.Optimizer], per_param_clipper: _GradientClipper
) -> type[torch.optim.Optimizer]:
    """Create ``<Name>WithGradientClip``, a subclass of ``optimizer`` that clips in ``step``."""
    new_class: type[torch.optim.Optimizer]

    def step(self: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> Any:
        for group in self.param_groups:
            for param in group["params"]:
                per_param_clipper(param)
        return super(new_class, self).step(closure)  # type: ignore[misc]

    # The parent's step is already wrapped by torch's profiling/step-hook wrapper; marking ours as
    # wrapped stops torch from wrapping it again, which would run step hooks twice.
    step.hooked = True  # type: ignore[attr-defined]
    new_class = type(optimizer.__name__ + "WithGradientClip", (optimizer,), {"step": step})
    return new_class


def maybe_add_gradient_clipping(cfg: Any, optimizer: _OptimizerOrType) -> _OptimizerOrType:
    """detectron2 ``maybe_add_gradient_clipping``: add per-parameter gradient clipping if the config asks.

    Reads ``cfg.SOLVER.CLIP_GRADIENTS``: ``ENABLED``, ``CLIP_TYPE`` (``"value"``: clamp every gradient
    entry to ``[-CLIP_VALUE, CLIP_VALUE]``; ``"norm"``: rescale each parameter's gradient so that its
    ``NORM_TYPE``-norm is at most ``CLIP_VALUE``), ``CLIP_VALUE`` and ``NORM_TYPE``. When disabled the
    argument is returned unchanged. Otherwise, for an optimizer *class* a new subclass
    ``<Name>WithGradientClip`` is returned; for an optimizer *instance* its ``__class__`` is replaced by
    that subclass (as detectron2 does) and the same instance is returned. Its ``step(closure=None)``
    clips every parameter of every group, then runs the parent's ``step(closure)``.

    Args:
        cfg: a config with attribute access (``cfg.SOLVER.CLIP_GRADIENTS.ENABLED``...).
        optimizer: a ``torch.optim.Optimizer`` subclass or instance.

    Returns:
        The (possibly wrapped) optimizer class or instance.

    Raises:
        TypeError: ``optimizer`` is neither an Optimizer subclass nor an instance of one.
        ValueError: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` is not ``"value"``/``"norm"``, ``CLIP_VALUE``
            / ``NORM_TYPE`` is not a positive number, or an LR scheduler was already attached to the
            ``optimizer`` instance (its clipping would be bypassed; detectron2 bypasses it silently).

    Example::

        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.SGD(params, lr=0.01))
        type(optimizer).__name__  # "SGDWithGradientClip" when clipping is enabled
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer_type: type[torch.optim.Optimizer] = type(optimizer)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        optimizer_type = optimizer
    else:
        raise TypeError(f"optimizer must be a torch.optim.Optimizer subclass or instance, got {optimizer!r}")
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if not clip_cfg.ENABLED:
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer) and "step" in vars(optimizer):
        # torch's LRScheduler replaces the instance's `step` with a wrapper of the class's step at the
        # time; swapping the class afterwards would silently skip clipping (it does in detectron2).
        raise ValueError(
            f"optimizer {optimizer_type.__name__} already has an instance-level `step` (an LR scheduler "
            "was created for it); add gradient clipping before creating its LR scheduler"
        )
    clipping_class = _optimizer_class_with_gradient_clipping(optimizer_type, _create_gradient_clipper(clip_cfg))
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.__class__ = clipping_class
        return optimizer
    return clipping_class
