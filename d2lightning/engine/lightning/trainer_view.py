"""The detectron2-style trainer hooks see in a fit of a LightningModule that is not d2lightning's."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

from d2lightning.engine.lightning.backend import call_hooks
from d2lightning.utils.events import EventStorage

if TYPE_CHECKING:
    from d2lightning.engine.lightning.run import RunBinding

__all__ = ["LightningTrainerView"]


class LightningTrainerView:
    """The detectron2-style trainer hooks see when the LightningModule is not d2lightning's.

    ``model`` is the LightningModule, ``optimizer`` Lightning's first optimizer (None without one), ``data_loader``
    Lightning's train dataloader; ``iter``, ``start_iter``, ``max_iter`` and ``storage`` follow the fit. It speaks the
    run's side of the trainer protocol (see ``TrainerBase.begin_run``); the module's own training step does the rest.
    """

    def __init__(self, pl_module: pl.LightningModule) -> None:
        self._module = pl_module
        self._hooks: list[Any] = []
        self.iter = self.start_iter = self.max_iter = 0
        self.storage: EventStorage | None = None
        self.pl_trainer: pl.Trainer | None = None

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

    # ------------------------------------------------------------ the run protocol
    def registered_hooks(self) -> list[Any]:
        return []

    def hook_callbacks(self) -> list[Any]:
        return []

    def check_trainer_options(self, pl_trainer: pl.Trainer) -> None:
        pass  # the module steps itself: every Trainer option is Lightning's to honour

    def begin_run(self, binding: RunBinding) -> None:
        self._hooks = list(binding.hooks)
        self.pl_trainer = binding.pl_trainer
        proxy = weakref.proxy(self)
        for hook in self._hooks:
            hook.trainer = proxy

    def end_run(self) -> None:
        self._hooks = []

    def resume_streams(self, start_iter: int) -> None:
        pass  # the data and the RNG are Lightning's and the module's

    def gather_rank_states(self) -> None:
        pass  # nothing of the hooks' own to save: the module's state is Lightning's

    # ------------------------------------------------------------ detectron2's dispatchers
    def before_train(self) -> None:
        call_hooks(self._hooks, "before_train")

    def after_train(self) -> None:
        self.storage.iter = self.iter  # type: ignore[union-attr]
        call_hooks(self._hooks, "after_train")

    def before_step(self) -> None:
        pass  # the hooks' before_step come from Lightning

    def after_step(self) -> None:
        pass  # the hooks' after_step come from Lightning
