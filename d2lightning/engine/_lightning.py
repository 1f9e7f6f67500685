"""Every use of Lightning's private API in d2lightning, in one place.

detectron2's loop needs a few things Lightning keeps to itself: starting a fresh Trainer at a given iteration,
counting an iteration whatever the optimizer did, the full checkpoint dictionary outside ``save_checkpoint``, the
source of the training data, monitors that act after an evaluation instead of at epoch end, and a fallback for
``fit(ckpt_path="last")``. Each function below is the only place that touches the private name it names, and
``tests/engine/test_lightning_private.py`` checks each one against the installed Lightning, so a Lightning release
that moves one of them fails there, by name, rather than somewhere deep in a training run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

__all__ = [
    "callback_metrics_of",
    "dump_training_state",
    "iteration_counter",
    "monitor_after_evaluation",
    "resolve_last_checkpoint_with",
    "start_at_iteration",
    "train_data_source",
    "val_data_defined",
]


def start_at_iteration(pl_trainer: pl.Trainer, iteration: int) -> None:
    """Make a fresh Trainer's ``global_step`` (and its loggers' step) start at ``iteration``.

    ``TrainerBase.train(start_iter, max_iter)`` starts a Lightning fit at ``start_iter`` without a checkpoint.
    Touches ``fit_loop.epoch_loop.manual_optimization.optim_step_progress`` and ``_batches_that_stepped``.
    """
    loop = pl_trainer.fit_loop.epoch_loop
    progress = loop.manual_optimization.optim_step_progress
    progress.total.ready = progress.total.completed = iteration
    loop._batches_that_stepped = iteration


def iteration_counter(pl_trainer: pl.Trainer) -> Callable[[], None]:
    """A function that adds one to ``global_step``: detectron2 counts every ``run_step`` as one iteration.

    Under manual optimization Lightning counts ``LightningOptimizer.step`` calls; d2lightning steps the optimizer
    through the strategy (so an AMP step skipped by the grad scaler, a trainer that steps twice, or one that
    never steps still count one iteration each), and counts with this instead. Touches
    ``fit_loop.epoch_loop.manual_optimization.optim_step_progress``.
    """
    progress = pl_trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    ready, completed = progress.increment_ready, progress.increment_completed

    def count() -> None:
        ready()
        completed()

    return count


def callback_metrics_of(pl_trainer: pl.Trainer) -> dict[str, Any]:
    """The dict behind ``trainer.callback_metrics``, without recomputing what ``self.log`` gathered.

    The public property merges the logged results into ``_logger_connector._callback_metrics`` at every read;
    writing a value per training scalar through it would pay that each time.
    """
    return pl_trainer._logger_connector._callback_metrics


def dump_training_state(pl_trainer: pl.Trainer) -> dict[str, Any]:
    """The dictionary ``Trainer.save_checkpoint`` would write, built on this process only (no collective).

    Uses ``_checkpoint_connector.dump_checkpoint``: ``save_checkpoint`` itself writes a file and runs barriers.
    """
    return pl_trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def monitor_after_evaluation(callback: Callback) -> None:
    """Make ``EarlyStopping`` / ``ModelCheckpoint(monitor=...)`` act after an evaluation, not at epoch end.

    These are the private forms of their ``check_on_train_epoch_end`` / ``save_on_train_epoch_end`` arguments.
    Lightning resolves EarlyStopping's in ``setup`` when left None, so it cannot be told apart from a user's
    choice and is always set; ModelCheckpoint's is left alone when the user gave one.
    """
    if isinstance(callback, EarlyStopping):
        callback._check_on_train_epoch_end = False
    elif (
        isinstance(callback, ModelCheckpoint)
        and callback.monitor is not None
        and callback._save_on_train_epoch_end is None
    ):
        callback._save_on_train_epoch_end = False


def train_data_source(pl_trainer: pl.Trainer) -> Any:
    """Where this fit's training data comes from: the LightningModule, a datamodule, or the loaders given to fit.

    Reads ``fit_loop._data_source.instance``, set by ``Trainer.fit`` before any hook runs.
    """
    return pl_trainer.fit_loop._data_source.instance


def val_data_defined(pl_trainer: pl.Trainer) -> bool:
    """Whether this fit has validation data (a ``val_dataloader``, a datamodule's, or ``fit(val_dataloaders=)``).

    Reads ``fit_loop.epoch_loop.val_loop._data_source``, known before the validation data is loaded.
    """
    return bool(pl_trainer.fit_loop.epoch_loop.val_loop._data_source.is_defined())


def resolve_last_checkpoint_with(pl_trainer: pl.Trainer, find: Callable[[], str | None] | None) -> None:
    """Let ``fit(ckpt_path="last")`` fall back to ``find()`` when no Lightning callback has a last checkpoint.

    Lightning resolves ``"last"`` before any hook runs, from its ``ModelCheckpoint``/``OnExceptionCheckpoint``
    callbacks only; detectron2's ``PeriodicCheckpointer`` keeps its own ``last_checkpoint`` file. This wraps
    ``_checkpoint_connector._parse_ckpt_path`` of this Trainer: Lightning's own answer wins; when it has none,
    ``find()`` is asked; when that has none either, Lightning's warning is given as usual. ``find=None`` puts
    Lightning's own method back.
    """
    connector: Any = pl_trainer._checkpoint_connector
    original = connector.__dict__.pop("_parse_ckpt_path", None)  # our wrapper, if installed
    if original is not None:
        del connector._parse_ckpt_path_d2l_find
    if find is None:
        return
    parse = connector._parse_ckpt_path

    def parse_with_fallback(state_fn: Any, ckpt_path: Any, *args: Any, **kwargs: Any) -> Any:
        if ckpt_path != "last":
            return parse(state_fn, ckpt_path, *args, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = parse(state_fn, ckpt_path, *args, **kwargs)
        if found is None:
            found = find()
        if found is None:
            for w in caught:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return found

    connector._parse_ckpt_path_d2l_find = find
    connector._parse_ckpt_path = parse_with_fallback
