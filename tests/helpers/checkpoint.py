"""Helpers shared by the checkpoint tests: a position-seeded loader and a fit in either run mode."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from d2lightning.engine import D2LightningModule, SimpleTrainer
from d2lightning.engine.adapter import as_callback
from tests.helpers.training import infinite_loader, lightning_trainer

MODES = ["simple", "lightning"]


def loader_from(start: int) -> Iterator[torch.Tensor]:
    """Batch ``i`` depends only on ``i``: a resumed run sees the batches an uninterrupted one would."""
    i = start
    while True:
        yield torch.rand(3, 3, generator=torch.Generator().manual_seed(i))
        i += 1


def new_trainer(model: torch.nn.Module, opt: torch.optim.Optimizer, loader: Any = None) -> SimpleTrainer:
    return SimpleTrainer(model, loader if loader is not None else infinite_loader(), opt)


def fit(
    mode: str, trainer: SimpleTrainer, hooks: list[Any], max_iter: int, start: int = 0, ckpt_path: Any = None
) -> None:
    """Train ``trainer`` with ``hooks``: ``trainer.train`` ("simple") or ``pl.Trainer.fit`` ("lightning")."""
    if mode == "simple":
        assert ckpt_path is None
        trainer.register_hooks(hooks)
        trainer.train(start, max_iter)
    else:
        assert start == 0, "a Lightning fit starts at 0 or at its checkpoint"
        pl_trainer = lightning_trainer(max_iter, [as_callback(h) for h in hooks])
        pl_trainer.fit(D2LightningModule(trainer=trainer), ckpt_path=ckpt_path)


def files(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))
