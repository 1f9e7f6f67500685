"""The signal hook a run gets, depending on where it runs.

No detectron2 counterpart. The callers that compose a run — ``DefaultTrainer`` (hence ``d2lightning train``) and
the LazyConfig recipe — register :func:`termination_hook` after their other hooks: inside a Slurm job a
:class:`~d2lightning.slurm.preemption.SlurmPreemption` (unless ``D2L_SLURM_PREEMPTION`` is
``0``/``false``/``no``/``off``), outside one a :class:`~d2lightning.engine.recipes.termination.SigtermCheckpoint`
(SIGTERM: checkpoint, exit 143; with ``D2L_SIGINT=checkpoint``, which the ``d2lightning`` command sets, also a
first Ctrl-C: checkpoint, exit 130). Lightning's own Slurm auto-requeue, whose SIGUSR1 handler would save inside the
handler and race the hook, is switched off by the Trainer ``TrainerBase.train`` builds.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["preemption_enabled", "termination_hook"]

_OFF = ("0", "false", "no", "off")


def preemption_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether training adds :class:`SlurmPreemption` by itself: in a Slurm job, unless switched off."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("SLURM_JOB_ID")) and environ.get("D2L_SLURM_PREEMPTION", "1").lower() not in _OFF


def termination_hook(environ: Mapping[str, str] | None = None) -> Any:
    """The hook that stops a run cleanly on a signal here, or None.

    A :class:`~d2lightning.slurm.preemption.SlurmPreemption` in a Slurm job when :func:`preemption_enabled`;
    None in a Slurm job that switched it off (signals are left to Slurm and Lightning); a
    :class:`~d2lightning.engine.recipes.termination.SigtermCheckpoint` outside Slurm, which also handles a first Ctrl-C
    when ``D2L_SIGINT`` is ``checkpoint`` (:func:`~d2lightning.engine.recipes.termination.sigint_checkpoints`).
    """
    environ = os.environ if environ is None else environ
    if preemption_enabled(environ):
        from d2lightning.slurm.preemption import SlurmPreemption

        return SlurmPreemption()
    if environ.get("SLURM_JOB_ID"):
        return None
    from d2lightning.engine.recipes.termination import SigtermCheckpoint, sigint_checkpoints

    return SigtermCheckpoint(sigint=sigint_checkpoints(environ))
