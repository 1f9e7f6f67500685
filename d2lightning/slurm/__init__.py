"""Slurm support: ``d2lightning slurm submit``, and preemption handling with exact resume.

No detectron2 counterpart. :class:`SlurmPreemption` (added by ``TrainerBase.train`` inside a Slurm job) saves a
checkpoint at an iteration boundary on SIGUSR1 / a requeueing SIGTERM, requeues the job and stops; the
requeued job resumes from it. :func:`render_sbatch_script` / :func:`submit_job` write and submit the batch
script that asks Slurm for that signal. Names are resolved lazily, so importing this package is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the API reference; at run time resolved by __getattr__ below
    from d2lightning.slurm.preemption import PREEMPTED_CHECKPOINT_FILE, SlurmPreemption, TrainingPreempted
    from d2lightning.slurm.sbatch import SbatchJob, render_sbatch_script, submit_job
    from d2lightning.slurm.scontrol import requeue_job, requeue_pending, slurm_job_id

__all__ = [
    "PREEMPTED_CHECKPOINT_FILE",
    "SbatchJob",
    "SlurmPreemption",
    "TrainingPreempted",
    "render_sbatch_script",
    "requeue_job",
    "requeue_pending",
    "slurm_job_id",
    "submit_job",
]

_WHERE = {
    "PREEMPTED_CHECKPOINT_FILE": "preemption",
    "SlurmPreemption": "preemption",
    "TrainingPreempted": "preemption",
    "SbatchJob": "sbatch",
    "render_sbatch_script": "sbatch",
    "submit_job": "sbatch",
    "requeue_job": "scontrol",
    "requeue_pending": "scontrol",
    "slurm_job_id": "scontrol",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'd2lightning.slurm' has no attribute {name!r}")
    return getattr(import_module(f"d2lightning.slurm.{_WHERE[name]}"), name)
