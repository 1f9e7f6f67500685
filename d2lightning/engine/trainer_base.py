"""detectron2's ``TrainerBase``: the loop over iterations with hooks, run on a ``lightning.pytorch.Trainer``.

``train(start_iter, max_iter)`` builds a Lightning Trainer (:mod:`d2lightning.engine.lightning.trainer_factory`) whose
callbacks are a :class:`~d2lightning.engine.lightning.run.TrainingRun` followed by the registered hooks, and fits a
:class:`~d2lightning.engine.lightning.trainer_module.TrainerModule`, whose training step is this trainer's ``run_step``.
"""

from __future__ import annotations

import logging
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback

from d2lightning.engine.lightning.run import HOOK_METHODS, TrainingRun, call_hooks
from d2lightning.engine.lightning.trainer_factory import build_lightning_trainer
from d2lightning.engine.lightning.trainer_module import TrainerModule
from d2lightning.utils import comm
from d2lightning.utils.env import get_rng_states
from d2lightning.utils.events import EventStorage

__all__ = ["TrainerBase"]

logger = logging.getLogger(__name__)


def _is_hook(obj: Any) -> bool:
    return any(callable(getattr(obj, name, None)) for name in HOOK_METHODS)


class TrainerBase:
    """Base class for iterative trainers with hooks.

    Attributes:
        iter: the current iteration (0-based).
        start_iter: the iteration training starts at (minimum possible iteration).
        max_iter: the iteration training ends before.
        storage: the ``EventStorage`` opened for the run.
        lightning_kwargs: extra keyword arguments for the ``lightning.pytorch.Trainer`` that :meth:`train`
            builds (for instance ``{"logger": TensorBoardLogger("out"), "precision": "bf16-mixed"}``).
        lightning_trainer: the ``lightning.pytorch.Trainer`` of the latest :meth:`train`.
    """

    def __init__(self) -> None:
        self._hooks: list[Any] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage
        self.lightning_kwargs: dict[str, Any] = {}
        self.lightning_trainer: Any = None
        self._run: TrainingRun | None = None  # the Lightning fit this trainer is in, if any
        self._pending_rng_states: dict[str, Any] | None = None
        self._rank_rng_states: tuple[int, list[Any]] | None = None

    def register_hooks(self, hooks: Iterable[Any | None]) -> None:
        """Register hooks, appended after those already registered; ``None`` entries are dropped.

        Hooks run in the order they are registered. A hook is a :class:`HookBase`, any object with
        detectron2's hook methods (detectron2's own hooks included), or a Lightning ``Callback``, which then
        runs at its place in the same order.

        Raises:
            TypeError: naming the entry that is none of these.
        """
        registered: list[Any] = [h for h in hooks if h is not None]
        for h in registered:
            if not (isinstance(h, Callback) or _is_hook(h)):
                raise TypeError(
                    f"register_hooks() got {h!r} ({type(h).__qualname__}), which is neither a hook (a HookBase or "
                    f"an object with any of {', '.join(HOOK_METHODS)}) nor a lightning Callback"
                )
            if _is_hook(h):
                # A weak proxy avoids a reference cycle between trainer and hook.
                h.trainer = weakref.proxy(self)
        self._hooks.extend(registered)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter .. max_iter - 1`` on a Lightning Trainer, calling the hooks.

        Args:
            start_iter: the first iteration (for a resumed run, the last finished one + 1).
            max_iter: the iteration to stop before.

        Raises:
            ValueError: when the bounds are negative or not integers.
        """
        _check_bounds(start_iter, max_iter)
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        pl_trainer = build_lightning_trainer(self, TrainingRun(self), start_iter, max_iter)
        self.lightning_trainer = pl_trainer
        with _keyboard_interrupt_propagates():
            try:
                pl_trainer.fit(TrainerModule(self))
            except Exception:
                logger.exception("Exception during training:")
                raise

    # detectron2's hook dispatchers. In a Lightning run, the run calls before_train/after_train (which call every
    # hook, as here) and Lightning calls the hooks' per-step methods itself, each at its place among Lightning's
    # callbacks; before_step/after_step/after_backward then only run what a subclass adds.
    def before_train(self) -> None:
        call_hooks(self._hooks, "before_train")

    def after_train(self) -> None:
        self.storage.iter = self.iter
        call_hooks(self._hooks, "after_train")

    def before_step(self) -> None:
        self.storage.iter = self.iter
        if self._run is None:
            call_hooks(self._hooks, "before_step")

    def after_backward(self) -> None:
        """Call every hook's ``after_backward`` (in a run: every Lightning callback's ``on_after_backward``).

        detectron2's ``run_step`` calls it after ``losses.backward()``; d2lightning's own ``run_step`` does the
        backward through Lightning, which calls the hooks itself, so only user ``run_step`` code needs this.
        """
        if self._run is None:
            call_hooks(self._hooks, "after_backward")
        else:
            self._run.after_backward()

    def after_step(self) -> None:
        if self._run is None:
            call_hooks(self._hooks, "after_step")

    def run_step(self) -> None:
        """One iteration. Subclasses implement it."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """``{"iteration": iter, "hooks": {qualname: state}}`` (hooks with empty state are left out)."""
        ret: dict[str, Any] = {"iteration": self.iter}
        hooks_state: dict[str, Any] = {}
        for h in self._hooks:
            fn = getattr(h, "state_dict", None)
            sd = fn() if callable(fn) else None
            if sd:
                name = type(h).__qualname__
                if name in hooks_state:
                    # detectron2 keeps the first hook of a name; a warning would repeat every save
                    continue
                hooks_state[name] = sd
        if hooks_state:
            ret["hooks"] = hooks_state
        # d2lightning: the RNG states, so that a resumed run draws the same random numbers as an uninterrupted
        # one (detectron2 ignores the key when loading); every rank's, when they were gathered for this iteration.
        ret["rng"] = get_rng_states()
        if self._rank_rng_states is not None and self._rank_rng_states[0] == self.iter:
            ret["rng"]["ranks"] = self._rank_rng_states[1]
        return ret

    def gather_rng_states(self) -> None:
        """Collect every rank's RNG states for the next :meth:`state_dict` of this iteration (collective).

        Call it on every rank right before a checkpoint of this iteration is saved (a ``PeriodicCheckpointer``
        registered on every rank does); the main process then saves every rank's states and a resumed run gives
        each rank its own back. A no-op in a single process.
        """
        if comm.get_world_size() > 1:
            self._rank_rng_states = (self.iter, comm.all_gather(get_rng_states()))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and give each saved hook state to the first hook of the same class qualname.

        Saved RNG states are applied when training starts (after Lightning has set up and the data iterator
        exists), not here.
        """
        self.iter = state_dict["iteration"]
        self._pending_rng_states = state_dict.get("rng")
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


def _check_bounds(start_iter: Any, max_iter: Any) -> None:
    for name, value in (("start_iter", start_iter), ("max_iter", max_iter)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


class _keyboard_interrupt_propagates:
    """Lightning turns Ctrl-C into ``sys.exit(1)`` and ignores SIGINT afterwards; detectron2 re-raises it."""

    def __enter__(self) -> None:
        self._main = threading.current_thread() is threading.main_thread()
        self._handler = signal.getsignal(signal.SIGINT) if self._main else None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._main and self._handler is not None:
            signal.signal(signal.SIGINT, self._handler)
        if exc_type is SystemExit and isinstance(exc.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
