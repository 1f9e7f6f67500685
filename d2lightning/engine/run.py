"""One Lightning fit as detectron2's ``TrainerBase.train`` sees it.

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

On Lightning the loop is Lightning's, and every detectron2 hook is a Lightning ``Callback`` that Lightning calls
in list order at each step, interleaved with Lightning's own callbacks. A :class:`TrainingRun` is the callback
that Lightning calls *first*; it plays the rest of ``train`` around them:

=============================  =====================================================================
Lightning calls the run at     the run does (before any other callback)
=============================  =====================================================================
``on_train_start``             open the storage at ``start_iter = global_step``, then ``before_train``
``on_train_batch_start``       ``iter = storage.iter = global_step``, then the trainer's ``before_step``
``on_train_end``               ``iter = global_step`` (= ``max_iter``), ``after_train``, close the storage
``on_exception``               ``after_train`` unless it already ran, close the storage
``on_fit_end``                 the empty run (``start_iter >= max_iter``: Lightning skips training)
=============================  =====================================================================

``before_train`` and ``after_train`` are the trainer's own (``TrainerBase.before_train`` calls every hook, so a
subclass override behaves as in detectron2); the per-step hook methods are called by Lightning, each hook at its
place in the callback list. ``iter`` is 0-based and counts iterations: it equals ``global_step`` in
``before_step`` and keeps that value through ``after_step`` (when Lightning has already counted the step). Every
scalar put in the run's storage also reaches ``trainer.callback_metrics`` at once, so Lightning's monitors can watch
training losses.

The run is created explicitly by ``TrainerBase.train`` (which puts it first in the Trainer's callbacks), or by
:meth:`TrainingRun.attach` when a ``D2LightningModule`` or a detectron2 hook is set up in a Trainer the user built.
It is reached through the trainer that owns it (``trainer._run``) and leaves the Trainer at teardown.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from d2lightning import _compat
from d2lightning.engine import _lightning
from d2lightning.engine.training_state import attach_training_state
from d2lightning.utils import comm
from d2lightning.utils.env import set_rng_states
from d2lightning.utils.events import _CURRENT_STORAGE_STACK, EventStorage
from d2lightning.utils.logger import console_until_configured

__all__ = ["HOOK_METHODS", "TrainingRun", "call_hooks"]

logger = logging.getLogger(__name__)

#: detectron2's hook methods.
HOOK_METHODS = ("before_train", "after_train", "before_step", "after_backward", "after_step")
_LOGGER_WINDOW = 20  # smoothing window of the scalars sent to Lightning loggers, as detectron2's writers

# phases of a run
_NEW, _TRAINING, _FINISHING, _CLOSED = "new", "training", "finishing", "closed"


def call_hooks(hooks: Iterable[Any], method: str) -> None:
    """Call ``hook.<method>()`` on every hook that has it, in order (detectron2's hook dispatch)."""
    for hook in hooks:
        fn = getattr(hook, method, None)
        if fn is not None:
            fn()


def d2_hook_of(callback: Callback) -> Any:
    """The detectron2 hook a callback carries (itself for a ``HookBase``), or None for other callbacks."""
    return getattr(callback, "d2_hook", None)


class TrainingRun(Callback):
    """detectron2's ``train()`` around the callbacks of one ``Trainer.fit`` (see the module docstring).

    Args:
        owner: the detectron2-style trainer the hooks see as ``self.trainer`` (a ``TrainerBase``, or a
            :class:`~d2lightning.engine.trainer_view.LightningTrainerView` for a LightningModule that is not
            d2lightning's).
    """

    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.phase = _NEW
        self.storage: EventStorage | None = None
        self.pl_trainer: pl.Trainer | None = None
        self.checkpointers: list[Any] = []
        self.on_close: list[Callable[[], None]] = []  # called once when the run closes, however it ends
        self._metrics: dict[str, Any] = {}  # the Trainer's callback_metrics
        self._last_logged = -1

    @property
    def state_key(self) -> str:
        return "d2lightning.TrainingRun"

    # ------------------------------------------------------------ creation
    @classmethod
    def attach(cls, pl_trainer: pl.Trainer, owner: Any, as_callback: Callable[[Any], Callback]) -> TrainingRun:
        """The run of this fit: the one first in ``pl_trainer.callbacks``, else a new one put there.

        Binds the fit's detectron2 hooks to ``owner``: each gets ``hook.trainer`` (a weak proxy of the owner), and
        ``owner._hooks`` becomes the hooks of the Trainer's callback list, in its order. Hooks registered on the
        owner but missing from the list are added right after the run (wrapped by ``as_callback``), so they run
        too.
        """
        callbacks: list[Callback] = pl_trainer.callbacks  # type: ignore[attr-defined]
        run = callbacks[0] if callbacks and isinstance(callbacks[0], TrainingRun) else None
        if run is None or run.phase == _CLOSED:
            for stale in [cb for cb in callbacks if isinstance(cb, TrainingRun)]:
                callbacks.remove(stale)
            run = cls(owner)
            callbacks.insert(0, run)
        if run.pl_trainer is not pl_trainer:
            run._bind(pl_trainer, as_callback)
        return run

    def _bind(self, pl_trainer: pl.Trainer, as_callback: Callable[[Any], Callback]) -> None:
        owner = self.owner
        self.pl_trainer = pl_trainer
        callbacks: list[Callback] = pl_trainer.callbacks  # type: ignore[attr-defined]
        listed = {id(d2_hook_of(cb) or cb) for cb in callbacks}
        callbacks[1:1] = [as_callback(h) for h in owner._hooks if id(h) not in listed]
        proxy = weakref.proxy(owner)
        hooks: list[Any] = []
        for cb in callbacks[1:]:
            hook = d2_hook_of(cb)
            if hook is not None:
                hook.trainer = proxy
                hooks.append(hook)
            elif any(cb is h for h in owner._hooks):
                hooks.append(cb)  # a Lightning callback registered as a hook keeps its place in _hooks
        owner._hooks = hooks
        owner._run = self
        owner.lightning_trainer = pl_trainer
        step_trainer = getattr(owner, "_trainer", None)
        if step_trainer is not None:  # DefaultTrainer: the inner SimpleTrainer runs the step
            step_trainer._run = self

    # ------------------------------------------------------------ detectron2's train(), on Lightning's calls
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open the run at ``global_step`` and call ``before_train``."""
        if self.phase != _NEW:  # a run left in the Trainer by an earlier fit that failed
            return
        max_steps = trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise ValueError(
                f"detectron2 hooks count iterations: create the Lightning Trainer with max_steps=N "
                f"(got max_steps={max_steps})"
            )
        owner = self.owner
        _compat.check_detectron2_hooks(owner, owner._hooks)
        self._open(trainer.global_step, max_steps)
        logger.info("Starting training from iteration %d", owner.start_iter)
        self._resume_streams(owner.start_iter)
        owner.before_train()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """``iter = storage.iter = global_step``; the previous iteration's scalars go out first."""
        if self.phase != _TRAINING:
            return
        owner = self.owner
        self.flush_loggers()
        self._metrics = _lightning.callback_metrics_of(trainer)  # the same dict while training; cheap to re-read
        owner.iter = self.storage.iter = trainer.global_step  # type: ignore[union-attr]
        owner.before_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """``iter = global_step`` (``max_iter``, lowered after an early stop), ``after_train``, close."""
        if self.phase != _TRAINING:
            return
        owner = self.owner
        gs = trainer.global_step
        if gs < owner.max_iter:
            logger.info("Training stopped early after iteration %d (max_iter was %d)", gs - 1, owner.max_iter)
            owner.max_iter = gs
        owner.iter = gs
        self._finish()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """detectron2's ``finally: after_train()`` (iter stays at the failing iteration), then close."""
        if self.phase == _TRAINING:
            self._finish()
        elif self.phase == _FINISHING:  # after_train itself raised: the hooks after it get none
            self._close()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """detectron2's loop with nothing to do (``start_iter >= max_iter``), which Lightning does not enter."""
        if self.phase != _NEW:
            return
        max_steps = trainer.max_steps
        if max_steps is None or trainer.global_step < max_steps:
            return
        owner = self.owner
        self._open(trainer.global_step, max_steps)
        try:
            owner.before_train()
            owner.iter = owner.start_iter + 1  # detectron2's `iter += 1` after the (empty) loop
        finally:
            self._finish()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Leave the Trainer (after a failed fit Lightning calls no teardown: the next fit replaces the run)."""
        self._close()
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        if self in callbacks:
            callbacks.remove(self)

    # ------------------------------------------------------------ during the step
    def after_backward(self) -> None:
        """Lightning's ``on_after_backward`` for every callback and the module: a ``run_step`` that did its own
        ``loss.backward()`` calls ``trainer.after_backward()``, which lands here inside a run."""
        t = self.pl_trainer
        m = t.lightning_module  # type: ignore[union-attr]
        for cb in t.callbacks:  # type: ignore[union-attr]
            cb.on_after_backward(t, m)
        m.on_after_backward()

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through Lightning (precision scaling, DDP); fires ``on_after_backward``."""
        self.pl_trainer.lightning_module.manual_backward(loss)  # type: ignore[union-attr]

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` through Lightning's strategy and precision plugin (``on_before_optimizer_step``)."""
        t = self.pl_trainer
        t.strategy.optimizer_step(optimizer, closure=_no_closure, model=t.lightning_module)  # type: ignore[union-attr]

    def grad_sync_skipped(self) -> Any:
        """The strategy's context that skips DDP's gradient all-reduce (a null context without one)."""
        block = getattr(self.pl_trainer.strategy, "block_backward_sync", None)  # type: ignore[union-attr]
        return block() if block is not None else _NULL_CONTEXT

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
        loggers = t.loggers  # type: ignore[union-attr]
        if not loggers or self.storage is None or not t.is_global_zero:  # type: ignore[union-attr]
            return
        done = self.owner.iter  # flushed at the start of the next iteration: `iter` is the one just finished
        period = t.log_every_n_steps  # type: ignore[union-attr]
        if not force and (done + 1) % period != 0 and done + 1 < self.owner.max_iter:
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

    # ------------------------------------------------------------ private
    def _open(self, start_iter: int, max_iter: int) -> None:
        owner = self.owner
        owner.iter = owner.start_iter = start_iter
        owner.max_iter = max_iter
        self.storage = EventStorage(start_iter).__enter__()
        self._metrics = _lightning.callback_metrics_of(self.pl_trainer)  # type: ignore[arg-type]
        self.storage.scalar_listener = self._publish
        owner.storage = self.storage
        self.phase = _TRAINING
        self.checkpointers = attach_training_state(self, owner)
        if self.pl_trainer is not None and self.pl_trainer.is_global_zero:
            # logging not configured (a Lightning user's script): d2lightning's INFO lines are seen during the run
            self.on_close.append(console_until_configured())

    def _finish(self) -> None:
        """detectron2's ``after_train`` (the owner's: every hook, in order), then close — whatever happens."""
        self.phase = _FINISHING
        try:
            self.owner.after_train()
        finally:
            self._close()

    def _close(self) -> None:
        """Close the storage and let go of everything the run set up; once, however the run ends."""
        if self.phase == _CLOSED:
            return
        self.phase = _CLOSED
        try:
            if self.storage is not None:
                self.flush_loggers(force=True)
                _close_storage(self.storage)
        finally:
            for checkpointer in self.checkpointers:
                checkpointer.training_state = None
            self.checkpointers = []
            owner = self.owner
            step_trainer: Any = getattr(owner, "_trainer", None)
            for trainer in (owner, step_trainer):
                if getattr(trainer, "_run", None) is self:
                    trainer._run = None
            for fn in self.on_close:
                fn()

    def _resume_streams(self, start_iter: int) -> None:
        """Continue exactly where a resumed run stopped: seek the train loader, then restore the RNG states.

        The loader's iterator is created before the states are restored: creating it draws a seed from torch's
        generator, which the uninterrupted run did at its start, not here.
        """
        owner = self.owner
        step_trainer = getattr(owner, "_trainer", owner)
        seek = getattr(getattr(owner, "data_loader", None), "set_start_iteration", None)
        if start_iter > 0 and callable(seek):
            # with gradient accumulation an iteration consumed several batches
            seek(start_iter * getattr(step_trainer, "accumulate_grad_batches", 1))
        prepare = getattr(step_trainer, "_prepare_data", None)
        if callable(prepare):
            prepare()
        states = getattr(owner, "_pending_rng_states", None)
        if states is not None:
            owner._pending_rng_states = None
            mine = _rng_states_of_this_rank(states)
            if mine is not None:
                set_rng_states(dict(mine))


def _close_storage(storage: EventStorage) -> None:
    """Exit ``storage``; if something left another storage open above it, take ours off the stack only."""
    if storage not in _CURRENT_STORAGE_STACK:
        return
    if _CURRENT_STORAGE_STACK[-1] is storage:
        storage.__exit__(None, None, None)
    else:
        _CURRENT_STORAGE_STACK.remove(storage)
        _compat.unshare_storage(storage)


_NULL_CONTEXT = contextlib.nullcontext()  # one shared, reusable null context


def _no_closure() -> None:
    return None


def _rng_states_of_this_rank(saved: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """This rank's RNG states in a trainer state's ``"rng"`` entry (see ``TrainerBase.state_dict``)."""
    per_rank = saved.get("ranks")
    rank, world = comm.get_rank(), comm.get_world_size()
    if per_rank is not None:
        if len(per_rank) == world:
            return per_rank[rank]
        logger.warning(
            f"The checkpoint holds RNG states of {len(per_rank)} processes, this run has {world}: every process "
            "keeps its own seeded random stream"
        )
        return None
    if rank == 0:
        return saved
    logger.warning(
        f"The checkpoint holds the RNG states of the main process only: process {rank} keeps its own seeded random "
        "stream, so its random draws differ from an uninterrupted run"
    )
    return None
