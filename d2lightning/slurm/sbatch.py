"""The batch script of ``d2lightning slurm submit``, and its submission with ``sbatch``.

No detectron2 counterpart. The script asks Slurm for one task per training process (``--ntasks-per-node`` =
processes per node, ``srun`` starts them, d2lightning's ``launch`` joins them), for SIGUSR1 90 s before the time
limit on every task (``--signal=USR1@90``, no ``B:``), and for requeueing with output appended to the same
files; training runs with ``--resume``, so a requeued job continues from the checkpoint
:class:`~d2lightning.slurm.preemption.SlurmPreemption` saved, and a first run starts fresh.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field

from d2lightning.utils.validation import check_int

__all__ = ["SbatchJob", "render_sbatch_script", "submit_job"]

_TIME = re.compile(r"^(\d+-\d+(:\d+){0,2}|\d+(:\d+){0,2}|UNLIMITED|INFINITE)$")
_NO_SPACE = re.compile(r"^\S+$")


@dataclass(frozen=True)
class SbatchJob:
    """What the batch script of a training job says.

    Args:
        config_file: the config file given to ``d2lightning train``.
        output_dir: the config's ``OUTPUT_DIR``; Slurm writes ``slurm-<job id>.out/.err`` there.
        nodes: number of machines (``--nodes``, ``--num-machines``).
        gpus_per_node: training processes per machine (``--ntasks-per-node``, ``--num-gpus``).
        use_gpus: ask for ``gpus_per_node`` GPUs per node (``--gres=gpu:N``); False for CPU tasks.
        partition, time, cpus_per_task: ``--partition``, ``--time`` (Slurm's format, e.g. ``4:00:00``,
            ``1-12:00:00``), ``--cpus-per-task``; None leaves them to the cluster's defaults.
        job_name: ``--job-name``.
        opts: config overrides passed on to ``d2lightning train``.
        sbatch_args: more ``#SBATCH`` options, each ``--name[=value]`` (e.g. ``--account=proj``).
        python: the Python interpreter of the job; by default this one.
        workdir: the job's working directory (``--chdir``); by default the current one.
        signal_seconds: how long before the time limit Slurm sends SIGUSR1.

    Raises:
        ValueError: naming the field, when a count is not a positive int, ``time`` is not in Slurm's format, a
            path or name for an ``#SBATCH`` line has whitespace, or an ``sbatch_args`` entry is not an option.
    """

    config_file: str
    output_dir: str
    nodes: int = 1
    gpus_per_node: int = 1
    use_gpus: bool = True
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int | None = None
    job_name: str = "d2lightning"
    opts: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()
    python: str = field(default_factory=lambda: sys.executable)
    workdir: str = field(default_factory=os.getcwd)
    signal_seconds: int = 90

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "signal_seconds"):
            _check_positive(name, getattr(self, name))
        if self.cpus_per_task is not None:
            _check_positive("cpus_per_task", self.cpus_per_task)
        if self.time is not None and not _TIME.match(self.time):
            raise ValueError(
                f"time={self.time!r} is not a Slurm time limit; use minutes, [HH:]MM:SS or D-HH[:MM[:SS]], "
                "e.g. 240, 4:00:00, 1-12:00:00"
            )
        for name in ("output_dir", "workdir", "job_name", "partition"):
            value = getattr(self, name)
            if value is not None and not _NO_SPACE.match(value):
                raise ValueError(f"{name}={value!r} cannot go on an #SBATCH line: it is empty or has whitespace")
        for arg in self.sbatch_args:
            if not arg.startswith("--") or "\n" in arg:
                raise ValueError(f"sbatch_args entry {arg!r} is not an option like '--account=proj'")
        if not self.config_file:
            raise ValueError("config_file is required")


def render_sbatch_script(job: SbatchJob) -> str:
    """The batch script for ``job``: ``#SBATCH`` header, then ``srun`` of ``d2lightning train --resume``.

    Example::

        print(render_sbatch_script(SbatchJob("cfg.yaml", "/out", nodes=2, gpus_per_node=8, time="4:00:00")))
    """
    kind = "GPU" if job.use_gpus else "CPU process"
    lines = [
        "#!/bin/bash",
        f"# Written by `d2lightning slurm submit`: {job.nodes} node(s) x {job.gpus_per_node} task(s), one per {kind}.",
        f"# On SIGUSR1 ({job.signal_seconds} s before the time limit, or `scancel --signal=USR1 <job id>`) training",
        "# saves a checkpoint at the next iteration boundary, requeues this job and stops; the requeued job resumes",
        "# from that checkpoint (--resume). A first run, with no checkpoint in OUTPUT_DIR, starts fresh.",
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --nodes={job.nodes}",
        f"#SBATCH --ntasks-per-node={job.gpus_per_node}",
    ]
    if job.use_gpus:
        lines.append(f"#SBATCH --gres=gpu:{job.gpus_per_node}")
    if job.cpus_per_task is not None:
        lines.append(f"#SBATCH --cpus-per-task={job.cpus_per_task}")
    if job.partition is not None:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.time is not None:
        lines.append(f"#SBATCH --time={job.time}")
    lines += [
        f"#SBATCH --signal=USR1@{job.signal_seconds}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={job.output_dir}/slurm-%j.out",
        f"#SBATCH --error={job.output_dir}/slurm-%j.err",
        f"#SBATCH --chdir={job.workdir}",
        *(f"#SBATCH {arg}" for arg in job.sbatch_args),
        "",
        'echo "d2lightning: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST}"',
    ]
    train = [job.python, "-m", "d2lightning", "train", "--config-file", job.config_file]
    train += ["--num-gpus", str(job.gpus_per_node), "--num-machines", str(job.nodes), "--resume", *job.opts]
    lines.append("exec srun --kill-on-bad-exit=1 " + shlex.join(train))
    return "\n".join(lines) + "\n"


def submit_job(script: str, sbatch: str | None = None) -> str:
    """Submit ``script`` with ``sbatch --parsable`` (script on stdin) and return the job id.

    Args:
        script: the batch script, e.g. from :func:`render_sbatch_script`.
        sbatch: the ``sbatch`` executable; by default ``$D2L_SBATCH`` or ``sbatch`` on ``PATH``.

    Raises:
        FileNotFoundError: when ``sbatch`` cannot be found (not a Slurm login node?).
        RuntimeError: with sbatch's message, when it refuses the job.
    """
    exe = sbatch or os.environ.get("D2L_SBATCH") or "sbatch"
    try:
        proc = subprocess.run([exe, "--parsable"], input=script, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{exe!r} not found: submit from a machine with Slurm's client commands") from None
    job_id = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not job_id.isdigit():
        raise RuntimeError(f"sbatch refused the job (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return job_id


def _check_positive(name: str, value: object) -> None:
    check_int(name, value, minimum=1)
