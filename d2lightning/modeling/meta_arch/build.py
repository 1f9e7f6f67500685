"""detectron2 ``modeling/meta_arch/build.py``: :data:`META_ARCH_REGISTRY` and :func:`build_model`."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from d2lightning.config.lookup import cfg_get
from d2lightning.modeling.registry import Registry

__all__ = ["META_ARCH_REGISTRY", "build_model"]

logger = logging.getLogger(__name__)

META_ARCH_REGISTRY = Registry("META_ARCH")
"""Whole-model architectures: each entry is called as ``obj(cfg)`` and returns an ``nn.Module``."""


def build_model(cfg: Any) -> nn.Module:
    """detectron2 ``build_model``: build ``cfg.MODEL.META_ARCHITECTURE`` and move it to ``cfg.MODEL.DEVICE``.

    No weights are loaded. When ``MODEL.DEVICE`` is absent from ``cfg`` the model goes to CUDA if available,
    else CPU.

    Raises:
        KeyError: for an unregistered architecture (the message lists the registered ones).
    """
    name = cfg_get(cfg, "MODEL.META_ARCHITECTURE")
    model = META_ARCH_REGISTRY.get(name)(cfg)
    device = cfg_get(cfg, "MODEL.DEVICE", default="cuda" if torch.cuda.is_available() else "cpu")
    model.to(torch.device(device))
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Built model %s on %s (%d parameters)", name, device, n_params)
    return model
