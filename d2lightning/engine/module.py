"""``D2LightningModule``: a detectron2 model, data and optimizer (or a whole detectron2-style trainer) as a
LightningModule for any ``lightning.pytorch.Trainer``.

It is :class:`~d2lightning.engine.lightning.trainer_module.TrainerModule` with detectron2's ``SimpleTrainer`` built
for you: ``training_step`` is ``SimpleTrainer.run_step`` (fetch, forward, zero_grad, backward, ``after_backward``,
metrics, optimizer step — detectron2's order, under Lightning's manual optimization), and our hooks, detectron2
hooks (``HookCallback``) and Lightning's callbacks go in the Trainer's ``callbacks`` list, in any mix and order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from d2lightning.engine.lightning.trainer_module import TrainerModule
from d2lightning.engine.simple_trainer import SimpleTrainer
from d2lightning.engine.trainer_base import TrainerBase

__all__ = ["D2LightningModule"]


class D2LightningModule(TrainerModule):
    """Train a detectron2-style model with detectron2's step semantics in any Lightning Trainer.

    The data is the module's own loader (detectron2's loaders: infinite, sharded by rank, never touched by
    Lightning) or the Trainer's (a datamodule, ``fit(train_dataloaders=...)`` or a ``train_dataloader()`` override;
    Lightning then injects its distributed sampler into plain map-style loaders, as always) — one of the two.

    Args:
        model: a detectron2-style model (``list[dict]`` in, dict of scalar losses out in training).
        data_loader: an iterable of batches, infinite (detectron2's loaders are) or finite (iterated again); None
            when the Trainer gives the data.
        optimizer: a torch optimizer over ``model``'s parameters.
        trainer: instead of the three above, an existing detectron2-style trainer (``SimpleTrainer``,
            ``AMPTrainer``, ``DefaultTrainer``, or a user subclass with its own ``run_step``); its registered hooks
            run too, right after the Trainer's own first callback.
        evaluator: a detectron2 ``DatasetEvaluator`` for ``trainer.validate``/``test`` and validation during
            ``fit`` (its results are logged, so ``EarlyStopping``/``ModelCheckpoint`` can monitor them).
        sharding: with ``Trainer(strategy=ModelParallelStrategy(...))``, how the model is cut into FSDP units
            (:class:`~d2lightning.engine.FSDPSharding`; the trainer's ``sharding``). None: by size.

    Attributes:
        d2_trainer: the detectron2-style trainer; hooks see it as ``self.trainer``.

    Raises:
        TypeError: when neither ``(model, optimizer)`` nor ``trainer`` is given, or both are, or ``evaluator`` is
            not an evaluator.
        ValueError: at fit time, when the Trainer has no ``max_steps``, when there is no training data or both a
            ``data_loader`` and Trainer data, or when validation could never run (see the README's table).

    Example::

        trainer = pl.Trainer(max_steps=1000, callbacks=[hooks.IterationTimer(), LearningRateMonitor()])
        trainer.fit(D2LightningModule(model, data_loader, optimizer))
        trainer.fit(D2LightningModule(model, None, optimizer), datamodule=my_datamodule)
        # sharded: pl.Trainer(strategy=ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1), ...)
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        data_loader: Iterable[Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        trainer: TrainerBase | None = None,
        evaluator: Any = None,
        sharding: Any = None,
    ) -> None:
        if trainer is None:
            missing = [name for name, x in (("model", model), ("optimizer", optimizer)) if x is None]
            if missing:
                raise TypeError(f"D2LightningModule needs a model and an optimizer (or trainer=); missing {missing}")
            trainer = SimpleTrainer(model, data_loader, optimizer)  # type: ignore[arg-type]
        elif model is not None or data_loader is not None or optimizer is not None:
            raise TypeError("D2LightningModule takes either (model, data_loader, optimizer) or trainer=, not both")
        if not isinstance(trainer, TrainerBase):
            raise TypeError(f"trainer must be a d2lightning TrainerBase, got {type(trainer).__qualname__}")
        if sharding is not None:
            trainer.sharding = sharding
        super().__init__(trainer, evaluator=evaluator)
