"""Stopping a run on a signal at an iteration boundary, with a checkpoint: ``StopOnSignal`` and ``SigtermCheckpoint``.

No detectron2 counterpart (detectron2 dies wherever SIGTERM finds it). Lightning alone stops at the next
iteration on SIGTERM but saves nothing and exits with status 0, so ``train && next`` carries on as if training
had finished. Here a signal handler only records the signal; the work waits for ``after_step``, where every
rank is between two iterations, and every rank follows rank 0's decision (one small broadcast every
``check_period`` iterations, only with several processes).

:class:`StopOnSignal` is that mechanism, shared by two policies: :class:`SigtermCheckpoint` (here: on SIGTERM,
checkpoint and exit with status 143; optionally the same on a first Ctrl-C, status 130, which the ``d2lightning``
command turns on) and :class:`~d2lightning.slurm.preemption.SlurmPreemption` (inside a Slurm
job: checkpoint, requeue...). Two hooks rather than one with a mode, because the policies differ in every
decision — which signals, whether to save, requeue or not, the exit status — while the mechanism is the same.

before_train → ``on_train_start`` (install the handlers, find the checkpointer); after_step →
``on_train_batch_end``; after_train → ``on_train_end`` / ``on_exception``. Lightning restores the previous
signal handlers when the fit ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from d2lightning.checkpoint.atomic import atomic_write_text
from d2lightning.checkpoint.discovery import find_checkpointers
from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_last_iter
from d2lightning.utils import comm
from d2lightning.utils.validation import check_int

__all__ = [
    "INTERRUPTED",
    "PREEMPTED_CHECKPOINT_FILE",
    "SIGINT_POLICY_VARIABLE",
    "TERMINATED",
    "SigtermCheckpoint",
    "StopOnSignal",
    "TrainingPreempted",
    "sigint_checkpoints",
]

logger = logging.getLogger(__name__)

#: File of the checkpoint directory that names a stop checkpoint not yet superseded by a newer one.
PREEMPTED_CHECKPOINT_FILE = "preempted_checkpoint"
#: The exit status of a run stopped by SIGTERM: the shell's status of a process ended by that signal.
TERMINATED = 128 + signal.SIGTERM
#: The exit status of a run stopped by a first Ctrl-C (SIGINT): the shell's status of a process SIGINT ended.
INTERRUPTED = 128 + signal.SIGINT
#: The environment variable that makes a first Ctrl-C stop with a checkpoint (``checkpoint``); the ``d2lightning``
#: command sets it for its runs, and launched workers inherit it. Unset, Ctrl-C raises ``KeyboardInterrupt``.
SIGINT_POLICY_VARIABLE = "D2L_SIGINT"
CONTINUE = 0


def sigint_checkpoints(environ: Any = None) -> bool:
    """Whether a first Ctrl-C stops training with a checkpoint here (``D2L_SIGINT=checkpoint``), rather than
    raising ``KeyboardInterrupt`` as detectron2 does."""
    environ = os.environ if environ is None else environ
    return str(environ.get(SIGINT_POLICY_VARIABLE, "")).lower() == "checkpoint"


class TrainingPreempted(SystemExit):
    """Raised on every rank by a :class:`StopOnSignal` hook to end training after a signal.

    A ``SystemExit``, so ``except Exception`` blocks let it through and, uncaught, it ends the process with
    ``code`` and no traceback (143 after SIGTERM; see :class:`~d2lightning.slurm.preemption.SlurmPreemption`
    for the codes under Slurm). Hooks see it as an interrupted run: their ``after_train`` runs with ``iter`` at
    the last iteration done, so no final checkpoint or evaluation.

    Attributes:
        code: the exit status.
        message: one line saying where training stopped and how to continue (also logged on rank 0).
    """

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.code, self.message)


class StopOnSignal(HookBase):
    """Record signals in a handler; at an iteration boundary, follow rank 0's decision: go on, or save and stop.

    Subclasses set :attr:`signals` and implement :meth:`decide` (rank 0: an int action, :data:`CONTINUE` to go
    on) and :meth:`finish` (every rank, after the optional save: the exit code and message). The decision is
    taken after the other hooks' ``after_step`` every ``check_period`` iterations, never after the last one
    (the run is finishing anyway), and broadcast from rank 0 (a collective: register the hook on every rank).

    A stop checkpoint is temporary: the file ``preempted_checkpoint`` of the checkpoint directory names it, and
    the resumed run deletes both once it has written a newer checkpoint, so a stopped and resumed run ends with
    the checkpoint files of an uninterrupted one. (When the file existed already, e.g. the periodic checkpoint of
    that iteration, it is overwritten and kept.)

    Args:
        checkpointer: what saves; by default the trainer's ``checkpointer`` attribute (``DefaultTrainer``), else
            the checkpointer of the first registered ``PeriodicCheckpointer``. Without one nothing is saved
            (with a warning).
        check_period: iterations between two decisions (>= 1).

    Raises:
        TypeError: when ``checkpointer`` has no ``save`` method.
        ValueError: when ``check_period`` is not an int >= 1.
    """

    signals: tuple[int, ...] = ()
    #: Signals whose second arrival does not wait for an iteration boundary: it raises ``KeyboardInterrupt`` at once.
    abort_on_repeat: tuple[int, ...] = ()
    #: Marks a hook that handles the signals a cluster sends (the Trainer factory warns in a Slurm job without one).
    handles_preemption = True

    def __init__(self, checkpointer: Any = None, check_period: int = 20) -> None:
        if checkpointer is not None and not callable(getattr(checkpointer, "save", None)):
            raise TypeError(f"checkpointer must have a save(name, **extra) method, got {type(checkpointer).__name__}")
        self.check_period = check_int(f"{type(self).__name__} check_period", check_period, minimum=1)
        self._given_checkpointer = checkpointer
        self._checkpointer: Any = None
        self._received: set[int] = set()
        self._pending: str | None = None  # basename of a stop checkpoint not yet superseded (file writer)

    # ------------------------------------------------------------ the policy (subclasses)
    def decide(self) -> int:
        """Rank 0: the action for the signals received so far (:attr:`received`); :data:`CONTINUE` goes on."""
        raise NotImplementedError

    def saves(self, action: int) -> bool:
        """Whether ``action`` saves a checkpoint before stopping (default: always)."""
        return True

    def finish(self, action: int, iteration: int, checkpoint: str | None) -> tuple[int, str]:
        """Every rank, after the save: ``(exit code, one-line message)``. ``checkpoint`` is the file saved."""
        raise NotImplementedError

    def announce(self) -> str:
        """The log line once the handlers are in place."""
        names = " or ".join(signal.Signals(s).name for s in self.signals)
        when = "after the current iteration" if self.check_period == 1 else f"within {self.check_period} iterations"
        return f"On {names}, training stops {when} with a checkpoint"

    @property
    def received(self) -> set[int]:
        """The signals received since training started."""
        return self._received

    # ------------------------------------------------------------ hooks
    def before_train(self) -> None:
        self._received.clear()
        self._checkpointer = self._given_checkpointer or _find_checkpointer(self.trainer)
        self._pending = self._read_marker()
        if threading.current_thread() is not threading.main_thread():
            logger.warning(f"{type(self).__name__}: training does not run in the main thread, signals go unhandled")
            return
        for signum in self.signals:
            signal.signal(signum, self._on_signal)
        logger.info(self.announce())

    def after_step(self) -> None:
        if self._pending is not None:
            self._drop_superseded()
        trainer = self.trainer
        if not every_n_iters(trainer, self.check_period) or is_last_iter(trainer):
            return
        action = _broadcast_from_main(self.decide() if comm.is_main_process() else CONTINUE)
        if action != CONTINUE:
            self._stop(action)

    def after_train(self) -> None:
        if self._pending is not None:
            self._drop_superseded()

    # ------------------------------------------------------------ private
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in self._received and signum in self.abort_on_repeat:
            raise KeyboardInterrupt  # a second Ctrl-C: abort now, wherever training is
        self._received.add(signum)  # nothing else: the work waits for the next iteration boundary

    def _stop(self, action: int) -> None:
        it = self.trainer.iter
        saves = self.saves(action)
        gather = getattr(self.trainer, "gather_rank_states", None)
        if saves and callable(gather):  # every rank is here (the decision was broadcast): a collective is safe
            gather()  # the checkpoint holds every rank's RNG states
        saved = self._save(it) if saves else None
        comm.synchronize()  # the checkpoint is complete before anyone leaves
        code, message = self.finish(action, it, saved)
        logger.warning(message)  # rank 0 on the console; every rank in its log file
        raise TrainingPreempted(code, message)

    def _save(self, it: int) -> str | None:
        """Save ``model_{it:07d}.pth``; return its path on the process that writes it."""
        checkpointer = self._checkpointer
        if checkpointer is None:
            if comm.is_main_process():
                logger.warning(f"No checkpointer: nothing saved at iteration {it}")
            return None
        name = f"model_{it:07d}.pth"
        save_dir = _save_dir(checkpointer)
        existed = save_dir is not None and os.path.exists(os.path.join(save_dir, name))
        checkpointer.save(name[: -len(".pth")], iteration=it)
        if save_dir is None:
            return None
        if not existed:
            previous, self._pending = self._pending, name
            atomic_write_text(os.path.join(save_dir, PREEMPTED_CHECKPOINT_FILE), name)
            if previous is not None and previous != name:
                _remove(os.path.join(save_dir, previous))
        return os.path.join(save_dir, name)

    def _read_marker(self) -> str | None:
        save_dir = _save_dir(self._checkpointer)
        if save_dir is None:
            return None
        try:
            with open(os.path.join(save_dir, PREEMPTED_CHECKPOINT_FILE)) as f:
                name = f.read().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return name if name and os.path.basename(name) == name else None

    def _drop_superseded(self) -> None:
        """Delete the pending stop checkpoint once ``last_checkpoint`` names another file."""
        save_dir = _save_dir(self._checkpointer)
        if save_dir is None or self._pending is None:
            return
        last = os.path.basename(self._checkpointer.get_checkpoint_file())
        if not last or last == self._pending:
            return
        logger.info(f"Deleting {self._pending}, the preemption checkpoint superseded by {last}")
        _remove(os.path.join(save_dir, self._pending))
        if self._read_marker() == self._pending:
            _remove(os.path.join(save_dir, PREEMPTED_CHECKPOINT_FILE))
        self._pending = None


class SigtermCheckpoint(StopOnSignal):
    """On SIGTERM: stop at an iteration boundary, save ``model_{iter:07d}.pth`` and exit with status 143 (and, with
    ``sigint=True``, the same on a first Ctrl-C, with status 130).

    The run outside Slurm's counterpart of :class:`~d2lightning.slurm.preemption.SlurmPreemption`, which
    ``DefaultTrainer`` registers by itself outside a Slurm job. It raises :class:`TrainingPreempted` with code
    143 (128 + SIGTERM, what a shell reports for a process SIGTERM ended) and a one-line message naming the
    checkpoint and saying to rerun with ``--resume``, so ``train && next`` does not go on. The resumed run
    continues exactly as an uninterrupted one. With one process it stops after the iteration during which the
    signal came; with several, within ``check_period`` iterations (default 20, the period of
    ``DefaultTrainer``'s writers), as deciding costs a broadcast.

    With ``sigint=True`` (what the ``d2lightning`` command runs with: :func:`sigint_checkpoints`), a first Ctrl-C
    (SIGINT) does the same with status 130 (128 + SIGINT) and a message that says "Ctrl-C"; a second Ctrl-C raises
    ``KeyboardInterrupt`` at once, wherever training is (a checkpoint being written is left as its temporary file,
    never under its name). By default Ctrl-C is left alone: ``KeyboardInterrupt``, as in detectron2.

    Args:
        checkpointer: see :class:`StopOnSignal`.
        check_period: iterations between two decisions with several processes; None: 1 with one process, 20
            with several. With one process the check is a set lookup.
        sigint: whether a first Ctrl-C also stops with a checkpoint (keyword-only).

    Example::

        trainer.register_hooks([..., hooks.PeriodicWriter(writers), SigtermCheckpoint(checkpointer)])
    """

    signals: tuple[int, ...] = (signal.SIGTERM,)

    def __init__(self, checkpointer: Any = None, check_period: int | None = None, *, sigint: bool = False) -> None:
        super().__init__(checkpointer, 20 if check_period is None else check_period)
        self._auto_period = check_period is None
        if sigint:
            self.signals = (signal.SIGTERM, signal.SIGINT)
            self.abort_on_repeat = (signal.SIGINT,)

    def before_train(self) -> None:
        if self._auto_period:
            self.check_period = 1 if comm.get_world_size() == 1 else 20
        super().before_train()

    def announce(self) -> str:
        text = super().announce()
        return text + " (a second Ctrl-C aborts at once)" if signal.SIGINT in self.signals else text

    def decide(self) -> int:
        return 1 if self.received & set(self.signals) else CONTINUE

    def finish(self, action: int, iteration: int, checkpoint: str | None) -> tuple[int, str]:
        saved = f"checkpoint {checkpoint} saved" if checkpoint else "the checkpoint was saved by the main process"
        if self._checkpointer is None:
            saved = "nothing saved (no checkpointer)"
        code, by = (INTERRUPTED, "Ctrl-C (SIGINT)") if signal.SIGINT in self.received else (TERMINATED, "SIGTERM")
        return code, (
            f"Training stopped by {by} after iteration {iteration}; {saved}. To continue, run the same command "
            "with --resume."
        )


def _find_checkpointer(trainer: Any) -> Any:
    """The trainer's ``checkpointer``, else the first one among the trainer's hooks."""
    found = find_checkpointers([trainer, *getattr(trainer, "_hooks", ())])
    return found[0] if found else None


def _save_dir(checkpointer: Any) -> str | None:
    """The directory ``checkpointer`` writes files to in this process, or None when it writes none."""
    if checkpointer is None or not getattr(checkpointer, "save_to_disk", True):
        return None
    return getattr(checkpointer, "save_dir", None) or None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _broadcast_from_main(value: int) -> int:
    """Rank 0's ``value`` on every rank (collective; no-op at world size 1)."""
    if comm.get_world_size() == 1:
        return value
    on_gpu = dist.get_backend() == dist.Backend.NCCL
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    tensor = torch.tensor([value], dtype=torch.int32, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())
