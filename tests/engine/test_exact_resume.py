"""Exact resume on every rank: 40 iterations uninterrupted equal 20, then a fresh process resuming to 40.

The job (``tests/jobs/resume_job.py``) draws random numbers everywhere: dropout and random sampling inside the
loss, random flips (numpy) and jitter (torch) in the dataset, in the main process or in DataLoader workers. Each
rank's RNG states and data-stream position are saved with the checkpoint — also when only the main process runs
the checkpointer hook, as detectron2's own scripts register it — and restored after everything that draws at
start-up; workers seed each sample from its position in the stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS

JOB = REPO / "tests" / "jobs" / "resume_job.py"


def _run(out: Path, max_iter: int, nproc: int, workers: int, rank0_only: bool = False) -> None:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), NPROC=str(nproc), WORKERS=str(workers), OMP_NUM_THREADS="1")
    env["RANK0_ONLY"] = "1" if rank0_only else "0"
    proc = subprocess.run(
        [sys.executable, str(JOB), str(out), str(max_iter)], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _final(out: Path) -> dict:
    return torch.load(out / "final.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("nproc", "workers", "rank0_only"), [(1, 0, False), (1, 2, False), (2, 0, False), (2, 0, True)]
)
def test_resumed_run_equals_the_uninterrupted_one(tmp_path: Path, nproc: int, workers: int, rank0_only: bool) -> None:
    _run(tmp_path / "straight", 40, nproc, workers, rank0_only)
    _run(tmp_path / "stopped", 20, nproc, workers, rank0_only)
    _run(tmp_path / "stopped", 40, nproc, workers, rank0_only)  # a fresh process resumes from iteration 19
    straight, resumed = _final(tmp_path / "straight"), _final(tmp_path / "stopped")
    for name, weight in straight["model"].items():
        assert torch.equal(weight, resumed["model"][name]), name
    moms = [s["momentum_buffer"] for s in straight["optimizer"]["state"].values()]
    assert all(
        torch.equal(a, s["momentum_buffer"]) for a, s in zip(moms, resumed["optimizer"]["state"].values(), strict=True)
    )


@pytest.mark.slow
def test_without_the_saved_states_the_runs_differ(tmp_path: Path) -> None:
    """The job really draws random numbers after the resume point: a resume that restores nothing diverges."""
    _run(tmp_path / "straight", 40, 1, 0)
    _run(tmp_path / "stopped", 20, 1, 0)
    checkpoint = tmp_path / "stopped" / "model_final.pth"
    state = torch.load(checkpoint, weights_only=False)
    del state["trainer"]["rng"]
    torch.save(state, checkpoint)
    _run(tmp_path / "stopped", 40, 1, 0)
    straight, resumed = _final(tmp_path / "straight"), _final(tmp_path / "stopped")
    assert not all(torch.equal(w, resumed["model"][k]) for k, w in straight["model"].items())


@pytest.mark.slow
def test_two_processes_need_every_ranks_states(tmp_path: Path) -> None:
    """With the main process' RNG states only, the other rank's draws after the resume differ."""
    _run(tmp_path / "straight", 40, 2, 0, rank0_only=True)
    _run(tmp_path / "stopped", 20, 2, 0, rank0_only=True)
    checkpoint = tmp_path / "stopped" / "model_final.pth"
    state = torch.load(checkpoint, weights_only=False)
    del state["trainer"]["rng"]["ranks"]
    torch.save(state, checkpoint)
    _run(tmp_path / "stopped", 40, 2, 0, rank0_only=True)
    straight, resumed = _final(tmp_path / "straight"), _final(tmp_path / "stopped")
    assert not all(torch.equal(w, resumed["model"][k]) for k, w in straight["model"].items())


@pytest.mark.slow
def test_the_demo_with_random_flips_in_two_workers_resumes_exactly(tmp_path: Path) -> None:
    """``d2lightning train`` on the demo, random flips on, 2 DataLoader workers: stopped by SIGTERM after iteration 3
    (a checkpoint), then ``--resume`` in a fresh process, it ends with the weights of an uninterrupted run."""
    from tests.helpers.cli import demo_args, run_cli

    opts = ["INPUT.RANDOM_FLIP", "horizontal", "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", "8"]
    stop_at_3 = ["LIGHTNING.CALLBACKS", "[{class_path: tests.jobs.cli_job.RaiseSignalAt, init_args: {at: 3}}]"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run_cli(demo_args(straight, *opts)).returncode == 0
    assert run_cli(demo_args(stopped, *opts, *stop_at_3)).returncode == 143
    proc = run_cli(["train", "--resume", *demo_args(stopped, *opts)[1:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(straight / "model_final.pth", weights_only=True)["model"]
    b = torch.load(stopped / "model_final.pth", weights_only=True)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
