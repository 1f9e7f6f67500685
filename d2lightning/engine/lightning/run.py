"""One Lightning fit as detectron2's ``TrainerBase.train`` sees it: :class:`TrainingRun`.

detectron2's loop is::

    with EventStorage(start_iter) as self.storage:
        try:
            self.before_train()                     # every hook, in order
            for self.iter in range(start_iter, max_iter):
                self.before_step()                  # every hook, in order
                self.run_step()                     # after_backward for every hook inside
                self.after_step()                   # every hook, in order
            self.iter += 1
        finally:
            self.after_train()                      # every hook, in order; stops at the first that raises

On Lightning the loop is Lightning's own, and every detectron2 hook is a Lightning ``Callback`` that Lightning
calls at its place in the callback list (the table in :mod:`~d2lightning.engine.lightning.hook_points`). A
:class:`TrainingRun` is the callback Lightning calls *first*; it plays the rest of ``train`` around them:

- when the fit starts (``Trainer.fit`` attaches the module, or a detectron2 hook is set up): it goes first among
  the callbacks, binds the detectron2-style trainer to the fit (:meth:`bind`: the step backend, the hooks in the
  Trainer's order, Lightning's batches);
- ``setup`` (through the module): on ``ModelParallelStrategy``, shards the model with FSDP2 (:meth:`shard`);
- ``on_train_start``: opens the storage at ``start_iter = global_step``, lets the trainer resume its streams (data
  position, RNG states), then calls the trainer's ``before_train``; with several processes, the ranks agree on the
  checkpoint iterations and a gathering point goes right before the first hook that saves;
- ``on_train_batch_start``: ``iter = storage.iter = global_step``, then the trainer's ``before_step`` (what a
  subclass adds);
- ``on_train_end`` / ``on_exception``: ``iter = global_step``, the trainer's ``after_train``, close;
- ``on_fit_end``: the empty run (``start_iter >= max_iter``, which Lightning does not enter);
- close (``teardown``, or ``on_exception``): unbinds the trainer and undoes, through its
  :class:`~d2lightning.engine.lightning.fit_scope.FitScope`, every change the fit made to the Trainer and the
  process.

``iter`` is 0-based and counts iterations: it equals ``global_step`` in ``before_step`` and keeps that value
through ``after_step`` (when Lightning has already counted the step). Every scalar put in the run's storage also
reaches ``trainer.callback_metrics`` at once, so Lightning's monitors can watch training losses.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from d2lightning import _compat
from d2lightning.checkpoint.discovery import find_checkpointers
from d2lightning.engine.distributed.fsdp import FSDPSharding, FullStates, check_hooks_for_sharding
from d2lightning.engine.lightning import _private
from d2lightning.engine.lightning.backend import LightningStepBackend, StepBackend
from d2lightning.engine.lightning.fit_scope import FitScope
from d2lightning.engine.lightning.training_state import attach_training_state
from d2lightning.utils import comm
from d2lightning.utils.events import _CURRENT_STORAGE_STACK, EventStorage
from d2lightning.utils.logger import console_until_configured
from d2lightning.utils.sharding import is_sharded

__all__ = ["RunBinding", "TrainingRun"]

logger = logging.getLogger(__name__)

_LOGGER_WINDOW = 20  # smoothing window of the scalars sent to Lightning loggers, as detectron2's writers

# phases of a run
_NEW, _TRAINING, _FINISHING, _CLOSED = "new", "training", "finishing", "closed"


@dataclass(frozen=True)
class RunBinding:
    """What a detectron2-style trainer uses while a fit runs it (``d2_trainer.begin_run(binding)``).

    Attributes:
        pl_trainer: the Lightning Trainer of the fit.
        backend: the step backend (backward, optimizer step, ``no_sync``) through the Trainer.
        hooks: the fit's detectron2 hooks, in the order of the Trainer's callbacks.
        batches: the batches Lightning hands the fit (a datamodule, ``train_dataloaders=``), or None when the trainer
            reads its own ``data_loader``.
        convert: the precision plugin's conversion of a batch (``*-true`` precisions), or None.
        full_states: with a sharded model (FSDP), what gathers its full states for the checkpoints of an iteration
            (:class:`~d2lightning.engine.distributed.fsdp.FullStates`), or None.
    """

    pl_trainer: pl.Trainer
    backend: StepBackend
    hooks: list[Any]
    batches: Any = None
    convert: Callable[[Any], Any] | None = None
    full_states: Any = None


class TrainingRun(Callback):
    """detectron2's ``train()`` around the callbacks of one ``Trainer.fit`` (see the module docstring).

    Created by :meth:`join` only.

    Args:
        pl_trainer: the Lightning Trainer of the fit.
        d2_trainer: the detectron2-style trainer the hooks see as ``self.trainer``.
        scope: where the changes this fit makes to the Trainer and the process are recorded.

    Attributes:
        hooks: the fit's detectron2 hooks, in the order of the Trainer's callbacks.
        storage: the run's ``EventStorage`` (None until training starts).
        scope: the fit's :class:`~d2lightning.engine.lightning.fit_scope.FitScope`, closed with the run.
    """

    def __init__(self, pl_trainer: pl.Trainer, d2_trainer: Any, scope: FitScope) -> None:
        self.pl_trainer = pl_trainer
        self.d2_trainer = d2_trainer
        self.scope = scope
        self.phase = _NEW
        self.storage: EventStorage | None = None
        self.hooks: list[Any] = []
        self._bound = False
        self._checkpoint_periods: list[int] = []  # with several processes: the periods some rank's hooks save at
        self._metrics: dict[str, Any] = {}  # the Trainer's callback_metrics
        self._last_logged = -1

    @property
    def state_key(self) -> str:
        return "d2lightning.TrainingRun"

    @property
    def closed(self) -> bool:
        return self.phase == _CLOSED

    # ------------------------------------------------------------ joining a fit
    @classmethod
    def join(cls, pl_trainer: pl.Trainer, d2_trainer: Any) -> TrainingRun:
        """Start the run of the fit ``pl_trainer`` is starting: first among its callbacks.

        The hooks registered on ``d2_trainer`` that the callback list lacks go right after the run (as Lightning
        callbacks: ``d2_trainer.hook_callbacks()``); the fit's hooks, in the list's order, are :attr:`hooks`. Both
        insertions are undone when the run closes.

        Raises:
            ValueError: when the Trainer has no ``max_steps`` (detectron2's hooks count iterations).
        """
        max_steps = pl_trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise ValueError(
                "detectron2's trainers and hooks count iterations: create the Trainer with max_steps=N "
                f"(got max_steps={max_steps})"
            )
        scope = FitScope()
        run = cls(pl_trainer, d2_trainer, scope)
        callbacks: list[Callback] = pl_trainer.callbacks  # type: ignore[attr-defined]
        listed = {id(_d2_hook_of(cb) or cb) for cb in callbacks}
        missing = [cb for cb in d2_trainer.hook_callbacks() if id(_d2_hook_of(cb) or cb) not in listed]
        scope.insert_callbacks(pl_trainer, 0, [run, *missing])
        run.hooks = run._hooks_in_order()
        return run

    @classmethod
    def of(cls, pl_trainer: pl.Trainer) -> TrainingRun | None:
        """The open run of the fit of ``pl_trainer``, or None."""
        callbacks = getattr(pl_trainer, "callbacks", ())
        run = callbacks[0] if callbacks else None
        return run if isinstance(run, TrainingRun) and not run.closed else None

    def bind(self, batches: Any = None, convert: Callable[[Any], Any] | None = None, full_states: Any = None) -> None:
        """Bind the trainer to this fit (``d2_trainer.begin_run``) until the run closes.

        Args:
            batches: Lightning's batches, when the Trainer gives the data.
            convert: the precision plugin's batch conversion, or None.
            full_states: what :meth:`shard` returned, when the fit shards the model.

        Raises:
            ValueError: from the trainer, when it cannot take ``batches`` or ``convert``.
        """
        pl_trainer = self.pl_trainer
        backend = LightningStepBackend(pl_trainer)
        binding = RunBinding(pl_trainer, backend, list(self.hooks), batches, convert, full_states)
        self.d2_trainer.begin_run(binding)
        self._bound = True
        self.scope.on_close(self._unbind)
        optimizer = getattr(self.d2_trainer, "optimizer", None)
        if isinstance(optimizer, torch.optim.Optimizer):
            self.scope.on_close(backend.watch(optimizer).remove)

    def shard(self, mesh: Any) -> FullStates:
        """Shard the trainer's model over ``mesh`` with FSDP2 for this fit (``d2_trainer.sharding``, or the default
        :class:`~d2lightning.engine.distributed.fsdp.FSDPSharding`), its optimizer following; returns what gathers the
        full states at checkpoint iterations (closed with the run).

        Raises:
            ValueError: in one line, for what cannot be sharded: a model already wrapped in DDP, a hook that
                cannot run on a sharded model, ``AMPTrainer``'s plain ``GradScaler``, tied parameters across units.
        """
        from torch.nn.parallel import DistributedDataParallel

        d2_trainer = self.d2_trainer
        model = getattr(d2_trainer, "model", None)
        if isinstance(model, DistributedDataParallel):
            raise ValueError(
                "FSDP: the model is wrapped in DistributedDataParallel (create_ddp_model): give the trainer the bare "
                "model, FSDP shards it and synchronizes the gradients itself"
            )
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"FSDP: {type(d2_trainer).__qualname__} has no model (a torch.nn.Module) to shard")
        check_hooks_for_sharding(self.hooks)
        _check_grad_scaler(getattr(d2_trainer, "grad_scaler", None))
        optimizer = getattr(d2_trainer, "optimizer", None)
        if not isinstance(optimizer, torch.optim.Optimizer):
            optimizer = None
        if not is_sharded(model):  # (an earlier fit may have sharded it already)
            sharding = getattr(d2_trainer, "sharding", None) or FSDPSharding()
            units = sharding.apply(model, mesh, optimizer)
            logger.info("FSDP over %d processes, sharding units: %s", mesh.size(), units[:-1] or "the model as one")
        states = FullStates(model, optimizer, keep=comm.is_main_process(), current_iteration=lambda: d2_trainer.iter)
        self.scope.on_close(states.close)
        return states

    # ------------------------------------------------------------ detectron2's train(), on Lightning's calls
    def on_train_start(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the run at ``global_step``, let the trainer resume its streams, call ``before_train``."""
        if self.phase != _NEW:
            return
        d2_trainer = self.d2_trainer
        _compat.check_detectron2_hooks(d2_trainer, self.hooks)
        self._open(pl_trainer.global_step, pl_trainer.max_steps)
        self._place_gathering()
        logger.info("Starting training from iteration %d", d2_trainer.start_iter)
        d2_trainer.resume_streams(d2_trainer.start_iter)
        d2_trainer.before_train()

    def on_train_batch_start(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """``iter = storage.iter = global_step``; the previous iteration's scalars go out first."""
        if self.phase != _TRAINING:
            return
        d2_trainer = self.d2_trainer
        self.flush_loggers()
        self._metrics = _private.callback_metrics_of(pl_trainer)  # the same dict while training; cheap to re-read
        d2_trainer.iter = self.storage.iter = pl_trainer.global_step  # type: ignore[union-attr]
        d2_trainer.before_step()

    def gather_if_saving(self) -> None:
        """Where some rank's hook saves a checkpoint after this iteration, gather every rank's RNG and data-stream
        states (and a sharded model's full states) — a collective, on every rank — so the main process's file holds
        them even when only it runs a checkpointer. Called right before the first hook that saves (see
        :meth:`_place_gathering`)."""
        periods = self._checkpoint_periods
        if periods and self.phase == _TRAINING:
            d2_trainer = self.d2_trainer
            done = d2_trainer.iter + 1
            if done >= d2_trainer.max_iter or any(done % p == 0 for p in periods):
                d2_trainer.gather_rank_states()

    def _place_gathering(self) -> None:
        """With several processes: agree on the checkpoint periods (one collective) and put the gathering right
        before the first hook that saves — after the hooks that run before it on the saving rank (``PreciseBN``
        draws batches and random numbers, and updates buffers, before detectron2's checkpointer), at the same place
        among the collective hooks on every rank."""
        periods, before = _agree_on_checkpoint_periods(self.hooks)
        self._checkpoint_periods = periods
        if not periods:
            return
        last = max((i for i, h in enumerate(self.hooks) if _hook_name(h) in before), default=-1)
        callbacks: list[Callback] = self.pl_trainer.callbacks  # type: ignore[attr-defined]
        position = 1  # right after the run: before every hook
        if last >= 0:
            hook = self.hooks[last]
            position = 1 + next(i for i, cb in enumerate(callbacks) if cb is hook or _d2_hook_of(cb) is hook)
        self.scope.insert_callbacks(self.pl_trainer, position, [_GatheringPoint(self)])

    def on_train_end(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``iter = global_step`` (``max_iter``, lowered after an early stop), ``after_train`` — with several
        processes, after gathering the ranks' states once more for what ``after_train`` saves at that iteration."""
        if self.phase != _TRAINING:
            return
        d2_trainer = self.d2_trainer
        done = pl_trainer.global_step
        if done < d2_trainer.max_iter:
            logger.info("Training stopped early after iteration %d (max_iter was %d)", done - 1, d2_trainer.max_iter)
            d2_trainer.max_iter = done
        d2_trainer.iter = done
        if self._checkpoint_periods:  # after_train may save at iteration max_iter (BestCheckpointer's last look)
            d2_trainer.gather_rank_states()
        self._finish()

    def on_exception(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """detectron2's ``finally: after_train()`` (``iter`` stays at the failing iteration), then close."""
        if self.phase == _TRAINING:
            self._finish()
        self.close()

    def on_fit_end(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """detectron2's loop with nothing to do (``start_iter >= max_iter``), which Lightning does not enter."""
        if self.phase != _NEW or pl_trainer.global_step < pl_trainer.max_steps:
            return
        d2_trainer = self.d2_trainer
        self._open(pl_trainer.global_step, pl_trainer.max_steps)
        try:
            d2_trainer.before_train()
            d2_trainer.iter = d2_trainer.start_iter + 1  # detectron2's `iter += 1` after the (empty) loop
        finally:
            self._finish()

    def teardown(self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """The fit is over: close."""
        self.close()

    # ------------------------------------------------------------ metrics out
    def _publish(self, name: str, value: float, iteration: int) -> None:
        """Every scalar put in the storage reaches ``trainer.callback_metrics`` as it is put, as ``self.log`` would
        put it there for monitors (``ModelCheckpoint(monitor="total_loss")``, ``EarlyStopping``), at the cost of one
        scalar tensor per value."""
        self._metrics[name] = torch.scalar_tensor(value)

    def flush_loggers(self, force: bool = False) -> None:
        """Send the storage's new scalars to the Lightning loggers, each at the iteration it was put at.

        Every ``Trainer(log_every_n_steps=...)`` iterations, after the last one and at the end; the values are the
        (smoothed) ones detectron2's writers report. Loggers write on global rank zero only.
        """
        t = self.pl_trainer
        loggers = t.loggers
        if not loggers or self.storage is None or not t.is_global_zero:
            return
        done = self.d2_trainer.iter  # flushed at the start of the next iteration: `iter` is the one just finished
        period = t.log_every_n_steps  # type: ignore[attr-defined]
        if not force and (done + 1) % period != 0 and done + 1 < self.d2_trainer.max_iter:
            return
        groups: defaultdict[int, dict[str, float]] = defaultdict(dict)
        for name, (value, at) in self.storage.latest_with_smoothing_hint(_LOGGER_WINDOW).items():
            if at > self._last_logged:
                groups[at][name] = value
        for at in sorted(groups):
            for lg in loggers:
                lg.log_metrics(groups[at], step=at)
        if groups:
            self._last_logged = max(groups)

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the storage, unbind the trainer, undo the fit's changes; once, however the run ends."""
        if self.phase == _CLOSED:
            return
        self.phase = _CLOSED
        try:
            if self.storage is not None:
                self.flush_loggers(force=True)
                _close_storage(self.storage)
        finally:
            self.scope.close()

    # ------------------------------------------------------------ private
    def _hooks_in_order(self) -> list[Any]:
        """The detectron2 hooks among the Trainer's callbacks, in their order (and Lightning callbacks the trainer
        registered as hooks, which keep their place among them)."""
        registered = self.d2_trainer.registered_hooks()
        hooks: list[Any] = []
        for cb in self.pl_trainer.callbacks[1:]:  # type: ignore[attr-defined]
            hook = _d2_hook_of(cb)
            if hook is not None:
                hooks.append(hook)
            elif any(cb is h for h in registered):
                hooks.append(cb)
        return hooks

    def _unbind(self) -> None:
        if self._bound:
            self._bound = False
            self.d2_trainer.end_run()

    def _open(self, start_iter: int, max_iter: int) -> None:
        d2_trainer = self.d2_trainer
        d2_trainer.iter = d2_trainer.start_iter = start_iter
        d2_trainer.max_iter = max_iter
        self.storage = EventStorage(start_iter).__enter__()
        self._metrics = _private.callback_metrics_of(self.pl_trainer)
        self.storage.scalar_listener = self._publish
        d2_trainer.storage = self.storage
        self.phase = _TRAINING
        self.scope.on_close(attach_training_state(self.pl_trainer, [d2_trainer, *self.hooks]))
        if self.pl_trainer.is_global_zero:
            # logging not configured (a Lightning user's script): d2lightning's INFO lines are seen during the run
            self.scope.on_close(console_until_configured())

    def _finish(self) -> None:
        """detectron2's ``after_train`` (the trainer's: every hook, in order)."""
        self.phase = _FINISHING
        self.d2_trainer.after_train()


def _check_grad_scaler(grad_scaler: Any) -> None:
    """FSDP gives each rank a shard of the gradients: the scaler must agree on overflows across ranks."""
    if grad_scaler is None:
        return
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    if not isinstance(grad_scaler, ShardedGradScaler):
        raise ValueError(
            f"FSDP with AMPTrainer(grad_scaler={type(grad_scaler).__name__}): each rank holds a shard of the "
            "gradients, so an overflow must be agreed on by all ranks: pass grad_scaler=torch.distributed.fsdp."
            "sharded_grad_scaler.ShardedGradScaler(), or use LIGHTNING.PRECISION 'bf16-mixed' with a SimpleTrainer"
        )


def _agree_on_checkpoint_periods(hooks: list[Any]) -> tuple[list[int], set[str]]:
    """With several processes (one collective, when training starts): the union over the ranks of the periods their
    hooks save checkpoints at, and the class names of the hooks that run before the first saving hook of a rank;
    ``([], set())`` in a single process.

    A hook saves checkpoints when it holds a checkpointer (``checkpointer``, or ``_checkpointer`` as detectron2's
    ``BestCheckpointer``); its period is its ``period`` or ``_period``. The last iteration always counts.
    """
    if comm.get_world_size() == 1:
        return [], set()
    periods = [_saving_period(h) for h in hooks]
    mine = sorted({p for p in periods if p is not None})
    first = next((i for i, p in enumerate(periods) if p is not None), None)
    before = [] if first is None else [_hook_name(h) for h in hooks[:first]]
    everyone = comm.all_gather((mine, before))
    return sorted(set().union(*(set(p) for p, _ in everyone))), set().union(*(set(b) for _, b in everyone))


def _hook_name(hook: Any) -> str:
    return f"{type(hook).__module__}.{type(hook).__qualname__}"


class _GatheringPoint(Callback):
    """Where the ranks gather their states for this iteration's checkpoints: right before the first saving hook."""

    def __init__(self, run: TrainingRun) -> None:
        self._run = run

    def on_train_batch_end(
        self, pl_trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        self._run.gather_if_saving()


def _saving_period(hook: Any) -> int | None:
    holder = hook if find_checkpointers([hook]) else None
    if holder is None and callable(getattr(getattr(hook, "_checkpointer", None), "save", None)):
        holder = hook
    if holder is None:
        return None
    for name in ("period", "_period"):
        value = getattr(hook, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _d2_hook_of(callback: Callback) -> Any:
    """The detectron2 hook a callback carries (itself for a ``HookBase``), or None for other callbacks."""
    return getattr(callback, "d2_hook", None)


def _close_storage(storage: EventStorage) -> None:
    """Exit ``storage``; if something left another storage open above it, take ours off the stack only."""
    if storage not in _CURRENT_STORAGE_STACK:
        return
    if _CURRENT_STORAGE_STACK[-1] is storage:
        storage.__exit__(None, None, None)
    else:
        _CURRENT_STORAGE_STACK.remove(storage)
        _compat.unshare_storage(storage)
