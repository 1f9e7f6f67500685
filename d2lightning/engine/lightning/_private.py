"""Every use of Lightning's private API in d2lightning, in one place.

detectron2's loop needs a few things Lightning keeps to itself: starting a fresh Trainer at a given iteration,
counting an iteration whatever the optimizer did, the full checkpoint dictionary outside ``save_checkpoint``, the
source of the training data, Lightning's own dispatch of a hook to the callbacks and the module (for a backward or
an optimizer step that a detectron2-style ``run_step`` made itself), monitors that act after an evaluation instead
of at epoch end, and a fallback for ``fit(ckpt_path="last")``. Each function below is the only place that touches
the private name it names, and ``tests/engine/test_lightning_private.py`` checks each one against the installed
Lightning, so a Lightning release that moves one of them fails there, by name, rather than somewhere deep in a
training run. Nothing here replaces or patches Lightning's own loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

__all__ = [
    "QuickFxName",
    "before_batch_transfer",
    "call_after_backward",
    "call_before_optimizer_step",
    "callback_metrics_of",
    "count_iteration",
    "dump_training_state",
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


def count_iteration(pl_trainer: pl.Trainer) -> None:
    """Add one to ``global_step``: detectron2 counts every ``run_step`` as one iteration.

    Under manual optimization Lightning counts ``LightningOptimizer.step`` calls; d2lightning's trainers step
    through the strategy (so an AMP step skipped by the grad scaler, a trainer that steps twice, or one that never
    steps still count one iteration each) and count with this instead, the counter ``LightningOptimizer.step``
    advances. Touches ``fit_loop.epoch_loop.manual_optimization.optim_step_progress``.
    """
    progress = pl_trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def call_after_backward(pl_trainer: pl.Trainer) -> None:
    """Lightning's ``on_after_backward`` for every callback, then the LightningModule, as its precision plugin calls
    it after a backward pass — for a ``run_step`` that ran ``loss.backward()`` itself.

    Uses ``trainer.call._call_callback_hooks`` / ``_call_lightning_module_hook`` (the profiler and the hook name
    ``self.log`` checks are Lightning's own).
    """
    from lightning.pytorch.trainer import call

    call._call_callback_hooks(pl_trainer, "on_after_backward")
    call._call_lightning_module_hook(pl_trainer, "on_after_backward")


def call_before_optimizer_step(pl_trainer: pl.Trainer, optimizer: Any) -> None:
    """Lightning's ``on_before_optimizer_step`` for every callback, then the LightningModule, as its precision plugin
    calls it before a step — for an ``optimizer.step()`` that did not go through the strategy.

    Uses ``trainer.call._call_callback_hooks`` / ``_call_lightning_module_hook``.
    """
    from lightning.pytorch.trainer import call

    call._call_callback_hooks(pl_trainer, "on_before_optimizer_step", optimizer)
    call._call_lightning_module_hook(pl_trainer, "on_before_optimizer_step", optimizer)


def callback_metrics_of(pl_trainer: pl.Trainer) -> dict[str, Any]:
    """The dict behind ``trainer.callback_metrics``, without recomputing what ``self.log`` gathered.

    The public property merges the logged results into ``_logger_connector._callback_metrics`` at every read;
    writing a value per training scalar through it would pay that each time.
    """
    return pl_trainer._logger_connector._callback_metrics


def before_batch_transfer(pl_module: pl.LightningModule, batch: Any) -> Any:
    """Lightning's ``on_before_batch_transfer`` hook for a training batch: the datamodule's when it overrides it and
    the module does not, else the module's (Lightning's own choice, with its warning when both do).

    Uses ``LightningModule._on_before_batch_transfer``, what Lightning's training loop calls; the public hook of
    the module alone would skip a datamodule's.
    """
    return pl_module._on_before_batch_transfer(batch, dataloader_idx=0)


def dump_training_state(pl_trainer: pl.Trainer) -> dict[str, Any]:
    """The dictionary ``Trainer.save_checkpoint`` would write, built on this process only (no collective).

    Uses ``_checkpoint_connector.dump_checkpoint``: ``save_checkpoint`` itself writes a file and runs barriers.
    """
    return pl_trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def monitor_after_evaluation(callback: Callback) -> Callable[[], None]:
    """Make ``EarlyStopping`` / ``ModelCheckpoint(monitor=...)`` act after an evaluation, not at epoch end.

    These are the private forms of their ``check_on_train_epoch_end`` / ``save_on_train_epoch_end`` arguments.
    Lightning resolves EarlyStopping's in ``setup`` when left None, so it cannot be told apart from a user's
    choice and is always set; ModelCheckpoint's is left alone when the user gave one.

    Returns:
        The undo: the callback's own setting back (a no-op for other callbacks).
    """
    if isinstance(callback, EarlyStopping):
        name = "_check_on_train_epoch_end"
    elif (
        isinstance(callback, ModelCheckpoint)
        and callback.monitor is not None
        and callback._save_on_train_epoch_end is None
    ):
        name = "_save_on_train_epoch_end"
    else:
        return _nothing
    old = getattr(callback, name)
    setattr(callback, name, False)
    return lambda: setattr(callback, name, old)


def _nothing() -> None:
    return None


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


def resolve_last_checkpoint_with(pl_trainer: pl.Trainer, find: Callable[[], str | None]) -> Callable[[], None]:
    """Let ``fit(ckpt_path="last")`` fall back to ``find()`` when no Lightning callback has a last checkpoint.

    Lightning resolves ``"last"`` before any hook runs, from its ``ModelCheckpoint``/``OnExceptionCheckpoint``
    callbacks only; detectron2's ``PeriodicCheckpointer`` keeps its own ``last_checkpoint`` file. This wraps
    ``_checkpoint_connector._parse_ckpt_path`` of this Trainer (its instance only): Lightning's own answer wins;
    when it has none, ``find()`` is asked; when that has none either, Lightning's warning is given as usual.

    Returns:
        The undo: it puts Lightning's own method back.
    """
    connector: Any = pl_trainer._checkpoint_connector
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

    connector._parse_ckpt_path = parse_with_fallback

    def undo() -> None:
        connector.__dict__.pop("_parse_ckpt_path", None)

    return undo


class QuickFxName:
    """A LightningModule mixin: Lightning's hook-name bookkeeping (``_current_fx_name``, set around every hook it
    calls) skips ``nn.Module.__setattr__``'s parameter/submodule checks, which it never needs."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)
