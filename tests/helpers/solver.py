"""The ``SOLVER`` section of detectron2's default config, for the solver and scheduler tests."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def solver_cfg(**solver: Any) -> Any:
    """A config holding detectron2's default ``SOLVER`` keys (yacs defaults: optimizer, schedule, clipping),
    updated with ``solver``."""
    defaults: dict[str, Any] = {
        "BASE_LR": 0.001,
        "MOMENTUM": 0.9,
        "NESTEROV": False,
        "WEIGHT_DECAY": 1e-4,
        "WEIGHT_DECAY_NORM": 0.0,
        "BIAS_LR_FACTOR": 1.0,
        "WEIGHT_DECAY_BIAS": None,
        "CLIP_GRADIENTS": {"ENABLED": False, "CLIP_TYPE": "value", "CLIP_VALUE": 1.0, "NORM_TYPE": 2.0},
        "LR_SCHEDULER_NAME": "WarmupMultiStepLR",
        "MAX_ITER": 40000,
        "BASE_LR_END": 0.0,
        "GAMMA": 0.1,
        "STEPS": [30000],
        "NUM_DECAYS": 3,
        "WARMUP_FACTOR": 1.0 / 1000,
        "WARMUP_ITERS": 1000,
        "WARMUP_METHOD": "linear",
        "RESCALE_INTERVAL": False,
    }
    defaults.update(solver)
    return OmegaConf.create({"SOLVER": defaults})
