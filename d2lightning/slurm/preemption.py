"""``SlurmPreemption``: when Slurm ends the job, checkpoint at an iteration boundary, requeue, and stop.

No detectron2 counterpart. Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves its checkpoint *inside*
the SIGUSR1 handler, which can interrupt a collective and hang; here the handlers only record the signal, and
the work happens in ``after_step``, where every rank is between two iterations — the mechanism of
:class:`~d2lightning.engine.recipes.termination.StopOnSignal`, with Slurm's policy: which signal means what, requeueing.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from d2lightning.engine.recipes.termination import (
    CONTINUE,
    PREEMPTED_CHECKPOINT_FILE,
    TERMINATED,
    StopOnSignal,
    TrainingPreempted,
)
from d2lightning.slurm.scontrol import requeue_job, requeue_pending, slurm_job_id
from d2lightning.utils import comm

__all__ = ["PREEMPTED_CHECKPOINT_FILE", "SlurmPreemption", "TrainingPreempted"]

logger = logging.getLogger(__name__)

_REQUEUE, _SAVE_AND_STOP, _STOP = 1, 2, 3


class SlurmPreemption(StopOnSignal):
    """Checkpoint, requeue and stop when Slurm announces the end of the job; resume exactly after requeue.

    The signal handlers only record the signal. Every ``check_period`` iterations (in ``after_step``, after the
    other hooks) rank 0 turns what it received into a decision, broadcast to every rank (a collective: register
    the hook on every rank; it is the only collective, so single-process runs pay nothing):

    * SIGUSR1 (``#SBATCH --signal=USR1@90``, ``scancel --signal=USR1``): save ``model_{iter:07d}.pth`` with the
      checkpointer (``last_checkpoint`` then names it), run ``scontrol requeue`` on rank 0 (array-aware), stop.
    * SIGTERM while Slurm requeues the job (a ``PreemptMode=REQUEUE`` preemption, or someone's
      ``scontrol requeue``): save and stop; Slurm requeues it itself.
    * SIGTERM otherwise (``scancel``, time limit): stop without saving.

    Stopping raises :class:`TrainingPreempted` on every rank: code 0 after a checkpoint (and a requeue), 1 when
    ``scontrol requeue`` failed, 143 (128 + SIGTERM) when Slurm ends the job for good. Nothing happens at the
    last iteration: the run is finishing anyway. The requeued job runs ``--resume``, which loads the checkpoint;
    the training then continues exactly as an uninterrupted one. The default ``check_period`` of 20 is the period
    of ``DefaultTrainer``'s writers: checks come right after a write, so a stopped run leaves no metrics that an
    uninterrupted run would not write. Lower it when 20 iterations take longer than Slurm's warning time.

    The preemption checkpoint is temporary (see :class:`~d2lightning.engine.recipes.termination.StopOnSignal`): a
    preempted and resumed run ends with exactly the files of an uninterrupted one.

    ``DefaultTrainer`` (hence the CLI) registers this hook by itself inside a Slurm job (``SLURM_JOB_ID`` set; opt
    out with ``D2L_SLURM_PREEMPTION=0``); ``TrainerBase.train`` turns Lightning's own auto-requeue off. In a loop of
    your own register it with the other hooks (a run inside a Slurm job without it logs a warning); with a
    Lightning ``Trainer`` of your own, pass ``callbacks=[SlurmPreemption()]`` and
    ``plugins=[SLURMEnvironment(auto_requeue=False)]``.

    Args:
        checkpointer: what saves (see :class:`~d2lightning.engine.recipes.termination.StopOnSignal`). Without one,
            nothing is saved (with a warning) and the requeued job resumes from its last checkpoint.
        check_period: iterations between two decisions (>= 1).

    Raises:
        TypeError: when ``checkpointer`` has no ``save`` method.
        ValueError: when ``check_period`` is not an int >= 1.

    Example::

        trainer.register_hooks([..., hooks.PeriodicWriter(writers), SlurmPreemption(checkpointer)])
    """

    signals = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self, checkpointer: Any = None, check_period: int = 20) -> None:
        super().__init__(checkpointer, check_period)
        self._job_id: str | None = None

    def before_train(self) -> None:
        self._job_id = slurm_job_id()
        super().before_train()

    def announce(self) -> str:
        return (
            f"Slurm job {self._job_id} (restart {os.environ.get('SLURM_RESTART_COUNT', '0')}): on SIGUSR1 or "
            f"SIGTERM, training stops within {self.check_period} iterations (SIGUSR1: checkpoint, then requeue)"
        )

    def decide(self) -> int:
        if signal.SIGUSR1 in self.received:
            return _REQUEUE
        if signal.SIGTERM in self.received:
            requeued = self._job_id is None or requeue_pending(self._job_id)
            return _SAVE_AND_STOP if requeued else _STOP
        return CONTINUE

    def saves(self, action: int) -> bool:
        return action in (_REQUEUE, _SAVE_AND_STOP)

    def finish(self, action: int, iteration: int, checkpoint: str | None) -> tuple[int, str]:
        code = TERMINATED if action == _STOP else 0
        if action == _REQUEUE and comm.is_main_process():
            if self._job_id is None:
                logger.warning("SIGUSR1 outside a Slurm job (no SLURM_JOB_ID): nothing to requeue")
            elif not requeue_job(self._job_id):
                code = 1
        what = {_REQUEUE: "requeue", _SAVE_AND_STOP: "requeue by Slurm", _STOP: "end of the Slurm job"}[action]
        return code, f"Training stops after iteration {iteration} for the {what}"
