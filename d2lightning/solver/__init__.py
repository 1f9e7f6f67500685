"""Optimizers and LR schedules with detectron2's names and numbers (``detectron2.solver``).

``from detectron2.solver import build_lr_scheduler, build_optimizer`` becomes
``from d2lightning.solver import ...``. fvcore's parameter schedulers (``fvcore.common.param_scheduler``)
are reimplemented in :mod:`d2lightning.solver.param_scheduler` and exported here too.
"""

from d2lightning.solver.build import (
    LR_SCHEDULER_NAMES,
    OPTIMIZER_NAMES,
    build_lr_scheduler,
    build_optimizer,
)
from d2lightning.solver.gradient_clipping import GradientClipType, maybe_add_gradient_clipping
from d2lightning.solver.lr_scheduler import (
    LRMultiplier,
    LRScheduler,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)
from d2lightning.solver.param_groups import get_default_optimizer_params, reduce_param_groups
from d2lightning.solver.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    ExponentialParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
    StepParamScheduler,
    StepWithFixedGammaParamScheduler,
)

__all__ = [
    "LR_SCHEDULER_NAMES",
    "OPTIMIZER_NAMES",
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "ExponentialParamScheduler",
    "GradientClipType",
    "LRMultiplier",
    "LRScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "PolynomialDecayParamScheduler",
    "StepParamScheduler",
    "StepWithFixedGammaParamScheduler",
    "WarmupCosineLR",
    "WarmupMultiStepLR",
    "WarmupParamScheduler",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]
