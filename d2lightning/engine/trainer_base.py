"""detectron2's ``TrainerBase``: the loop over iterations with hooks, run on a ``lightning.pytorch.Trainer``.

``train(start_iter, max_iter)`` builds a Lightning Trainer (:mod:`d2lightning.engine.lightning.trainer_factory`) whose
callbacks are the registered hooks, and fits a :class:`~d2lightning.engine.lightning.trainer_module.TrainerModule`,
whose training step is this trainer's ``run_step``. The fit's :class:`~d2lightning.engine.lightning.run.TrainingRun`
talks to the trainer through a small protocol (:meth:`TrainerBase.begin_run`, :meth:`TrainerBase.resume_streams`,
:meth:`TrainerBase.end_run`), the same whether ``train`` built the Trainer or a user did.
"""

from __future__ import annotations

import logging
import signal
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback

from d2lightning.engine.distributed.rank_states import RankStates
from d2lightning.engine.hook_base import as_callback
from d2lightning.engine.lightning.backend import StepBackend, TorchStepBackend, call_hooks
from d2lightning.engine.lightning.hook_points import HOOK_METHODS
from d2lightning.engine.lightning.trainer_factory import build_lightning_trainer
from d2lightning.engine.lightning.trainer_module import TrainerModule
from d2lightning.utils.env import set_rng_states
from d2lightning.utils.events import EventStorage
from d2lightning.utils.validation import check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

    from d2lightning.engine.lightning.run import RunBinding

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
        pl_trainer: the ``lightning.pytorch.Trainer`` of the current fit, else of the latest one (None before any).
        step_backend: how steps run (backward, optimizer step, ``no_sync``, the per-step hooks): plain torch outside
            a fit, through the Lightning Trainer inside one (see :mod:`d2lightning.engine.lightning.backend`).
        sharding: how a fit on ``ModelParallelStrategy`` (FSDP) cuts the model into units
            (:class:`~d2lightning.engine.distributed.fsdp.FSDPSharding`; None: the default, by size).
    """

    def __init__(self) -> None:
        self._hooks: list[Any] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: EventStorage
        self.lightning_kwargs: dict[str, Any] = {}
        self.pl_trainer: pl.Trainer | None = None
        self.step_backend: StepBackend = TorchStepBackend()
        self._registered: list[Any] | None = None  # the registered hooks, while a fit runs the trainer
        self._rank_states = RankStates()  # every rank's RNG and data-stream states, for checkpoints
        self.sharding: Any = None
        self._full_states: Any = None  # a sharded model's full states, while a fit runs the trainer

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
        (self._hooks if self._registered is None else self._registered).extend(registered)

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
        pl_trainer = build_lightning_trainer(self, start_iter, max_iter)
        with _keyboard_interrupt_propagates():
            try:
                pl_trainer.fit(TrainerModule(self))
            except Exception:
                logger.exception("Exception during training:")
                raise

    # detectron2's hook dispatchers. In a fit, the run calls before_train/after_train (which call every hook, as
    # here) and Lightning calls the hooks' per-step methods itself, each at its place among Lightning's callbacks:
    # the step backend then leaves them out, and before_step/after_step only run what a subclass adds.
    def before_train(self) -> None:
        call_hooks(self._hooks, "before_train")

    def after_train(self) -> None:
        self.storage.iter = self.iter
        call_hooks(self._hooks, "after_train")

    def before_step(self) -> None:
        self.storage.iter = self.iter
        self.step_backend.call_hooks(self._hooks, "before_step")

    def after_backward(self) -> None:
        """Call every hook's ``after_backward`` (in a fit: Lightning's ``on_after_backward``, for every callback).

        detectron2's ``run_step`` calls it after ``losses.backward()``; a ``run_step`` that goes through
        ``step_backend.backward`` has the hooks called there already.
        """
        self.step_backend.after_backward(self._hooks)

    def after_step(self) -> None:
        self.step_backend.call_hooks(self._hooks, "after_step")

    def run_step(self) -> None:
        """One iteration. Subclasses implement it."""
        raise NotImplementedError

    # ------------------------------------------------------------ the run protocol (d2lightning)
    def registered_hooks(self) -> list[Any]:
        """The hooks given to :meth:`register_hooks`, in order."""
        return list(self._hooks if self._registered is None else self._registered)

    def hook_callbacks(self) -> list[Callback]:
        """The registered hooks as Lightning callbacks, in order (a ``HookCallback`` around those that are not)."""
        return [as_callback(h) for h in self.registered_hooks()]

    def begin_run(self, binding: RunBinding) -> None:
        """A Lightning fit starts running this trainer (called by its run, before ``before_train``).

        Until :meth:`end_run`, the hooks are the fit's (``binding.hooks``: the registered ones and those in the
        Trainer's callbacks, in the Trainer's order), every step goes through ``binding.backend`` and
        :attr:`pl_trainer` is the fit's Trainer.

        Raises:
            ValueError: when the fit hands the trainer batches or a batch conversion: a ``TrainerBase`` fetches its
                own data in ``run_step`` (a ``SimpleTrainer`` takes them).
        """
        if binding.batches is not None or binding.convert is not None:
            what = "training data" if binding.batches is not None else "a precision that converts the batches"
            raise ValueError(
                f"The Trainer gives {what}, but {type(self).__qualname__} fetches its own batches in run_step: "
                "derive it from SimpleTrainer, or give the data to the trainer itself"
            )
        self._bind(binding)

    def check_trainer_options(self, pl_trainer: pl.Trainer) -> None:
        """Refuse, when a fit starts, a Lightning Trainer option this trainer cannot honour (the base takes all).

        Raises:
            ValueError: naming the option, in subclasses that refuse one (``AMPTrainer``: a mixed precision).
        """

    def end_run(self) -> None:
        """The fit is over (called by its run, however the fit ended): back to the registered hooks and torch."""
        if self._registered is not None:
            self._hooks, self._registered = self._registered, None
        self._full_states = None
        self.step_backend = TorchStepBackend()

    def resume_streams(self, start_iter: int) -> None:
        """Continue the random streams where the run that saved the loaded state stopped (called by the run when
        training starts, after a checkpoint is restored): the data stream first (:meth:`_resume_data`), then this
        rank's saved RNG states, if any."""
        rng, data, checkpoint_has_data = self._rank_states.take_mine()
        self._resume_data(start_iter, data, checkpoint_has_data)
        if rng is not None:
            set_rng_states(dict(rng))

    def gather_rank_states(self) -> None:
        """Collect every rank's RNG states and data-stream position for the checkpoints of this iteration
        (collective: every rank calls it; a second call in the same iteration does nothing).

        The fit's run calls it on every rank at each iteration where a hook of some rank saves a checkpoint (right
        before the first such hook), so the main process's files hold what every rank needs to continue exactly; with
        a sharded (FSDP) model it also gathers the full model and optimizer states those files hold. A no-op in a
        single process.
        """
        self._rank_states.gather(self.iter, self._data_stream_state())
        if self._full_states is not None:  # a sharded model: its full states, for the main process's files
            self._full_states.gather(self.iter)

    def _resume_data(self, start_iter: int, state: Mapping[str, Any] | None, checkpoint_has_data: bool) -> None:
        """Move the trainer's data stream to where the interrupted run left it (subclasses that read data)."""

    def _data_stream_state(self) -> Mapping[str, Any] | None:
        """This rank's data-stream position, for checkpoints (None: the trainer reads no data of its own)."""
        return None

    def _bind(self, binding: RunBinding) -> None:
        if self._registered is None:
            self._registered = self._hooks
        self._hooks = list(binding.hooks)
        self.step_backend = binding.backend
        self.pl_trainer = binding.pl_trainer
        self._full_states = binding.full_states
        proxy = weakref.proxy(self)
        for hook in self._hooks:
            if _is_hook(hook):
                hook.trainer = proxy

    # ------------------------------------------------------------ state
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
        # d2lightning: the RNG states and the data stream's position, so that a resumed run continues exactly
        # (detectron2 ignores both keys when loading); every rank's when they were gathered for this iteration.
        ret.update(self._rank_states.entries(self.iter, self._data_stream_state()))
        return ret

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and give each saved hook state to the first hook of the same class qualname.

        Saved RNG states and data-stream positions are applied when training starts (:meth:`resume_streams`), not
        here.
        """
        self.iter = state_dict["iteration"]
        self._rank_states.load(state_dict)
        for key, value in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == key:
                    h.load_state_dict(value)
                    break
            else:
                logger.warning(f"Cannot find the hook '{key}', its state_dict is ignored.")


def _check_bounds(start_iter: Any, max_iter: Any) -> None:
    for name, value in (("start_iter", start_iter), ("max_iter", max_iter)):
        check_int(name, value, minimum=0)


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
