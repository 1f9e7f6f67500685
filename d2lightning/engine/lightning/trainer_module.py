"""``TrainerModule``: a detectron2-style trainer's ``run_step`` as Lightning's training step.

The base of :class:`~d2lightning.engine.module.D2LightningModule` and what ``TrainerBase.train`` fits. One training
step is one detectron2 iteration: the trainer's ``run_step`` (fetch, forward, zero_grad, backward, metrics,
optimizer step, in detectron2's order, under Lightning's manual optimization), then Lightning counts it. What a
Lightning user configures on the Trainer is honoured or refused at once:

* ``accumulate_grad_batches=N`` becomes detectron2-style accumulation (``N`` micro-batches per iteration, one
  optimizer step; ``max_steps`` and ``global_step`` keep counting optimizer steps), ``gradient_clip_val`` clips
  before each optimizer step — Lightning refuses both under manual optimization otherwise;
* ``*-true`` precisions convert the batches as they convert the weights (a model that then computes in another
  dtype inside fails with a message saying so);
* ``fit(ckpt_path="last")`` also finds the ``last_checkpoint`` of detectron2's ``PeriodicCheckpointer``;
* data given to the Trainer is what the step trains on (see :mod:`d2lightning.engine.lightning.batches`), and
  validation that could never run on an endless stream is an error naming the setting that makes it run;
* ``trainer.validate/test/predict`` run the wrapped model in eval mode (an ``evaluator``, detectron2's
  ``DatasetEvaluator``, turns validation and test into detectron2's evaluation, logged for monitors).
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from d2lightning.engine.hook_base import as_callback
from d2lightning.engine.lightning import _private
from d2lightning.engine.lightning.batches import LightningBatches, batch_converter, check_validation_runs
from d2lightning.engine.lightning.run import TrainingRun
from d2lightning.evaluation.testing import flatten_results_dict
from d2lightning.utils import comm

__all__ = ["TrainerModule"]

_MISSING = object()
_TRANSFER_HOOKS = ("on_before_batch_transfer", "transfer_batch_to_device", "on_after_batch_transfer")
_BATCH_SIZE_POSITION = 9  # LightningModule.log(name, value, prog_bar, ..., add_dataloader_idx, batch_size, ...)

#: Lightning's notices about choices this module makes (a default ``validation_step``, the ``dataloader_iter``
#: step that lets detectron2's step fetch its own data), silenced while a fit sets up.
_OWN_CHOICES = (
    "You defined a `validation_step` but have no `val_dataloader`",
    "You are using the `dataloader_iter` step flavor",
    "Found `dataloader_iter` argument in the `training_step`",
)


class TrainerModule(_private.QuickFxName, pl.LightningModule):
    """Train a detectron2-style trainer in any Lightning Trainer (see the module docstring).

    Args:
        trainer: a detectron2-style trainer (``SimpleTrainer``, ``AMPTrainer``, ``DefaultTrainer``, or a subclass
            with its own ``run_step``).
        evaluator: a detectron2 ``DatasetEvaluator`` (``reset``/``process``/``evaluate``) that validation and test
            feed with the model's outputs; its results are logged (``self.log_dict``) at the end of the epoch.

    Attributes:
        d2_trainer: the detectron2-style trainer; hooks see it as ``self.trainer``.
        model: the trainer's model (a submodule: Lightning moves, wraps and checkpoints it).
    """

    def __init__(self, trainer: Any, evaluator: Any = None) -> None:
        super().__init__()
        if evaluator is not None and not all(
            callable(getattr(evaluator, name, None)) for name in ("reset", "process", "evaluate")
        ):
            raise TypeError(
                f"evaluator must be a detectron2 DatasetEvaluator (reset, process, evaluate), got "
                f"{type(evaluator).__qualname__}"
            )
        self.automatic_optimization = False
        self.d2_trainer = trainer
        self.evaluator = evaluator
        inner_model = getattr(trainer, "model", None)
        if isinstance(inner_model, torch.nn.Module):
            self.model = inner_model
        self._run: TrainingRun | None = None
        self._batches: LightningBatches | None = None
        self._count_iteration: Any = None
        self._adopted: dict[str, Any] | None = None  # the Trainer options taken over for the current fit
        self._clip: tuple[float, str | None] | None = None
        self._lean: _private.LeanTrainingLoop | None = None
        self._converts_weights = False  # a *-true precision: Lightning converted the weights

    # ------------------------------------------------------------ the Trainer's options, before anything runs
    @property
    def trainer(self) -> pl.Trainer:
        return pl.LightningModule.trainer.fget(self)  # type: ignore[attr-defined]

    @trainer.setter
    def trainer(self, trainer: pl.Trainer | None) -> None:
        pl.LightningModule.trainer.fset(self, trainer)  # type: ignore[attr-defined]
        # Trainer.fit attaches itself before it checks its options or resolves ckpt_path="last"
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING and self._adopted is None:
            self._adopt_trainer_options(trainer)

    def _adopt_trainer_options(self, trainer: pl.Trainer) -> None:
        self._adopted = {}
        _silence_own_choices(True)
        step_trainer = self._step_trainer()
        n = trainer.accumulate_grad_batches
        if n != 1:
            own = getattr(step_trainer, "accumulate_grad_batches", None)
            if own is None:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={n}): {type(step_trainer).__qualname__} has its own run_step "
                    "and no accumulate_grad_batches; accumulate inside run_step, or use a SimpleTrainer"
                )
            if own not in (1, n):
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={n}) and the module's trainer (accumulate_grad_batches={own}) "
                    "disagree: set one of them"
                )
            step_trainer.accumulate_grad_batches = n
            self._adopted["accumulate_grad_batches"] = (n, own)
            trainer.accumulate_grad_batches = 1  # detectron2-style accumulation inside the step instead
        clip = trainer.gradient_clip_val
        if clip is not None and clip > 0:
            self._clip = (float(clip), trainer.gradient_clip_algorithm)
            self._adopted["gradient_clip_val"] = clip
            trainer.gradient_clip_val = None  # clipped in on_before_optimizer_step instead
        _private.resolve_last_checkpoint_with(trainer, self._last_d2_checkpoint)

    def _restore_trainer_options(self, trainer: pl.Trainer) -> None:
        _silence_own_choices(False)
        _private.resolve_last_checkpoint_with(trainer, None)
        adopted = self._adopted or {}
        if "accumulate_grad_batches" in adopted:
            n, own = adopted["accumulate_grad_batches"]
            trainer.accumulate_grad_batches = n
            self._step_trainer().accumulate_grad_batches = own
        if "gradient_clip_val" in adopted:
            trainer.gradient_clip_val = adopted["gradient_clip_val"]
        self._adopted = None
        self._clip = None

    # ------------------------------------------------------------ fit
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        trainer = self.trainer
        max_steps = trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise ValueError(
                "D2LightningModule trains by iterations, as detectron2: create the Trainer with max_steps=N "
                f"(got max_steps={max_steps})"
            )
        step_trainer = self._step_trainer()
        lightning_data = self._lightning_gives_data(trainer)
        own = getattr(step_trainer, "data_loader", _MISSING)
        if lightning_data and own is not None and own is not _MISSING:
            raise ValueError(
                "D2LightningModule got a data_loader and the Trainer got training data too (a datamodule, "
                "train_dataloaders= or a train_dataloader() override): give the data to one of them"
            )
        if not lightning_data and own is None:
            raise ValueError(
                "No training data: pass data_loader= to D2LightningModule, or give the Trainer data with "
                "trainer.fit(module, train_dataloaders=...) or trainer.fit(module, datamodule=...)"
            )
        self._run = TrainingRun.attach(trainer, self.d2_trainer, as_callback)
        self._run.on_close.append(self._end_of_fit)
        self._converts_weights = batch_converter(trainer) is not None
        if lightning_data:
            self._batches = LightningBatches(trainer, self)
            step_trainer._data_loader_iter_obj = self._batches
        else:
            self._batches = None
            converter = batch_converter(trainer)
            convert = getattr(step_trainer, "_convert_batches", None)
            if callable(convert):
                convert(converter)
            elif converter is not None:
                raise ValueError(
                    f"Trainer(precision={trainer.precision!r}) converts the weights, and the batches need the same "
                    f"dtype, but {type(step_trainer).__qualname__} fetches its own batches in run_step: convert them "
                    "there, use a mixed precision (e.g. 'bf16-mixed'), or give the data to the Trainer"
                )
            check_validation_runs(trainer, _private.val_data_defined(trainer), endless=True)
            self._warn_unused_transfer_hooks()

    def on_train_start(self) -> None:
        _silence_own_choices(False)
        trainer = self.trainer
        if self._batches is not None:
            check_validation_runs(trainer, _private.val_data_defined(trainer))
        self._count_iteration = _private.iteration_counter(trainer)
        if _private.LeanTrainingLoop.applies(trainer):
            self._lean = _private.LeanTrainingLoop(trainer)

    def configure_optimizers(self) -> Any:
        """The trainer's optimizer (stepped by its ``run_step``, through Lightning's strategy)."""
        return getattr(self.d2_trainer, "optimizer", None)

    def train_dataloader(self) -> Iterable[int]:
        """Ticks, one per iteration: the trainer fetches its own data inside ``run_step`` (detectron2 loaders are
        infinite and sharded already), and Lightning's ``batch_idx`` counts iterations."""
        return _Ticks()

    def training_step(self, dataloader_iter: Iterator[Any]) -> None:
        batches = self._batches
        try:
            if batches is None:
                next(dataloader_iter)
                self.d2_trainer.run_step()
            else:
                batches.start_step(dataloader_iter)
                self.d2_trainer.run_step()
                batches.end_step()
        except RuntimeError as e:
            if self._converts_weights and _is_dtype_error(e):
                raise RuntimeError(
                    f"Trainer(precision={self.trainer.precision!r}) converted the weights and the batches' floating "
                    f"tensors, but the model computed in another dtype inside ({e}). Make the model follow the dtype "
                    "of its weights (e.g. images.to(self.pixel_mean.dtype)), or use a mixed precision such as "
                    "'bf16-mixed'"
                ) from e
            raise
        self._count_iteration()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.d2_trainer.after_step()  # what a trainer subclass adds after the hooks

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._clip is not None:
            value, algorithm = self._clip
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)

    def _end_of_fit(self) -> None:
        """When the run closes (also after a failure, when Lightning calls no ``teardown``): give the Trainer its
        options back and the step trainer its own data."""
        if self._lean is not None:
            self._lean.remove()
            self._lean = None
        step_trainer = self._step_trainer()
        if self._batches is not None and getattr(step_trainer, "_data_loader_iter_obj", None) is self._batches:
            step_trainer._data_loader_iter_obj = None
        self._batches = None
        convert = getattr(step_trainer, "_convert_batches", None)
        if callable(convert):
            convert(None)
        self._restore_trainer_options(self.trainer)

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log``; during training, without ``batch_size``, every iteration weighs the same.

        Lightning infers the batch size of a logged value from the batch its loop fetched; here the step fetches its
        own batches (as detectron2's does), so Lightning requires ``batch_size=`` in every call made while training
        (callbacks' included). It defaults to 1: epoch-level values are means over iterations.
        """
        given = len(args) > _BATCH_SIZE_POSITION or kwargs.get("batch_size") is not None
        if not given and self._trainer is not None and self._trainer.training:
            kwargs["batch_size"] = 1
        super().log(name, value, *args, **kwargs)

    # ------------------------------------------------------------ evaluation and prediction
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def on_validation_epoch_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.reset()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        outputs = self.model(batch)
        if self.evaluator is not None:
            self.evaluator.process(batch, outputs)
        return outputs

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation()

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation()

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.model(batch)

    def _log_evaluation(self) -> None:
        """The evaluator's results (returned on the main process, as detectron2's) logged on every rank."""
        if self.evaluator is None or self.trainer.sanity_checking:
            return
        results = self.evaluator.evaluate()
        if comm.get_world_size() > 1:
            results = comm.all_gather(results)[0]
        flat = flatten_results_dict(results or {})
        if flat:
            self.log_dict({k: float(v) for k, v in flat.items()}, sync_dist=False)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the trainer's own state (e.g. ``AMPTrainer``'s grad scaler) in Lightning checkpoints.

        Stored under ``"d2_trainer"``: ``d2_trainer.state_dict()`` without ``"hooks"`` (Lightning saves the hooks
        itself, as callbacks).
        """
        state = self.d2_trainer.state_dict()
        state.pop("hooks", None)
        checkpoint["d2_trainer"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give ``checkpoint["d2_trainer"]``, if any, to ``d2_trainer.load_state_dict``."""
        state = checkpoint.get("d2_trainer")
        if state is not None:
            self.d2_trainer.load_state_dict(state)

    # ------------------------------------------------------------ private
    def _step_trainer(self) -> Any:
        """The trainer whose ``run_step`` does the work (``DefaultTrainer`` keeps one as ``_trainer``)."""
        return getattr(self.d2_trainer, "_trainer", self.d2_trainer)

    def _warn_unused_transfer_hooks(self) -> None:
        """The module's own loader is read inside ``run_step``, past Lightning's batch-transfer hooks: say so when a
        subclass overrides one (they still run for validation, test and predict)."""
        overridden = [
            name for name in _TRANSFER_HOOKS if getattr(type(self), name) is not getattr(pl.LightningModule, name)
        ]
        if overridden:
            warnings.warn(
                f"{type(self).__qualname__} overrides {', '.join(overridden)}, but training batches from the module's "
                "own data_loader reach the model as the loader yields them (detectron2 models move their inputs "
                "themselves), so Lightning does not call it while training. To have it run, give the loader to the "
                "Trainer: D2LightningModule(model, None, optimizer) and trainer.fit(module, train_dataloaders=loader)",
                UserWarning,
                stacklevel=2,
            )

    def _lightning_gives_data(self, trainer: pl.Trainer) -> bool:
        source = _private.train_data_source(trainer)
        if source is not self:
            return True
        return type(self).train_dataloader is not TrainerModule.train_dataloader

    def _last_d2_checkpoint(self) -> str | None:
        """The newest file a detectron2 checkpointer of this fit names in ``last_checkpoint`` and that holds
        Lightning's state (``fit(ckpt_path="last")``)."""
        from d2lightning.checkpoint.lightning_state import holds_lightning_state

        trainer = self.trainer
        holders = [self.d2_trainer, *(getattr(cb, "d2_hook", None) for cb in trainer.callbacks)]  # type: ignore[attr-defined]
        found: list[str] = []
        for holder in holders:
            checkpointer = getattr(holder, "checkpointer", None)
            get = getattr(checkpointer, "get_checkpoint_file", None)
            path = get() if callable(get) else ""
            if path and os.path.isfile(path) and path not in found and holds_lightning_state(path):
                found.append(path)
        return max(found, key=os.path.getmtime) if found else None


def _is_dtype_error(error: RuntimeError) -> bool:
    """Whether torch refused an operation for mixing dtypes."""
    message = str(error)
    return any(s in message for s in ("dtype", "should be the same", "scalar type", "Expected object of scalar"))


def _silence_own_choices(on: bool) -> None:
    """Add (or remove) the warning filters for :data:`_OWN_CHOICES` (idempotent)."""
    patterns = {re.escape(message) for message in _OWN_CHOICES}
    ours = [f for f in warnings.filters if f[0] == "ignore" and f[1] is not None and f[1].pattern in patterns]
    if on and not ours:
        for pattern in patterns:
            warnings.filterwarnings("ignore", message=pattern)
    elif not on and ours:
        for f in ours:
            warnings.filters.remove(f)  # type: ignore[attr-defined]
        getattr(warnings, "_filters_mutated", lambda: None)()  # let Python re-read the filters


class _Ticks:
    """An endless iterable of zeros: one per iteration."""

    def __iter__(self) -> Iterator[int]:
        return itertools.repeat(0)
