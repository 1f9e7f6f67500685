"""What a Slurm job asks ``scontrol`` about itself: its id, requeue it, and whether Slurm is requeueing it.

No detectron2 counterpart. Lightning's ``SLURMEnvironment`` requeues the same way (``scontrol requeue`` with
the array-aware job id); this module adds the question "is this SIGTERM a requeue?", which Slurm answers in
``scontrol show job``:

* ``scontrol requeue J`` (by anyone) raises the job's ``Restarts`` counter before the tasks get SIGTERM, so
  ``Restarts`` exceeds the ``SLURM_RESTART_COUNT`` the running tasks started with;
* a preemption (``PreemptMode=REQUEUE``) sets ``PreemptTime`` while the job, still ``RUNNING`` with
  ``Requeue=1``, gets SIGTERM at the start of its ``GraceTime``; Slurm requeues it itself afterwards;
* ``scancel`` and the time limit change neither.

The ``scontrol`` executable is ``$D2L_SCONTROL`` when set (tests point it to a fake that records its
arguments), else ``scontrol`` on ``PATH``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping

__all__ = ["requeue_job", "requeue_pending", "scontrol_executable", "slurm_job_id"]

logger = logging.getLogger(__name__)

_TIMEOUT_S = 60.0
_JOB_ID = re.compile(r"^\d+(_\d+)?$")


def scontrol_executable(environ: Mapping[str, str] | None = None) -> str:
    """``$D2L_SCONTROL`` if set and non-empty, else ``"scontrol"``."""
    environ = os.environ if environ is None else environ
    return environ.get("D2L_SCONTROL") or "scontrol"


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The id ``scontrol`` knows this job by: ``"<array job>_<task>"`` in a job array, else ``SLURM_JOB_ID``.

    Args:
        environ: the variables to read; ``os.environ`` by default.

    Returns:
        The id, or None outside a Slurm job.

    Raises:
        ValueError: when the variables do not form a Slurm job id (digits, ``_`` and digits).
    """
    environ = os.environ if environ is None else environ
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{array_task}" if array_job and array_task else environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    if not _JOB_ID.match(job_id):
        raise ValueError(f"Slurm job id {job_id!r} (from SLURM_JOB_ID / SLURM_ARRAY_*) is not '<digits>[_<digits>]'")
    return job_id


def requeue_job(job_id: str) -> bool:
    """Run ``scontrol requeue <job_id>``; Slurm then stops the job and queues it again.

    Returns:
        Whether ``scontrol`` succeeded; a failure is logged with its output, not raised (the caller is
        shutting down either way).
    """
    cmd = [scontrol_executable(), "requeue", job_id]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.error(f"Requeueing Slurm job {job_id} failed: `{' '.join(cmd)}` could not run ({e})")
        return False
    if proc.returncode != 0:
        logger.error(
            f"Requeueing Slurm job {job_id} failed: `{' '.join(cmd)}` exited with {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()}"
        )
        return False
    logger.info(f"Requeued Slurm job {job_id}")
    return True


def requeue_pending(job_id: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether Slurm is requeueing the job (after ``scontrol requeue`` or a requeueing preemption).

    Reads ``scontrol show job -o <job_id>``: true when ``Restarts`` exceeds ``SLURM_RESTART_COUNT`` (0 when
    unset), or when ``PreemptTime`` is set and the job has ``Requeue=1``.

    Args:
        job_id: as :func:`slurm_job_id` gives it.
        environ: where to read ``SLURM_RESTART_COUNT``; ``os.environ`` by default.

    Returns:
        The answer; True (with a warning) when ``scontrol`` cannot answer, so that the caller saves a
        checkpoint rather than risk losing the work done.
    """
    environ = os.environ if environ is None else environ
    cmd = [scontrol_executable(), "show", "job", "-o", job_id]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning(f"Cannot ask Slurm about job {job_id} ({e}); assuming it is being requeued")
        return True
    fields = dict(word.split("=", 1) for word in proc.stdout.split() if "=" in word)
    if proc.returncode != 0 or "Restarts" not in fields:
        logger.warning(
            f"Cannot ask Slurm about job {job_id} (`{' '.join(cmd)}` exited with {proc.returncode}: "
            f"{(proc.stderr or proc.stdout).strip()[:200]}); assuming it is being requeued"
        )
        return True
    try:
        restarted = int(fields["Restarts"]) > int(environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        logger.warning(f"Unexpected Restarts={fields['Restarts']!r} for job {job_id}; assuming it is being requeued")
        return True
    if restarted:
        return True
    return fields.get("PreemptTime", "None") not in ("None", "Unknown", "") and fields.get("Requeue") == "1"
