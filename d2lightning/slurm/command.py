"""``d2lightning slurm submit``: train from a config file as a Slurm batch job that survives preemption.

No detectron2 counterpart. The config is loaded first (with the overrides), so a bad config fails here rather
than in the queue; its ``OUTPUT_DIR`` receives Slurm's output files, and ``MODEL.DEVICE`` decides between GPU
tasks (``--gres=gpu:N``) and CPU tasks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

__all__ = ["add_slurm_parser", "submit_command"]


def add_slurm_parser(subparsers: Any) -> None:
    """Add ``slurm submit`` to the ``d2lightning`` subcommands (``subparsers`` of ``add_subparsers``)."""
    slurm = subparsers.add_parser("slurm", help="train as a Slurm batch job (requeued on preemption)")
    commands = slurm.add_subparsers(dest="slurm_command", required=True)
    submit = commands.add_parser(
        "submit",
        help="submit `d2lightning train --resume` with sbatch (or print the script with --dry-run)",
        description="Submit training as a Slurm batch job: one task per process, SIGUSR1 before the time limit "
        "(checkpoint, requeue, resume). Options go before the config overrides.",
    )
    submit.add_argument("--config-file", required=True, metavar="FILE", help="a YAML file or a built-in config name")
    submit.add_argument("--nodes", type=int, default=1, help="number of machines (default 1)")
    submit.add_argument(
        "--gpus-per-node",
        type=int,
        default=1,
        help="training processes per machine: one per GPU, or CPU processes when MODEL.DEVICE is cpu (default 1)",
    )
    submit.add_argument("--partition", help="Slurm partition (default: the cluster's)")
    submit.add_argument("--time", help="time limit in Slurm's format, e.g. 4:00:00 or 1-12:00:00")
    submit.add_argument("--cpus-per-task", type=int, help="CPUs per training process (data loading workers)")
    submit.add_argument("--job-name", help="job name (default: d2l-<config file name>)")
    submit.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        metavar="OPTION",
        help="one more #SBATCH option, e.g. --sbatch-arg=--account=proj (repeatable)",
    )
    submit.add_argument("--dry-run", action="store_true", help="print the batch script instead of submitting it")
    submit.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE or a.b=c)")
    submit.set_defaults(func=submit_command)


def submit_command(args: argparse.Namespace) -> int:
    """Render the batch script of ``args`` and submit it (print the job id), or print it with ``--dry-run``.

    Raises:
        ValueError: on a bad option value (as :class:`~d2lightning.slurm.sbatch.SbatchJob`).
        OSError: when the config file cannot be read or ``sbatch`` is missing.
    """
    from d2lightning.config import apply_overrides, get_cfg
    from d2lightning.model_zoo import resolve_config_file
    from d2lightning.slurm.sbatch import SbatchJob, render_sbatch_script, submit_job

    config_file = resolve_config_file(args.config_file)
    cfg = get_cfg()
    cfg.merge_from_file(config_file)
    apply_overrides(cfg, args.opts)
    processes = args.nodes * args.gpus_per_node
    if str(cfg.LIGHTNING.STRATEGY).lower() == "fsdp" and processes < 2:
        raise ValueError(
            f"LIGHTNING.STRATEGY='fsdp' shards the model over several processes, but --nodes {args.nodes} "
            f"--gpus-per-node {args.gpus_per_node} starts {processes}: ask for two or more, or use 'auto'"
        )
    output_dir = os.path.abspath(cfg.OUTPUT_DIR)
    stem = os.path.splitext(os.path.basename(config_file))[0]
    job = SbatchJob(
        config_file=os.path.abspath(config_file),
        output_dir=output_dir,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        use_gpus=str(cfg.MODEL.DEVICE).startswith("cuda"),
        partition=args.partition,
        time=args.time,
        cpus_per_task=args.cpus_per_task,
        job_name=args.job_name or f"d2l-{stem}",
        opts=tuple(args.opts or ()),
        sbatch_args=tuple(args.sbatch_arg),
    )
    script = render_sbatch_script(job)
    if args.dry_run:
        print(script, end="")
        return 0
    os.makedirs(output_dir, exist_ok=True)  # Slurm does not create the directory of --output
    try:
        job_id = submit_job(script)
    except RuntimeError as e:
        print(f"d2lightning slurm submit: error: {e}", file=sys.stderr)
        return 1
    print(job_id)
    print(f"Submitted job {job_id}; its output goes to {output_dir}/slurm-{job_id}.out", file=sys.stderr)
    return 0
