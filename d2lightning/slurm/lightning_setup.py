"""The signal hook and the Slurm plugin a run gets, depending on where it runs.

No detectron2 counterpart. ``DefaultTrainer`` calls :func:`termination_hook` and :func:`add_slurm_plugin` itself;
``TrainerBase.train`` calls :func:`add_slurm_support`, which adds what is missing inside a Slurm job:

* Lightning's ``SLURMEnvironment`` with ``auto_requeue=False``. Lightning picks ``SLURMEnvironment`` by itself
  under ``srun``, with auto-requeue on: its SIGUSR1 handler would save a checkpoint inside the handler and
  requeue, racing :class:`~d2lightning.slurm.preemption.SlurmPreemption`.
* A :class:`~d2lightning.slurm.preemption.SlurmPreemption` hook after the others, when ``SLURM_JOB_ID`` is set,
  none is registered yet and ``D2L_SLURM_PREEMPTION`` is not ``0``/``false``/``no``/``off``.

Outside a Slurm job, :func:`termination_hook` gives a
:class:`~d2lightning.engine.termination.SigtermCheckpoint` (SIGTERM: checkpoint, exit 143).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["add_slurm_plugin", "add_slurm_support", "preemption_enabled", "termination_hook"]

_OFF = ("0", "false", "no", "off")


def preemption_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether training adds :class:`SlurmPreemption` by itself: in a Slurm job, unless switched off."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("SLURM_JOB_ID")) and environ.get("D2L_SLURM_PREEMPTION", "1").lower() not in _OFF


def termination_hook(environ: Mapping[str, str] | None = None) -> Any:
    """The hook that stops a run cleanly on a signal here, or None.

    A :class:`~d2lightning.slurm.preemption.SlurmPreemption` in a Slurm job when :func:`preemption_enabled`;
    None in a Slurm job that switched it off (signals are left to Slurm and Lightning); a
    :class:`~d2lightning.engine.termination.SigtermCheckpoint` outside Slurm.
    """
    environ = os.environ if environ is None else environ
    if preemption_enabled(environ):
        from d2lightning.slurm.preemption import SlurmPreemption

        return SlurmPreemption()
    if environ.get("SLURM_JOB_ID"):
        return None
    from d2lightning.engine.termination import SigtermCheckpoint

    return SigtermCheckpoint()


def add_slurm_plugin(kwargs: dict[str, Any]) -> None:
    """Add ``SLURMEnvironment(auto_requeue=False)`` to ``kwargs["plugins"]`` where Lightning would pick Slurm.

    Nothing is added when a cluster environment is already given, or in a worker ``launch`` spawned (whose
    Trainer gets ``LightningEnvironment`` from the Trainer factory).
    """
    from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment

    from d2lightning.engine.cluster import lightning_cluster_environment

    plugins = kwargs.get("plugins")
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, ClusterEnvironment) for p in plugins) or lightning_cluster_environment() is not None:
        return
    if SLURMEnvironment.detect():
        kwargs["plugins"] = [*plugins, SLURMEnvironment(auto_requeue=False)]


def add_slurm_support(kwargs: dict[str, Any]) -> None:
    """Add the Slurm plugin and hook to ``lightning.pytorch.Trainer`` keyword arguments, in place.

    ``kwargs["plugins"]`` gains ``SLURMEnvironment(auto_requeue=False)`` (see :func:`add_slurm_plugin`);
    ``kwargs["callbacks"]`` gains a ``SlurmPreemption`` when :func:`preemption_enabled` and none is there.
    """
    add_slurm_plugin(kwargs)
    if preemption_enabled():
        from d2lightning.slurm.preemption import SlurmPreemption

        callbacks = list(kwargs.get("callbacks") or [])
        if not any(isinstance(cb, SlurmPreemption) for cb in callbacks):
            kwargs["callbacks"] = [*callbacks, SlurmPreemption()]
