"""The bridge between detectron2's hook protocol and Lightning's ``Callback`` protocol.

A detectron2 hook method runs at the Lightning hook point of the same moment:

==================  ==========================================  ==============================
detectron2          Lightning                                   ``trainer.iter`` there
==================  ==========================================  ==============================
``before_train``    ``on_train_start`` (state already restored)  ``start_iter``
``before_step``     ``on_train_batch_start``                    ``global_step``
``after_backward``  ``on_after_backward``                       ``global_step``
``after_step``      ``on_train_batch_end``                      ``global_step - 1``
``after_train``     ``on_train_end``, and ``on_exception``       ``max_iter`` / failing iteration
==================  ==========================================  ==============================

Lightning calls callbacks in list order, so hooks run in the order the user gave, interleaved with Lightning's
own callbacks. :class:`LightningRun` is the one object that turns Lightning's step counter into detectron2's
``iter`` and owns the run's ``EventStorage``; every callback of ours calls its idempotent transitions first, so
whichever runs first brings the shared state up to date. :class:`HookCallback` wraps any object that has
detectron2's hook methods (our hooks, a user's, or a real detectron2 install's — duck-typed).
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from d2lightning._compat import check_detectron2_hooks, unshare_storage
from d2lightning.utils import comm
from d2lightning.utils.env import set_rng_states
from d2lightning.utils.events import _CURRENT_STORAGE_STACK, EventStorage

if TYPE_CHECKING:
    from d2lightning.engine.train_loop import TrainerBase

__all__ = ["HOOK_METHODS", "HookCallback", "LightningRun", "current_run"]

logger = logging.getLogger(__name__)

HOOK_METHODS = ("before_train", "after_train", "before_step", "after_backward", "after_step")
_LOGGER_WINDOW = 20  # smoothing window of the scalars sent to Lightning loggers, as detectron2's writers
_ACTIVE_RUN: LightningRun | None = None


def current_run() -> LightningRun | None:
    """The Lightning run training right now in this process, if any."""
    return _ACTIVE_RUN


class LightningRun:
    """One ``Trainer.fit`` as detectron2's loop sees it.

    Owns the iteration arithmetic (``iter`` is 0-based and counts optimizer steps: it equals ``global_step``
    in ``before_step`` and stays there through ``after_step``), the run's ``EventStorage``, and the forwarding
    of storage scalars to the Lightning loggers.

    Args:
        owner: the detectron2-style trainer the hooks see as ``self.trainer``.
        pl_trainer: the Lightning Trainer running the fit.
        pl_module: the LightningModule being fitted.
    """

    def __init__(self, owner: TrainerBase, pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.owner = owner
        self.pl_trainer = pl_trainer
        self.pl_module = pl_module
        self.started = False
        self.ended = False
        self.closed = False
        self.storage: EventStorage | None = None
        self._after_train_called: set[int] = set()
        self._after_train_failed = False
        self._last_logged = -1
        self._closer: _D2Callback | None = None
        self._bind_hooks()

    def _bind_hooks(self) -> None:
        """Give every detectron2 hook of the fit a weak proxy of the owner; list unregistered ones in ``_hooks``."""
        proxy = weakref.proxy(self.owner)
        registered = {id(h) for h in self.owner._hooks}
        for cb in self.pl_trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(cb, _D2Callback):
                continue
            hook: Any = cb.hook if isinstance(cb, HookCallback) else cb
            hook.trainer = proxy
            if id(hook) not in registered:
                self.owner._hooks.append(hook)
                registered.add(id(hook))

    # ------------------------------------------------------------ transitions
    def begin(self) -> None:
        """Enter training (idempotent): ``iter = start_iter = global_step``, open the storage."""
        global _ACTIVE_RUN
        if self.started:
            return
        max_steps = self.pl_trainer.max_steps
        if max_steps is None or max_steps < 0:
            raise ValueError(
                f"detectron2 hooks count iterations: create the Lightning Trainer with max_steps=N "
                f"(got max_steps={max_steps})"
            )
        check_detectron2_hooks(self.owner, self.owner._hooks)
        self.started = True
        gs = self.pl_trainer.global_step
        owner = self.owner
        owner.iter = owner.start_iter = gs
        owner.max_iter = max_steps
        logger.info("Starting training from iteration %d", gs)
        self.storage = EventStorage(gs).__enter__()
        owner.storage = self.storage
        _ACTIVE_RUN = self
        self._resume_streams(gs)
        # D2LightningModule brings a callback that closes the run; with any other module the last of our
        # hook callbacks does it.
        callbacks = self.pl_trainer.callbacks  # type: ignore[attr-defined]
        if not any(getattr(cb, "_closes_runs", False) for cb in callbacks):
            ours = [cb for cb in callbacks if isinstance(cb, _D2Callback)]
            self._closer = ours[-1] if ours else None

    def _resume_streams(self, start_iter: int) -> None:
        """Continue exactly where a resumed run stopped: restore saved RNG states, seek the train loader."""
        owner = self.owner
        rng = getattr(owner, "_pending_rng_states", None)
        if rng is not None:
            # The checkpoint holds the main process' states. Other ranks keep their own (seeded SEED + rank)
            # streams: restoring rank 0's there would make every rank draw the same augmentations.
            if comm.get_rank() == 0:
                set_rng_states(rng)
            owner._pending_rng_states = None
        seek = getattr(getattr(owner, "data_loader", None), "set_start_iteration", None)
        if start_iter > 0 and callable(seek):
            # with gradient accumulation an iteration consumed several batches
            step_trainer = getattr(owner, "_trainer", owner)
            seek(start_iter * getattr(step_trainer, "accumulate_grad_batches", 1))

    def before_step(self, global_step: int) -> None:
        """Start iteration ``global_step`` (idempotent): ``iter`` and ``storage.iter`` take its value."""
        self.owner.iter = global_step
        self.storage.iter = global_step  # type: ignore[union-attr]

    def end(self, exception: BaseException | None) -> None:
        """Leave the loop (idempotent), setting ``iter`` to what ``after_train`` must see.

        On success ``iter`` is the number of iterations done (``max_iter``). When Lightning stopped early
        (``trainer.should_stop``, e.g. ``EarlyStopping``), ``max_iter`` is lowered to that number too, so
        hooks treat the run as complete (final evaluation, final checkpoint). On an exception ``iter`` stays
        at the failing iteration, as in detectron2.
        """
        if self.ended:
            return
        self.ended = True
        owner = self.owner
        if exception is None:
            gs = self.pl_trainer.global_step
            if gs < owner.max_iter:
                logger.info("Training stopped early after iteration %d (max_iter was %d)", gs - 1, owner.max_iter)
                owner.max_iter = gs
            owner.iter = gs
        self.storage.iter = owner.iter  # type: ignore[union-attr]

    def end_empty(self) -> None:
        """Leave an empty loop (``start_iter >= max_iter``): detectron2 then ends at ``start_iter + 1``."""
        self.ended = True
        self.owner.iter = self.owner.start_iter + 1
        self.storage.iter = self.owner.iter  # type: ignore[union-attr]

    def close(self) -> None:
        """Flush the Lightning loggers and close the storage (idempotent)."""
        global _ACTIVE_RUN
        if self.closed:
            return
        self.closed = True
        if _ACTIVE_RUN is self:
            _ACTIVE_RUN = None
        if self.storage is None:
            return
        self.flush_loggers(force=True)
        if self.storage in _CURRENT_STORAGE_STACK:
            if _CURRENT_STORAGE_STACK[-1] is self.storage:
                self.storage.__exit__(None, None, None)
            else:  # something else left a storage open on top of ours; remove ours only
                _CURRENT_STORAGE_STACK.remove(self.storage)
                unshare_storage(self.storage)

    def call_after_train(self, callback: _D2Callback) -> None:
        """Run ``callback.after_train()`` once per run, even if both ``on_train_end`` and ``on_exception`` fire.

        As in detectron2, once one hook's ``after_train`` has raised, the hooks after it get none.
        """
        key = id(callback)
        if key in self._after_train_called or self._after_train_failed:
            return
        self._after_train_called.add(key)
        try:
            callback.after_train()
        except BaseException:
            self._after_train_failed = True
            raise

    # ------------------------------------------------------------ the step
    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()`` through Lightning (precision scaling, DDP); fires ``on_after_backward``."""
        self.pl_module.manual_backward(loss)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` through Lightning's strategy and precision plugin (no closure work)."""
        self.pl_trainer.strategy.optimizer_step(optimizer, closure=_no_closure, model=self.pl_module)

    def advance(self) -> None:
        """Count the iteration just run: Lightning's ``global_step`` grows by one.

        detectron2 counts one iteration per ``run_step`` whatever happened inside (an AMP step skipped by the
        grad scaler still counts), so the count is ours, not the optimizer's.
        """
        progress = self.pl_trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    # ------------------------------------------------------------ loggers
    def flush_loggers(self, force: bool = False) -> None:
        """Send the storage's new scalars to the Lightning loggers, each at the iteration it was put at.

        Runs every ``Trainer(log_every_n_steps=...)`` iterations, after the last one, and at the end; values
        are the same (smoothed) ones detectron2's writers report. Loggers write on global rank zero only.
        """
        trainer = self.pl_trainer
        loggers = trainer.loggers
        if not loggers or self.storage is None or not trainer.is_global_zero:
            return
        it = self.owner.iter
        period = getattr(trainer, "log_every_n_steps", 50)
        if not force and (it + 1) % period != 0 and it + 1 < self.owner.max_iter:
            return
        groups: defaultdict[int, dict[str, float]] = defaultdict(dict)
        for name, (value, at) in self.storage.latest_with_smoothing_hint(_LOGGER_WINDOW).items():
            if at > self._last_logged:
                groups[at][name] = value
        if not groups:
            return
        for at in sorted(groups):
            for lg in loggers:
                lg.log_metrics(groups[at], step=at)
        self._last_logged = max(groups)


def _no_closure() -> None:
    return None


def set_global_step(pl_trainer: pl.Trainer, step: int) -> None:
    """Make a fresh Lightning Trainer start counting at ``step`` (``TrainerBase.train(start_iter, ...)``)."""
    loop = pl_trainer.fit_loop.epoch_loop
    progress = loop.manual_optimization.optim_step_progress
    progress.total.ready = progress.total.completed = step
    loop._batches_that_stepped = step


def run_for(pl_trainer: pl.Trainer, pl_module: pl.LightningModule) -> LightningRun:
    """The :class:`LightningRun` of this fit, created at the first call."""
    owner = trainer_of(pl_module)
    run = owner._lightning_run
    if run is None or run.closed or run.pl_trainer is not pl_trainer:
        run = LightningRun(owner, pl_trainer, pl_module)
        owner._lightning_run = run
    return run


def trainer_of(pl_module: pl.LightningModule) -> TrainerBase:
    """The detectron2-style trainer hooks see for ``pl_module``.

    A :class:`~d2lightning.engine.module.D2LightningModule` carries one; any other LightningModule gets a
    :class:`~d2lightning.engine.module.LightningTrainerView` built on the fly (``model`` is the module,
    ``optimizer`` Lightning's first optimizer).
    """
    owner = getattr(pl_module, "d2_trainer", None)
    if owner is None:
        from d2lightning.engine.module import LightningTrainerView

        owner = LightningTrainerView(pl_module)
        object.__setattr__(pl_module, "d2_trainer", owner)
    return owner


class _UserValueFirst:
    """A hook attribute Lightning also assigns (it sets ``callback.log``/``log_dict`` to the module's methods).

    A detectron2 hook may already use ``self.log`` for its own data; Lightning's assignment must not replace
    it. The hook's own value wins; Lightning's is kept aside and used only when the hook has none.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.aside = f"_lightning_{name}"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        d = obj.__dict__
        if self.name in d:
            return d[self.name]
        if self.aside in d:
            return d[self.aside]
        raise AttributeError(self.name)

    def __set__(self, obj: Any, value: Any) -> None:
        from_lightning = isinstance(getattr(value, "__self__", None), pl.LightningModule)
        obj.__dict__[self.aside if from_lightning else self.name] = value


class _D2Callback(Callback):
    """Runs detectron2 hook methods (``self.before_train()``...) at the matching Lightning hook points."""

    _d2_run: LightningRun | None = None
    log = _UserValueFirst()
    log_dict = _UserValueFirst()

    # detectron2's hook methods; HookBase defines them, HookCallback binds them to the wrapped hook.
    def before_train(self) -> None: ...
    def after_train(self) -> None: ...
    def before_step(self) -> None: ...
    def after_backward(self) -> None: ...
    def after_step(self) -> None: ...

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._d2_run = run_for(trainer, pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._d2_run = run_for(trainer, pl_module)
        run.begin()
        self.before_train()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._d2_run.before_step(trainer.global_step)  # type: ignore[union-attr]
        self.before_step()

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.after_backward()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.after_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = self._d2_run
        if run is not None and run.started:
            run.end(None)
            run.call_after_train(self)
            if run._closer is self:
                run.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        run = self._d2_run
        if run is not None and run.started and not run.closed:
            run.end(exception)
            try:
                run.call_after_train(self)
            except BaseException:
                run.close()  # the callbacks after this one get no on_exception from Lightning
                raise
            if run._closer is self:
                run.close()


class HookCallback(_D2Callback):
    """Run any detectron2-style hook as a Lightning ``Callback``.

    The hook is duck-typed: any object with at least one of ``before_train``, ``after_train``,
    ``before_step``, ``after_backward`` and ``after_step`` (missing ones are skipped), so hooks written for a
    real detectron2 install work unchanged. Its ``trainer`` attribute is set to a weak proxy of the
    detectron2-style trainer of the fit; its ``state_dict``/``load_state_dict``, if any, go into Lightning
    checkpoints under the hook's class ``__qualname__``, the key detectron2 uses.

    Args:
        hook: the hook object.

    Raises:
        TypeError: when ``hook`` has none of detectron2's hook methods.

    Example::

        trainer = pl.Trainer(max_steps=100, callbacks=[HookCallback(my_detectron2_hook)])
        trainer.fit(D2LightningModule(model, data_loader, optimizer))
    """

    def __init__(self, hook: Any) -> None:
        found = [name for name in HOOK_METHODS if callable(getattr(hook, name, None))]
        if not found:
            raise TypeError(
                f"{type(hook).__qualname__} object is not a hook: it has none of the methods {', '.join(HOOK_METHODS)}"
            )
        self.hook = hook
        for name in found:
            setattr(self, name, getattr(hook, name))
        if _has_own_state(hook):
            # Instance attributes: Lightning then treats this callback as stateful (and only then).
            self.state_dict = hook.state_dict  # type: ignore[method-assign]
            self.load_state_dict = hook.load_state_dict  # type: ignore[method-assign]

    @property
    def state_key(self) -> str:
        return type(self.hook).__qualname__

    def __repr__(self) -> str:
        return f"HookCallback({self.hook!r})"


def _has_own_state(hook: Any) -> bool:
    """Whether the hook's class defines ``state_dict`` below detectron2's (stateless) ``HookBase``."""
    for cls in type(hook).__mro__:
        if "state_dict" in vars(cls):
            return cls.__name__ != "HookBase" and callable(getattr(hook, "load_state_dict", None))
    return False


def as_callback(hook: Any) -> Callback:
    """A Lightning callback for ``hook``: itself if it already is one, else a :class:`HookCallback`."""
    return hook if isinstance(hook, Callback) else HookCallback(hook)
