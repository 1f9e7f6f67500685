"""Every use of Lightning's private API in d2lightning, in one place.

detectron2's loop needs a few things Lightning keeps to itself: starting a fresh Trainer at a given iteration,
counting an iteration whatever the optimizer did, the full checkpoint dictionary outside ``save_checkpoint``, the
source of the training data, monitors that act after an evaluation instead of at epoch end, and a fallback for
``fit(ckpt_path="last")``. Each function below is the only place that touches the private name it names, and
``tests/engine/test_lightning_private.py`` checks each one against the installed Lightning, so a Lightning release
that moves one of them fails there, by name, rather than somewhere deep in a training run.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, ProgressBar

__all__ = [
    "LeanTrainingLoop",
    "QuickFxName",
    "before_batch_transfer",
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


class _NullProfiler:
    """What the training step's hooks need from a profiler that records nothing: a reusable null context."""

    _context = contextlib.nullcontext()

    def start(self, action_name: str) -> None:
        pass

    def stop(self, action_name: str) -> None:
        pass

    def profile(self, action_name: str) -> contextlib.nullcontext[None]:
        return self._context


_NO_PROFILER = _NullProfiler()


class LeanTrainingLoop:
    """Lightning's training-epoch loop step (``advance`` / ``on_advance_end``) without its per-call bookkeeping.

    For a fit of d2lightning's ``TrainerModule`` — manual optimization, the ``dataloader_iter`` step, no Lightning
    gradient accumulation — and no profiler recording anything, Lightning's loop spends most of a tiny model's
    iteration opening a profiling context, resolving properties and calling every callback's no-op hooks. This
    does what ``_TrainingEpochLoop.advance``/``on_advance_end`` do in that case, in the same order — progress
    counters, logger connector, ``on_train_batch_start``/``end`` of the callbacks that define them, then of the
    module and the strategy, the training step through the strategy, step schedulers, validation when due, the
    logger step, SIGTERM — and hands over to Lightning's own methods for everything else (a restart inside a
    validation, a step that returns -1). It replaces them on this Trainer's epoch loop only, until :meth:`remove`.

    Until something calls ``self.log``, the logger connector's end-of-batch bookkeeping (which would find nothing
    to log) is skipped. Inside the training step (where Lightning dispatches ``on_before_backward``,
    ``on_after_backward``, ``on_before_optimizer_step``), the Trainer's ``callbacks`` are only those acting on them
    (and the progress bar, which another thread may look up) and its profiler (one that records nothing, or this
    would not apply) one without a per-call context manager.

    Touches ``fit_loop.epoch_loop`` (``batch_progress``, ``val_loop``, ``_results``, ``_batches_that_stepped``,
    ``restarting``,
    ``_should_check_val_fx``, ``_broadcast_sigterm_tensor``, ``update_lr_schedulers``, ``_is_training_done``),
    ``_logger_connector`` and the fetcher's ``_batch``/``_batch_idx``.
    """

    _PER_STEP_HOOKS = ("on_train_batch_start", "on_train_batch_end")
    #: Hooks Lightning calls inside the training step (backward, optimizer step): during the step, Lightning's
    #: ``trainer.callbacks`` holds only the callbacks that act on one of them.
    _IN_STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step", "on_before_zero_grad")

    def __init__(self, pl_trainer: pl.Trainer) -> None:
        import torch.distributed as dist

        self.trainer = pl_trainer
        self.loop = pl_trainer.fit_loop.epoch_loop
        self.module: Any = pl_trainer.lightning_module
        self.strategy = pl_trainer.strategy
        self.connector = pl_trainer._logger_connector
        self.distributed = dist.is_available() and dist.is_initialized() and pl_trainer.world_size > 1
        self.schedulers = bool(pl_trainer.lr_scheduler_configs)
        self.validation = pl_trainer.enable_validation
        self._callbacks_seen: tuple[int, int] | None = None
        self._dispatch: dict[str, list[Callable[..., Any]]] = {}
        module_type = type(self.module)
        self.module_start = (
            self.module.on_train_batch_start
            if module_type.on_train_batch_start is not pl.LightningModule.on_train_batch_start
            else None
        )
        self.module_end = (
            self.module.on_train_batch_end
            if module_type.on_train_batch_end is not pl.LightningModule.on_train_batch_end
            else None
        )
        self.loop.advance = self.advance  # type: ignore[method-assign]
        self.loop.on_advance_end = self.on_advance_end  # type: ignore[method-assign]

    @staticmethod
    def applies(pl_trainer: pl.Trainer) -> bool:
        """Whether this fit is one the lean step reproduces exactly."""
        from lightning.pytorch.loops.fetchers import _DataLoaderIterDataFetcher
        from lightning.pytorch.profilers import PassThroughProfiler

        module = pl_trainer.lightning_module
        profiler = getattr(pl_trainer, "profiler", None)
        return (
            module is not None
            and not module.automatic_optimization
            and pl_trainer.accumulate_grad_batches == 1
            and isinstance(pl_trainer.fit_loop._data_fetcher, _DataLoaderIterDataFetcher)
            and (isinstance(profiler, PassThroughProfiler) or getattr(profiler, "records_nothing", False))
        )

    def remove(self) -> None:
        """Give the epoch loop its own methods back."""
        for name in ("advance", "on_advance_end"):
            self.loop.__dict__.pop(name, None)

    def _callbacks(self, hook: str) -> list[Any]:
        """The bound ``hook`` of every callback that acts on it (``"in_step"``: the callbacks acting inside it)."""
        callbacks = self.trainer.callbacks  # type: ignore[attr-defined]
        seen = (id(callbacks), len(callbacks))
        if seen != self._callbacks_seen:
            self._callbacks_seen = seen
            self._dispatch = {
                name: [getattr(cb, name) for cb in callbacks if _acts_on(cb, name)] for name in self._PER_STEP_HOOKS
            }
            # progress bars stay: a RichProgressBar's refresh thread asks for trainer.progress_bar_callback meanwhile
            self._dispatch["in_step"] = [
                cb
                for cb in callbacks
                if isinstance(cb, ProgressBar) or any(_acts_on(cb, name) for name in self._IN_STEP_HOOKS)
            ]
        return self._dispatch[hook]

    def _call(self, hook: str, *args: Any) -> None:
        module = self.module
        previous = module._current_fx_name
        object.__setattr__(module, "_current_fx_name", hook)
        trainer = self.trainer
        for fn in self._callbacks(hook):
            fn(trainer, module, *args)
        object.__setattr__(module, "_current_fx_name", previous)

    def advance(self, data_fetcher: Any) -> None:
        loop, module = self.loop, self.module
        if loop.restarting and loop._should_check_val_fx(data_fetcher):
            type(loop).advance(loop, data_fetcher)  # resuming inside a validation: Lightning's own path
            return
        fx_name = module._current_fx_name
        loop.val_loop.restarting = False
        if self.distributed:
            loop._broadcast_sigterm_tensor()
        dataloader_iter = next(data_fetcher)
        progress = loop.batch_progress
        progress.is_last_batch = data_fetcher.done
        progress.increment_ready()
        self.connector.on_batch_start(data_fetcher._batch)
        self._call("on_train_batch_start", data_fetcher._batch, data_fetcher._batch_idx)
        response = None
        if self.module_start is not None:
            object.__setattr__(module, "_current_fx_name", "on_train_batch_start")
            response = self.module_start(data_fetcher._batch, data_fetcher._batch_idx)
        self.strategy.on_train_batch_start(data_fetcher._batch, data_fetcher._batch_idx)
        if response == -1:  # the module ends the epoch here: no step
            progress.increment_by(0, is_last_batch=True)
            progress.increment_processed()
            object.__setattr__(module, "_current_fx_name", fx_name)
            raise StopIteration
        progress.increment_started()
        object.__setattr__(module, "_current_fx_name", "training_step")
        trainer: Any = self.trainer
        callbacks, profiler = trainer.callbacks, trainer.profiler
        trainer.callbacks, trainer.profiler = self._callbacks("in_step"), _NO_PROFILER
        try:
            self.strategy.training_step(dataloader_iter)
        finally:
            trainer.callbacks, trainer.profiler = callbacks, profiler
        self.strategy.post_training_step()
        progress.increment_processed()
        if self.schedulers:
            loop.update_lr_schedulers("step", update_plateau_schedulers=False)
            if loop._num_ready_batches_reached():
                loop.update_lr_schedulers("epoch", update_plateau_schedulers=False)
        progress.is_last_batch = data_fetcher.done
        batch, batch_idx = data_fetcher._batch, data_fetcher._batch_idx
        self._call("on_train_batch_end", {}, batch, batch_idx)
        if self.module_end is not None:
            object.__setattr__(module, "_current_fx_name", "on_train_batch_end")
            self.module_end({}, batch, batch_idx)
        object.__setattr__(module, "_current_fx_name", fx_name)
        logged = bool(loop._results)  # nothing was ever logged with self.log: both calls below would do nothing
        if logged:
            self.connector.on_batch_end()
        progress.increment_completed()
        if logged:
            self.connector.update_train_step_metrics()

    def on_advance_end(self, data_fetcher: Any) -> None:
        loop, trainer = self.loop, self.trainer
        if self.validation or self.schedulers:
            type(loop).on_advance_end(loop, data_fetcher)
            return
        loop._batches_that_stepped += 1
        if trainer.should_stop:
            for logger in trainer.loggers:
                logger.save()
        if trainer.received_sigterm and not loop._is_training_done:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            raise SIGTERMException


class QuickFxName:
    """A LightningModule mixin: Lightning's hook-name bookkeeping (``_current_fx_name``, set around every hook it
    calls) skips ``nn.Module.__setattr__``'s parameter/submodule checks, which it never needs."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)


def _acts_on(callback: Callback, hook: str) -> bool:
    """Whether ``callback``'s ``hook`` does anything: its class defines it, and the callback does not say that it
    leaves it idle (``callback.idle_lightning_hook(hook)``, e.g. a detectron2 hook without ``after_backward``)."""
    if getattr(type(callback), hook) is getattr(Callback, hook):
        return False
    idle = getattr(callback, "idle_lightning_hook", None)
    return not (callable(idle) and idle(hook))
