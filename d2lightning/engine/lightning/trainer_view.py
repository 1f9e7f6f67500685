"""The detectron2-style trainer hooks see in a fit of a LightningModule that is not d2lightning's."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from d2lightning.engine.lightning.run import call_hooks
from d2lightning.utils.events import EventStorage

if TYPE_CHECKING:
    from d2lightning.engine.lightning.run import TrainingRun

__all__ = ["LightningTrainerView", "view_of"]


class LightningTrainerView:
    """The detectron2-style trainer hooks see when the LightningModule is not d2lightning's.

    ``model`` is the LightningModule, ``optimizer`` Lightning's first optimizer (None without one), ``data_loader``
    Lightning's train dataloader; ``iter``, ``start_iter``, ``max_iter`` and ``storage`` follow the fit.
    """

    def __init__(self, pl_module: pl.LightningModule) -> None:
        self._module = pl_module
        self._hooks: list[Any] = []
        self._run: TrainingRun | None = None
        self.iter = self.start_iter = self.max_iter = 0
        self.storage: EventStorage | None = None
        self.lightning_trainer: pl.Trainer | None = None

    @property
    def model(self) -> pl.LightningModule:
        return self._module

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        optimizers = self._module.trainer.optimizers
        return optimizers[0] if optimizers else None

    @property
    def data_loader(self) -> Any:
        return self._module.trainer.train_dataloader

    def before_train(self) -> None:
        call_hooks(self._hooks, "before_train")

    def after_train(self) -> None:
        self.storage.iter = self.iter  # type: ignore[union-attr]
        call_hooks(self._hooks, "after_train")

    def before_step(self) -> None:
        pass  # the hooks' before_step come from Lightning

    def after_backward(self) -> None:
        if self._run is not None:
            self._run.after_backward()


def view_of(pl_module: pl.LightningModule) -> Any:
    """The detectron2-style trainer of ``pl_module``: its ``d2_trainer``, or a :class:`LightningTrainerView`."""
    owner = getattr(pl_module, "d2_trainer", None)
    if owner is None:
        owner = LightningTrainerView(pl_module)
        object.__setattr__(pl_module, "d2_trainer", owner)
    return owner
