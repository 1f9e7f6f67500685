"""``TrainerModule``: a detectron2-style trainer's ``run_step`` as Lightning's training step.

The base of :class:`~d2lightning.engine.module.D2LightningModule` and what ``TrainerBase.train`` fits. One training
step is one detectron2 iteration: the trainer's ``run_step`` (fetch, forward, zero_grad, backward, metrics,
optimizer step, in detectron2's order, under Lightning's manual optimization, through the trainer's step backend),
then Lightning counts it. The loop is Lightning's own. What a Lightning user configures on the Trainer is honoured or
refused at once:

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

import contextlib
import itertools
import os
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn

from d2lightning.checkpoint.discovery import find_checkpointers
from d2lightning.engine.distributed.fsdp import (
    check_sharding_options,
    data_parallel_mesh,
    is_sharding_strategy,
)
from d2lightning.engine.lightning import _private
from d2lightning.engine.lightning.batches import (
    FetchedBatches,
    HandedBatches,
    batch_converter,
    check_validation_runs,
)
from d2lightning.engine.lightning.fit_scope import FitScope
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
        self._batches: HandedBatches | FetchedBatches | None = None  # when the Trainer gives the data
        self._clip: tuple[float, str | None] | None = None  # the Trainer's gradient clipping, during a fit
        self._converts_weights = False  # a *-true precision: Lightning converted the weights
        self._one_process_dump = False  # a detectron2 checkpointer is building its file's Lightning state

    # ------------------------------------------------------------ joining a fit, before anything runs
    @property
    def trainer(self) -> pl.Trainer:
        return pl.LightningModule.trainer.fget(self)  # type: ignore[attr-defined]

    @trainer.setter
    def trainer(self, trainer: pl.Trainer | None) -> None:
        pl.LightningModule.trainer.fset(self, trainer)  # type: ignore[attr-defined]
        # Trainer.fit attaches the module first of all: before it checks its options or resolves ckpt_path="last"
        if trainer is not None and trainer.state.fn == TrainerFn.FITTING and (self._run is None or self._run.closed):
            self._run = self._join(trainer)

    def _join(self, pl_trainer: pl.Trainer) -> TrainingRun:
        """Start the fit's run, and make through its scope (undone when the run closes, however the fit ends) the
        changes this fit needs: Trainer options Lightning refuses under manual optimization become the step's own,
        Lightning's notices about d2lightning's choices are silenced, ``ckpt_path="last"`` also finds detectron2's
        ``last_checkpoint``."""
        run = TrainingRun.join(pl_trainer, self.d2_trainer)
        try:
            self.d2_trainer.check_trainer_options(pl_trainer)
            self._take_over_trainer_options(pl_trainer, run.scope)
            run.scope.ignore_warnings(_OWN_CHOICES)
            run.scope.on_close(_private.resolve_last_checkpoint_with(pl_trainer, self._last_d2_checkpoint))
        except BaseException:
            run.close()
            raise
        return run

    def _take_over_trainer_options(self, pl_trainer: pl.Trainer, scope: FitScope) -> None:
        """``accumulate_grad_batches`` and ``gradient_clip_val``: Lightning refuses both under manual optimization;
        the step honours them instead (detectron2-style accumulation; clipping before each optimizer step)."""
        n = pl_trainer.accumulate_grad_batches
        if n != 1:
            d2_trainer = self.d2_trainer
            own = getattr(d2_trainer, "accumulate_grad_batches", None)
            if own is None:
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={n}): {type(d2_trainer).__qualname__} has its own run_step and "
                    "no accumulate_grad_batches; accumulate inside run_step, or use a SimpleTrainer"
                )
            if own not in (1, n):
                raise ValueError(
                    f"Trainer(accumulate_grad_batches={n}) and the module's trainer (accumulate_grad_batches={own}) "
                    "disagree: set one of them"
                )
            scope.set_attribute(d2_trainer, "accumulate_grad_batches", n)
            scope.set_attribute(pl_trainer, "accumulate_grad_batches", 1)
        clip = pl_trainer.gradient_clip_val
        if clip is not None and clip > 0:
            scope.set_attribute(self, "_clip", (float(clip), pl_trainer.gradient_clip_algorithm))
            scope.set_attribute(pl_trainer, "gradient_clip_val", None)

    # ------------------------------------------------------------ fit
    def setup(self, stage: str) -> None:
        if stage != "fit" or self._run is None:
            return
        pl_trainer = self.trainer
        d2_trainer = self.d2_trainer
        lightning_data = self._lightning_gives_data(pl_trainer)
        own = getattr(d2_trainer, "data_loader", _MISSING)
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
        convert = batch_converter(pl_trainer)
        self._converts_weights = convert is not None
        full_states = self._shard(pl_trainer)
        if lightning_data:
            scope = self._run.scope
            batches: HandedBatches | FetchedBatches
            if getattr(d2_trainer, "accumulate_grad_batches", 1) > 1:  # several batches per iteration
                batches = FetchedBatches(pl_trainer, self)
                scope.set_attribute(self, "training_step", self._training_step_fetching)
            else:
                batches = HandedBatches()
            scope.set_attribute(self, "_batches", batches)
            self._run.bind(batches=batches, full_states=full_states)
            return
        check_validation_runs(pl_trainer, _private.val_data_defined(pl_trainer), endless=True)
        self._warn_unused_transfer_hooks()
        try:
            self._run.bind(convert=convert, full_states=full_states)
        except ValueError:
            raise ValueError(
                f"Trainer(precision={pl_trainer.precision!r}) converts the weights, and the batches need the same "
                f"dtype, but {type(d2_trainer).__qualname__} fetches its own batches in run_step: convert them "
                "there, use a mixed precision (e.g. 'bf16-mixed'), or give the data to the Trainer"
            ) from None

    def _shard(self, pl_trainer: pl.Trainer) -> Any:
        """On ``ModelParallelStrategy``: shard the model with FSDP2 (the strategy set up the device mesh already)."""
        strategy = pl_trainer.strategy
        check_sharding_options(strategy)
        if not is_sharding_strategy(strategy):
            return None
        assert self._run is not None
        return self._run.shard(data_parallel_mesh(strategy))

    def configure_model(self) -> None:
        """Nothing: the model exists already; on ``ModelParallelStrategy`` the fit sharded it in :meth:`setup` (the
        strategy requires this hook to be overridden)."""

    def on_train_start(self) -> None:
        if self._batches is not None:  # the Trainer's data: is its stream endless?
            check_validation_runs(self.trainer, _private.val_data_defined(self.trainer))

    def configure_optimizers(self) -> Any:
        """The trainer's optimizer (stepped by its ``run_step``, through Lightning's strategy)."""
        return getattr(self.d2_trainer, "optimizer", None)

    def train_dataloader(self) -> Iterable[int]:
        """Ticks, one per iteration: the trainer fetches its own data inside ``run_step`` (detectron2 loaders are
        infinite and sharded already), and Lightning's ``batch_idx`` counts iterations."""
        return _Ticks()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One detectron2 iteration: the trainer's ``run_step`` reads Lightning's batch, or its own loader (the
        batch is then a tick); then the iteration is counted."""
        if self._batches is not None:
            self._batches.hand_over(batch)  # type: ignore[union-attr]
        self._run_step()

    def _training_step_fetching(self, dataloader_iter: Iterator[Any]) -> None:
        """``training_step`` when an iteration takes several of Lightning's batches: it fetches them itself."""
        batches: Any = self._batches
        batches.start_step(dataloader_iter)
        self._run_step()
        batches.end_step()

    def _run_step(self) -> None:
        try:
            self.d2_trainer.run_step()
        except RuntimeError as e:
            if self._converts_weights and _is_dtype_error(e):
                raise RuntimeError(
                    f"Trainer(precision={self.trainer.precision!r}) converted the weights and the batches' floating "
                    f"tensors, but the model computed in another dtype inside ({e}). Make the model follow the dtype "
                    "of its weights (e.g. images.to(self.pixel_mean.dtype)), or use a mixed precision such as "
                    "'bf16-mixed'"
                ) from e
            raise
        _private.count_iteration(self.trainer)

    def on_train_epoch_start(self) -> None:
        self._mark_idle()

    def on_validation_end(self) -> None:
        self._mark_idle()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.d2_trainer.after_step()  # what a trainer subclass adds after the hooks
        self._mark_idle()

    def _mark_idle(self) -> None:
        """Lightning's loop is about to fetch the next batch: the wait for it starts now."""
        if isinstance(self._batches, HandedBatches):
            self._batches.mark_idle()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._clip is not None:
            value, algorithm = self._clip
            self.clip_gradients(optimizer, gradient_clip_val=value, gradient_clip_algorithm=algorithm)

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
        itself, as callbacks). ``Trainer.save_checkpoint`` runs on every rank, so the ranks first gather their RNG
        and data-stream states into it (not for a detectron2 checkpointer's file, built on one process: see
        :meth:`one_process_dump`).
        """
        if not self._one_process_dump:
            self.d2_trainer.gather_rank_states()
        state = self.d2_trainer.state_dict()
        state.pop("hooks", None)
        if is_sharding_strategy(self.trainer.strategy):
            state.pop("optimizer", None)  # sharded: the strategy saves it (SimpleTrainer's copy would hold shards)
        checkpoint["d2_trainer"] = state

    @contextlib.contextmanager
    def one_process_dump(self) -> Iterator[None]:
        """While a detectron2 checkpointer builds the Lightning state of its file on its own process (no collective
        may run)."""
        self._one_process_dump = True
        try:
            yield
        finally:
            self._one_process_dump = False

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give ``checkpoint["d2_trainer"]``, if any, to ``d2_trainer.load_state_dict``."""
        state = checkpoint.get("d2_trainer")
        if state is not None:
            self.d2_trainer.load_state_dict(state)

    # ------------------------------------------------------------ private
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

        hooks = self._run.hooks if self._run is not None else []
        found: list[str] = []
        for checkpointer in find_checkpointers([self.d2_trainer, *hooks]):
            get = getattr(checkpointer, "get_checkpoint_file", None)
            path = get() if callable(get) else ""
            if path and os.path.isfile(path) and path not in found and holds_lightning_state(path):
                found.append(path)
        return max(found, key=os.path.getmtime) if found else None


def _is_dtype_error(error: RuntimeError) -> bool:
    """Whether torch refused an operation for mixing dtypes."""
    message = str(error)
    return any(s in message for s in ("dtype", "should be the same", "scalar type", "Expected object of scalar"))


class _Ticks:
    """An endless iterable of zeros: one per iteration."""

    def __iter__(self) -> Iterator[int]:
        return itertools.repeat(0)
