"""``SlurmPreemption``: when Slurm ends the job, checkpoint at an iteration boundary, requeue, and stop.

No detectron2 counterpart. Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves its checkpoint *inside*
the SIGUSR1 handler, which can interrupt a collective and hang; here the handlers only record the signal, and
the work happens in ``after_step``, where every rank is between two iterations.

before_train → ``on_train_start`` (install the handlers, find the checkpointer); after_step →
``on_train_batch_end`` (every ``check_period`` iterations: rank 0's decision, broadcast to all ranks); after_train
→ ``on_train_end`` / ``on_exception``. Lightning restores the previous signal handlers when the fit ends.
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
from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import check_period as _check_period
from d2lightning.engine.hooks._periods import every_n_iters, is_last_iter
from d2lightning.slurm.scontrol import requeue_job, requeue_pending, slurm_job_id
from d2lightning.utils import comm

__all__ = ["PREEMPTED_CHECKPOINT_FILE", "SlurmPreemption", "TrainingPreempted"]

logger = logging.getLogger(__name__)

#: File of the checkpoint directory that names a preemption checkpoint not yet superseded by a newer one.
PREEMPTED_CHECKPOINT_FILE = "preempted_checkpoint"
_CONTINUE, _REQUEUE, _SAVE_AND_STOP, _STOP = 0, 1, 2, 3
_TERMINATED = 128 + signal.SIGTERM  # the shell's exit status of a process ended by SIGTERM


class TrainingPreempted(SystemExit):
    """Raised on every rank by :class:`SlurmPreemption` to end training after a Slurm signal.

    A ``SystemExit``, so ``except Exception`` blocks let it through and, uncaught, it ends the process with
    ``code`` and no traceback: 0 after a checkpoint (and a requeue), 1 when ``scontrol requeue`` failed,
    143 (128 + SIGTERM) when Slurm ends the job for good. Hooks see it as an interrupted run: their
    ``after_train`` runs with ``iter`` at the last iteration done, so no final checkpoint or evaluation.
    """


class SlurmPreemption(HookBase):
    """Checkpoint, requeue and stop when Slurm announces the end of the job; resume exactly after requeue.

    The signal handlers only record the signal. Every ``check_period`` iterations (in ``after_step``, after the
    other hooks) rank 0 turns what it received into a decision, broadcast to every rank (a collective: register
    the hook on every rank; it is the only collective, so single-process runs pay nothing):

    * SIGUSR1 (``#SBATCH --signal=USR1@90``, ``scancel --signal=USR1``): save ``model_{iter:07d}.pth`` with the
      checkpointer (``last_checkpoint`` then names it), run ``scontrol requeue`` on rank 0 (array-aware), stop.
    * SIGTERM while Slurm requeues the job (a ``PreemptMode=REQUEUE`` preemption, or someone's
      ``scontrol requeue``): save and stop; Slurm requeues it itself.
    * SIGTERM otherwise (``scancel``, time limit): stop without saving.

    Stopping raises :class:`TrainingPreempted` on every rank. Nothing happens at the last iteration: the run
    is finishing anyway. The requeued job runs ``--resume``, which loads the checkpoint; the training then
    continues exactly as an uninterrupted one. The default ``check_period`` of 20 is the period of
    ``DefaultTrainer``'s writers: checks come right after a write, so a stopped run leaves no metrics that an
    uninterrupted run would not write. Lower it when 20 iterations take longer than Slurm's warning time.

    A preemption checkpoint is temporary: the file ``preempted_checkpoint`` of the checkpoint directory names
    it, and the resumed run deletes both once it has written a newer checkpoint, so a preempted and resumed run
    ends with exactly the files of an uninterrupted one. (When the file existed already, e.g. the periodic
    checkpoint of that iteration, it is overwritten and kept.)

    ``DefaultTrainer`` (hence the CLI) adds this hook by itself inside a Slurm job (``SLURM_JOB_ID`` set; opt out
    with ``D2L_SLURM_PREEMPTION=0``); ``TrainerBase.train`` turns Lightning's own auto-requeue off. In a loop of your
    own register it with the other hooks (a run inside a Slurm job without it logs a warning); with a Lightning
    ``Trainer`` of your own, pass ``callbacks=[SlurmPreemption()]`` and
    ``plugins=[SLURMEnvironment(auto_requeue=False)]``.

    Args:
        checkpointer: what saves; by default the trainer's ``checkpointer`` attribute (``DefaultTrainer``), else
            the checkpointer of the first registered ``PeriodicCheckpointer``. Without one, nothing is saved
            (with a warning) and the requeued job resumes from its last checkpoint.
        check_period: iterations between two decisions (>= 1).

    Raises:
        TypeError: when ``checkpointer`` has no ``save`` method.
        ValueError: when ``check_period`` is not an int >= 1.

    Example::

        trainer.register_hooks([..., hooks.PeriodicWriter(writers), SlurmPreemption(checkpointer)])
    """

    #: Marks a hook that handles Slurm's signals (the Trainer factory warns when a Slurm job has none).
    handles_preemption = True

    def __init__(self, checkpointer: Any = None, check_period: int = 20) -> None:
        if checkpointer is not None and not callable(getattr(checkpointer, "save", None)):
            raise TypeError(f"checkpointer must have a save(name, **extra) method, got {type(checkpointer).__name__}")
        self.check_period = _check_period("SlurmPreemption check_period", check_period)
        self._given_checkpointer = checkpointer
        self._checkpointer: Any = None
        self._signals: set[int] = set()
        self._pending: str | None = None  # basename of a preemption checkpoint not yet superseded (file writer)
        self._job_id: str | None = None

    def before_train(self) -> None:
        self._signals.clear()
        self._job_id = slurm_job_id()
        self._checkpointer = self._given_checkpointer or _find_checkpointer(self.trainer, self)
        self._pending = self._read_marker()
        if threading.current_thread() is not threading.main_thread():
            logger.warning("SlurmPreemption: training does not run in the main thread, signals cannot be handled")
            return
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        logger.info(
            f"Slurm job {self._job_id} (restart {os.environ.get('SLURM_RESTART_COUNT', '0')}): on SIGUSR1 or "
            f"SIGTERM, training stops within {self.check_period} iterations (SIGUSR1: checkpoint, then requeue)"
        )

    def after_step(self) -> None:
        if self._pending is not None:
            self._drop_superseded()
        trainer = self.trainer
        if not every_n_iters(trainer, self.check_period) or is_last_iter(trainer):
            return
        action = _broadcast_from_main(self._decide() if comm.is_main_process() else _CONTINUE)
        if action != _CONTINUE:
            self._stop(action)

    def after_train(self) -> None:
        if self._pending is not None:
            self._drop_superseded()

    # ------------------------------------------------------------ private
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals.add(signum)  # nothing else: the work waits for the next iteration boundary

    def _decide(self) -> int:
        """Rank 0: what to do with the signals received so far."""
        if signal.SIGUSR1 in self._signals:
            return _REQUEUE
        if signal.SIGTERM in self._signals:
            requeued = self._job_id is None or requeue_pending(self._job_id)
            return _SAVE_AND_STOP if requeued else _STOP
        return _CONTINUE

    def _stop(self, action: int) -> None:
        it = self.trainer.iter
        if action in (_REQUEUE, _SAVE_AND_STOP):
            self._save(it)
        comm.synchronize()  # the checkpoint is complete before anyone requeues or leaves
        code = _TERMINATED if action == _STOP else 0
        if action == _REQUEUE and comm.is_main_process():
            if self._job_id is None:
                logger.warning("SIGUSR1 outside a Slurm job (no SLURM_JOB_ID): nothing to requeue")
            elif not requeue_job(self._job_id):
                code = 1
        what = {_REQUEUE: "requeue", _SAVE_AND_STOP: "requeue by Slurm", _STOP: "end of the Slurm job"}[action]
        logger.info(f"Training stops after iteration {it} for the {what}")
        raise TrainingPreempted(code)

    def _save(self, it: int) -> None:
        checkpointer = self._checkpointer
        if checkpointer is None:
            if comm.is_main_process():
                logger.warning(f"No checkpointer: nothing saved at iteration {it}; the job resumes from an older one")
            return
        name = f"model_{it:07d}.pth"
        save_dir = _save_dir(checkpointer)
        existed = save_dir is not None and os.path.exists(os.path.join(save_dir, name))
        checkpointer.save(name[: -len(".pth")], iteration=it)
        if save_dir is None or existed:
            return
        previous, self._pending = self._pending, name
        atomic_write_text(os.path.join(save_dir, PREEMPTED_CHECKPOINT_FILE), name)
        if previous is not None and previous != name:
            _remove(os.path.join(save_dir, previous))

    def _read_marker(self) -> str | None:
        save_dir = _save_dir(self._checkpointer)
        if save_dir is None:
            return None
        try:
            with open(os.path.join(save_dir, PREEMPTED_CHECKPOINT_FILE)) as f:
                name = f.read().strip()
        except OSError:
            return None
        return name if name and os.path.basename(name) == name else None

    def _drop_superseded(self) -> None:
        """Delete the pending preemption checkpoint once ``last_checkpoint`` names another file."""
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


def _find_checkpointer(trainer: Any, hook: SlurmPreemption) -> Any:
    """The trainer's ``checkpointer``, else that of the first periodic checkpointer among the trainer's hooks."""
    found = getattr(trainer, "checkpointer", None)
    if callable(getattr(found, "save", None)):
        return found
    for candidate in getattr(trainer, "_hooks", ()):
        found = getattr(candidate, "checkpointer", None)
        if candidate is not hook and hasattr(candidate, "period") and callable(getattr(found, "save", None)):
            return found
    return None


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
