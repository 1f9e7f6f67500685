"""What ``TrainerBase.train`` adds to its Lightning ``Trainer`` inside a Slurm job.

No detectron2 counterpart. Two things, both only when Slurm runs the process:

* Lightning's ``SLURMEnvironment`` with ``auto_requeue=False``. Lightning picks ``SLURMEnvironment`` by itself
  under ``srun``, with auto-requeue on: its SIGUSR1 handler would save a checkpoint inside the handler and
  requeue, racing :class:`~d2lightning.slurm.preemption.SlurmPreemption`.
* A :class:`~d2lightning.slurm.preemption.SlurmPreemption` hook after the others, when ``SLURM_JOB_ID`` is set,
  none is registered yet and ``D2L_SLURM_PREEMPTION`` is not ``0``/``false``/``no``/``off``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["add_slurm_support", "preemption_enabled"]

_OFF = ("0", "false", "no", "off")


def preemption_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether training adds :class:`SlurmPreemption` by itself: in a Slurm job, unless switched off."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("SLURM_JOB_ID")) and environ.get("D2L_SLURM_PREEMPTION", "1").lower() not in _OFF


def add_slurm_support(kwargs: dict[str, Any]) -> None:
    """Add the Slurm plugin and hook to ``lightning.pytorch.Trainer`` keyword arguments, in place.

    ``kwargs["plugins"]`` gains ``SLURMEnvironment(auto_requeue=False)`` when Lightning would detect Slurm and
    no cluster environment is given; ``kwargs["callbacks"]`` gains a ``SlurmPreemption`` when
    :func:`preemption_enabled` and none is there.
    """
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    plugins = kwargs.get("plugins")
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
        kwargs["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]
    if preemption_enabled():
        from d2lightning.slurm.preemption import SlurmPreemption

        callbacks = list(kwargs.get("callbacks") or [])
        if not any(isinstance(cb, SlurmPreemption) for cb in callbacks):
            kwargs["callbacks"] = [*callbacks, SlurmPreemption()]
