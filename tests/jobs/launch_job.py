"""A job for the launcher tests: ``python tests/jobs/launch_job.py OUT_DIR NUM_GPUS_PER_MACHINE [lightning]``.

Run by ``srun``, ``torchrun`` or with hand-made SLURM variables, it calls ``launch(job_main, N)``; every rank
all-reduces ``rank + 1`` and writes what it saw to ``OUT_DIR/rank{R}.json`` (with ``lightning``, also what
Lightning's ``SLURMEnvironment`` reads, at the cost of importing Lightning). Run with the repository on
``PYTHONPATH`` (for :mod:`tests.helpers.distributed`).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tests.helpers.distributed import ENV_KEYS, write_result


def job_main(out_dir: str, ask_lightning: bool = False) -> None:
    """All-reduce ``rank + 1`` and record ranks, sizes, rendezvous and the detected launcher."""
    import torch
    import torch.distributed as dist

    from d2lightning.engine.launch import detect_cluster_environment
    from d2lightning.utils import comm

    total = torch.tensor([float(comm.get_rank() + 1)])
    dist.all_reduce(total)
    env = detect_cluster_environment()
    payload: dict[str, Any] = {
        "rank": comm.get_rank(),
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "sum": total.item(),
        "backend": str(dist.get_backend()),
        "pid": os.getpid(),
        "env": {k: os.environ.get(k) for k in (*ENV_KEYS, "SLURM_NTASKS_PER_NODE", "SLURM_JOB_ID")},
        "detected": None if env is None else env.__dict__,
    }
    if ask_lightning and env is not None and env.launcher == "slurm":
        from lightning.fabric.plugins.environments import SLURMEnvironment

        lightning_env = SLURMEnvironment(auto_requeue=False)  # raises if Lightning would refuse the step
        payload["lightning"] = {
            "main_address": lightning_env.main_address,
            "main_port": lightning_env.main_port,
            "global_rank": lightning_env.global_rank(),
            "local_rank": lightning_env.local_rank(),
            "world_size": lightning_env.world_size(),
            "node_rank": lightning_env.node_rank(),
        }
    write_result(out_dir, comm.get_rank(), payload)


if __name__ == "__main__":
    from d2lightning.engine.launch import launch

    dist_url = os.environ.get("D2L_TEST_DIST_URL")  # a script passing detectron2's default --dist-url
    launch(job_main, int(sys.argv[2]), dist_url=dist_url, args=(sys.argv[1], sys.argv[3:] == ["lightning"]))
