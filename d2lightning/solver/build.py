"""Build the optimizer and LR scheduler from a config, as detectron2 does (``detectron2.solver.build``).

Config values are read by attribute (``cfg.SOLVER.BASE_LR``), so both d2lightning's ``get_cfg()`` and a
plain ``omegaconf`` config work. ``get_default_optimizer_params``, ``reduce_param_groups`` and
``maybe_add_gradient_clipping`` are re-exported here so ``detectron2.solver.build`` imports translate.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from d2lightning.solver import _checks
from d2lightning.solver.gradient_clipping import GradientClipType, maybe_add_gradient_clipping
from d2lightning.solver.lr_scheduler import LRMultiplier, LRScheduler, WarmupParamScheduler
from d2lightning.solver.param_groups import get_default_optimizer_params, reduce_param_groups
from d2lightning.solver.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = [
    "LR_SCHEDULER_NAMES",
    "OPTIMIZER_NAMES",
    "GradientClipType",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

logger = logging.getLogger(__name__)

#: Accepted values of ``SOLVER.LR_SCHEDULER_NAME``.
LR_SCHEDULER_NAMES = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")
#: Accepted values of ``SOLVER.OPTIMIZER`` (a d2lightning-only key; case-insensitive; default ``"SGD"``).
OPTIMIZER_NAMES = ("SGD", "ADAMW")


def build_optimizer(cfg: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """detectron2 ``build_optimizer``: SGD over detectron2's default param groups, plus clipping.

    Param groups come from :func:`get_default_optimizer_params` with ``base_lr=SOLVER.BASE_LR``,
    ``weight_decay_norm=SOLVER.WEIGHT_DECAY_NORM``, ``bias_lr_factor=SOLVER.BIAS_LR_FACTOR`` and
    ``weight_decay_bias=SOLVER.WEIGHT_DECAY_BIAS``. The optimizer is
    ``torch.optim.SGD(groups, lr=BASE_LR, momentum=MOMENTUM, nesterov=NESTEROV,
    weight_decay=WEIGHT_DECAY, foreach=True)``, exactly detectron2's. d2lightning addition:
    ``SOLVER.OPTIMIZER="ADAMW"`` (read with ``getattr``, case-insensitive, default ``"SGD"``) builds
    ``torch.optim.AdamW(groups, lr=BASE_LR, weight_decay=WEIGHT_DECAY, foreach=True)`` instead (torch's
    default betas and eps). Finally :func:`maybe_add_gradient_clipping` applies
    ``SOLVER.CLIP_GRADIENTS``.

    Args:
        cfg: config with a ``SOLVER`` node.
        model: the model to optimize.

    Returns:
        The optimizer (of class ``SGDWithGradientClip``/``AdamWWithGradientClip`` when clipping is on).

    Raises:
        ValueError: unknown ``SOLVER.OPTIMIZER``, or invalid solver values (see the functions above).
    """
    solver = cfg.SOLVER
    name = getattr(solver, "OPTIMIZER", "SGD")
    name = "SGD" if name is None else str(name).upper()
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {list(OPTIMIZER_NAMES)}, got {name!r}")
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    optimizer: torch.optim.Optimizer
    if name == "SGD":
        optimizer = torch.optim.SGD(
            params,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
            foreach=True,
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=solver.BASE_LR, weight_decay=solver.WEIGHT_DECAY, foreach=True)
    return maybe_add_gradient_clipping(cfg, optimizer)


def _multistep(solver: Any, max_iter: int) -> ParamScheduler:
    steps_cfg = list(solver.STEPS)
    steps = [x for x in steps_cfg if x <= max_iter]
    if len(steps) != len(steps_cfg):
        logger.warning("SOLVER.STEPS contains values larger than SOLVER.MAX_ITER. These values will be ignored.")
    previous = 0
    for step in steps:
        if not _checks.is_int(step) or not previous < step < max_iter:
            raise ValueError(
                f"SOLVER.STEPS must be strictly increasing positive integers below "
                f"SOLVER.MAX_ITER={max_iter} (larger ones are dropped), got {steps_cfg}"
            )
        previous = step
    gamma = _checks.real("SOLVER.GAMMA", solver.GAMMA)
    return MultiStepParamScheduler(
        values=[gamma**k for k in range(len(steps) + 1)],
        milestones=steps,
        num_updates=max_iter,
    )


def _cosine(solver: Any) -> ParamScheduler:
    base_lr = _checks.real("SOLVER.BASE_LR", solver.BASE_LR, positive=True)
    end_value = _checks.real("SOLVER.BASE_LR_END", solver.BASE_LR_END) / base_lr
    if not 0.0 <= end_value <= 1.0:
        raise ValueError(
            f"SOLVER.BASE_LR_END / SOLVER.BASE_LR must be in [0, 1], got "
            f"{solver.BASE_LR_END!r} / {solver.BASE_LR!r} = {end_value!r}"
        )
    return CosineParamScheduler(1, end_value)


def _step_with_fixed_gamma(solver: Any, max_iter: int) -> ParamScheduler:
    return StepWithFixedGammaParamScheduler(
        base_value=1.0,
        gamma=_checks.real("SOLVER.GAMMA", solver.GAMMA, positive=True),
        num_decays=_checks.positive_int("SOLVER.NUM_DECAYS", solver.NUM_DECAYS),
        num_updates=max_iter,
    )


def build_lr_scheduler(cfg: Any, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """detectron2 ``build_lr_scheduler``: an :class:`LRMultiplier` over a warmup + decay schedule.

    The decay schedule ``S`` depends on ``SOLVER.LR_SCHEDULER_NAME``:

    - ``"WarmupMultiStepLR"``: ``GAMMA**k`` after the k-th of ``SOLVER.STEPS`` (a step takes effect at
      its own iteration); steps larger than ``MAX_ITER`` are dropped with a logged warning.
    - ``"WarmupCosineLR"``: half cosine from 1 to ``BASE_LR_END / BASE_LR`` (must be in ``[0, 1]``).
    - ``"WarmupStepWithFixedGammaLR"``: ``NUM_DECAYS`` equal steps of ``GAMMA`` over ``MAX_ITER``.

    The result is ``LRMultiplier(optimizer, WarmupParamScheduler(S, WARMUP_FACTOR,
    min(WARMUP_ITERS / MAX_ITER, 1), WARMUP_METHOD, RESCALE_INTERVAL), MAX_ITER)``: after construction
    the optimizer's lr is the one of iteration 0, and each ``step()`` moves to the next iteration.

    Args:
        cfg: config with a ``SOLVER`` node.
        optimizer: the optimizer whose lrs are scheduled (its current lrs are the base lrs).

    Returns:
        The scheduler.

    Raises:
        ValueError: unknown ``SOLVER.LR_SCHEDULER_NAME`` (the message lists the accepted names), or an
            invalid ``SOLVER.MAX_ITER``, ``STEPS``, ``BASE_LR``/``BASE_LR_END``, ``GAMMA``,
            ``NUM_DECAYS``, ``WARMUP_ITERS`` or ``WARMUP_METHOD``.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name not in LR_SCHEDULER_NAMES:
        raise ValueError(
            f"Unknown LR scheduler: SOLVER.LR_SCHEDULER_NAME={name!r}; accepted: {list(LR_SCHEDULER_NAMES)}"
        )
    max_iter = _checks.positive_int("SOLVER.MAX_ITER", solver.MAX_ITER)
    sched: ParamScheduler
    if name == "WarmupMultiStepLR":
        sched = _multistep(solver, max_iter)
    elif name == "WarmupCosineLR":
        sched = _cosine(solver)
    else:
        sched = _step_with_fixed_gamma(solver, max_iter)

    warmup_iters = _checks.real("SOLVER.WARMUP_ITERS", solver.WARMUP_ITERS, non_negative=True)
    method = _checks.choice("SOLVER.WARMUP_METHOD", solver.WARMUP_METHOD, ("linear", "constant"))
    warmup_factor = _checks.real("SOLVER.WARMUP_FACTOR", solver.WARMUP_FACTOR, non_negative=True)
    if warmup_iters > 0 and warmup_factor < 1:
        _warn_if_base_lr_is_never_reached(solver, sched, max_iter, warmup_iters)
    sched = WarmupParamScheduler(
        sched, warmup_factor, min(warmup_iters / max_iter, 1.0), method, bool(solver.RESCALE_INTERVAL)
    )
    return LRMultiplier(optimizer, multiplier=sched, max_iter=max_iter)


def _warn_if_base_lr_is_never_reached(solver: Any, decay: ParamScheduler, max_iter: int, warmup_iters: float) -> None:
    """One warning, naming both keys, when the warmup lasts the whole run or a decay comes before it ends.

    Not for ``WarmupCosineLR``, whose cosine already decays during the warmup (its LR never quite reaches
    ``BASE_LR``, by design: detectron2's schedule).
    """
    if max_iter <= warmup_iters:
        logger.warning(
            f"SOLVER.MAX_ITER ({max_iter}) <= SOLVER.WARMUP_ITERS ({warmup_iters:g}): the learning rate warms up "
            f"during the whole run and never reaches SOLVER.BASE_LR ({solver.BASE_LR}); lower SOLVER.WARMUP_ITERS "
            f"(e.g. to {max(1, max_iter // 10)}) or raise SOLVER.MAX_ITER"
        )
        return
    if solver.LR_SCHEDULER_NAME == "WarmupCosineLR" or decay(warmup_iters / max_iter) >= 1.0:
        return
    key = "SOLVER.STEPS" if solver.LR_SCHEDULER_NAME == "WarmupMultiStepLR" else "SOLVER.NUM_DECAYS"
    value = list(solver.STEPS) if key == "SOLVER.STEPS" else solver.NUM_DECAYS
    logger.warning(
        f"{key} ({value}) decays the learning rate before SOLVER.WARMUP_ITERS ({warmup_iters:g}) ends: it never "
        f"reaches SOLVER.BASE_LR ({solver.BASE_LR}); lower SOLVER.WARMUP_ITERS or move the decays later"
    )
