"""What the stream tests share: seeding every global generator, and the draws a training step makes from them."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed(value: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def model_draw() -> None:
    """What a training step draws from the global generators (dropout and the like)."""
    torch.rand(3)
    np.random.rand()
    random.random()
