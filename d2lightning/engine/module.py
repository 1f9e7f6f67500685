"""``D2LightningModule``: detectron2's trainer semantics as a LightningModule.

``training_step`` is the trainer's ``run_step`` (fetch, forward, zero_grad, backward, ``after_backward``,
metrics, optimizer step — in detectron2's order, under Lightning's manual optimization), followed by counting
the iteration. The module can be fitted by any ``lightning.pytorch.Trainer(max_steps=N)``, with our hooks,
detectron2 hooks (``HookCallback``) and Lightning callbacks in its ``callbacks`` list. It is also what
``TrainerBase.train`` fits underneath.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from d2lightning.engine.adapter import LightningRun, _D2Callback, run_for
from d2lightning.engine.train_loop import SimpleTrainer, TrainerBase

__all__ = ["D2LightningModule", "LightningTrainerView"]


class D2LightningModule(pl.LightningModule):
    """Train a detectron2-style model with detectron2's step semantics in any Lightning Trainer.

    Args:
        model: a detectron2-style model (``list[dict]`` in, dict of scalar losses out in training).
        data_loader: an iterable of batches; infinite (detectron2's loaders are) or finite (iterated again).
        optimizer: a torch optimizer over ``model``'s parameters.
        trainer: instead of the three above, an existing detectron2-style trainer (``SimpleTrainer``,
            ``AMPTrainer``, ``DefaultTrainer``, or a user subclass with its own ``run_step``).

    Attributes:
        d2_trainer: the detectron2-style trainer; hooks see it as ``self.trainer``.

    Raises:
        TypeError: when neither ``(model, data_loader, optimizer)`` nor ``trainer`` is given, or both are.
        ValueError: at fit time, when the Lightning Trainer has no ``max_steps``.

    Example::

        trainer = pl.Trainer(max_steps=1000, callbacks=[hooks.IterationTimer(), LearningRateMonitor()])
        trainer.fit(D2LightningModule(model, data_loader, optimizer))
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        data_loader: Iterable[Any] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        trainer: TrainerBase | None = None,
    ) -> None:
        super().__init__()
        given = [x is not None for x in (model, data_loader, optimizer)]
        if trainer is None:
            if not all(given):
                missing = [n for n, g in zip(("model", "data_loader", "optimizer"), given, strict=True) if not g]
                raise TypeError(f"D2LightningModule needs model, data_loader and optimizer; missing {missing}")
            trainer = SimpleTrainer(model, data_loader, optimizer)  # type: ignore[arg-type]
        elif any(given):
            raise TypeError("D2LightningModule takes either (model, data_loader, optimizer) or trainer=, not both")
        if not isinstance(trainer, TrainerBase):
            raise TypeError(f"trainer must be a d2lightning TrainerBase, got {type(trainer).__qualname__}")
        self.automatic_optimization = False
        self.d2_trainer = trainer
        inner_model = getattr(trainer, "model", None)
        if isinstance(inner_model, torch.nn.Module):
            self.model = inner_model  # a submodule: Lightning moves, wraps and checkpoints it
        self._run: LightningRun | None = None

    def configure_optimizers(self) -> Any:
        return getattr(self.d2_trainer, "optimizer", None)

    def configure_callbacks(self) -> list[Callback]:
        return [_RunCallback()]

    def train_dataloader(self) -> Iterable[int]:
        # The trainer fetches its own data inside run_step (as detectron2 does, which is also what makes
        # data_time exact); Lightning only needs something that ticks once per iteration.
        return _Ticks()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            max_steps = self.trainer.max_steps
            if max_steps is None or max_steps < 0:
                raise ValueError(
                    "D2LightningModule trains by iterations, as detectron2: create the Trainer with max_steps=N "
                    f"(got max_steps={max_steps})"
                )
            self._run = run_for(self.trainer, self)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        self.d2_trainer.run_step()
        self._run.advance()  # type: ignore[union-attr]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainer's own state (e.g. ``AMPTrainer``'s grad scaler) in Lightning checkpoints.

        Stored under ``"d2_trainer"``: ``d2_trainer.state_dict()`` without ``"hooks"`` (Lightning saves the
        hooks itself, as callbacks).
        """
        state = self.d2_trainer.state_dict()
        state.pop("hooks", None)
        checkpoint["d2_trainer"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give ``checkpoint["d2_trainer"]``, if any, to ``d2_trainer.load_state_dict``."""
        state = checkpoint.get("d2_trainer")
        if state is not None:
            self.d2_trainer.load_state_dict(state)


class _Ticks:
    """An endless iterable of zeros: one per Lightning batch."""

    def __iter__(self) -> Iterator[int]:
        return itertools.repeat(0)


class _RunCallback(Callback):
    """Opens and closes a :class:`LightningRun` around the hooks, and runs the trainer-level extensions.

    ``D2LightningModule.configure_callbacks`` appends it, so it runs after every user callback (Lightning only
    moves its ``Checkpoint`` callbacks behind it). It opens the storage even when there is no hook, calls the
    owner's ``before_train``/``before_step``/``after_step``/``after_train`` once per event (what a trainer
    subclass adds there), sends scalars to the Lightning loggers, closes the storage after every hook's
    ``after_train`` (also on an exception), and plays detectron2's empty loop when ``start_iter >= max_iter``
    (Lightning then skips training altogether, but detectron2 still calls ``before_train``/``after_train``).
    """

    _run: LightningRun
    _closes_runs = True

    @property
    def state_key(self) -> str:
        return "d2lightning.RunCallback"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._run = run_for(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run = run_for(trainer, pl_module)
        self._run.begin()
        self._run.owner.before_train()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._run.before_step(trainer.global_step)
        self._run.owner.before_step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._run.owner.after_step()
        self._run.flush_loggers()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        run.end(None)
        try:
            run.owner.after_train()
        finally:
            run.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        run = getattr(self, "_run", None)
        if run is None or run.closed:
            return
        try:
            if run.started:
                run.end(exception)
                run.owner.after_train()
        finally:
            run.close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._run
        if run.started or run.closed or trainer.global_step < (trainer.max_steps or 0):
            return
        hooks = [cb for cb in trainer.callbacks if isinstance(cb, _D2Callback)]  # type: ignore[attr-defined]
        run.begin()
        try:
            failed = True
            try:
                for cb in hooks:
                    cb.before_train()
                run.owner.before_train()
                failed = False
            finally:
                if not failed:  # detectron2's `iter += 1` after the (empty) loop; a failed start stays put
                    run.end_empty()
                for cb in hooks:
                    run.call_after_train(cb)
                run.owner.after_train()
        finally:
            run.close()


class LightningTrainerView(TrainerBase):
    """The detectron2-style trainer that hooks see when the LightningModule is not a ``D2LightningModule``.

    ``model`` is the LightningModule, ``optimizer`` Lightning's first optimizer (None without one),
    ``data_loader`` Lightning's train dataloader; ``iter``, ``start_iter``, ``max_iter`` and ``storage``
    follow the fit like for any other trainer.
    """

    def __init__(self, pl_module: pl.LightningModule) -> None:
        super().__init__()
        self._module = pl_module

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
