"""Exact resume of detectron2 training scripts on d2lightning, against a real detectron2 (skipped without it).

The job (``tests/jobs/d2_resume_job.py``) trains as detectron2's own scripts do: detectron2's
``build_detection_train_loader`` with random augmentation and aspect-ratio grouping, detectron2's
``DetectionCheckpointer(trainer=)`` and ``PeriodicCheckpointer`` hook (on the main process only), a model with dropout.
Stopped and resumed in a fresh process, it must end with the weights of an uninterrupted run, bit for bit — which a
data stream that restarts at resume (detectron2's own behaviour) does not give.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.detectron2_runs import DETECTRON2_MARKS
from tests.helpers.distributed import LAUNCHER_VARS

pytestmark = [*DETECTRON2_MARKS, pytest.mark.slow]

JOB = REPO / "tests" / "jobs" / "d2_resume_job.py"
SAMPLERS = ["TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler"]


def _run(out: Path, max_iter: int, sampler: str, workers: int, nproc: int = 1) -> None:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        SAMPLER=sampler,
        WORKERS=str(workers),
        NPROC=str(nproc),
        OMP_NUM_THREADS="1",
        PERIOD="6" if nproc == 1 else "10",
    )
    proc = subprocess.run(
        [sys.executable, str(JOB), str(out), str(max_iter)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "final.pt", weights_only=True)["model"]


def _assert_same(straight: Path, resumed: Path) -> None:
    a, b = _weights(straight), _weights(resumed)
    assert set(a) == set(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_resumed_detectron2_script_ends_with_the_uninterrupted_weights(
    tmp_path: Path, sampler: str, workers: int
) -> None:
    _run(tmp_path / "straight", 12, sampler, workers)
    _run(tmp_path / "stopped", 6, sampler, workers)
    _run(tmp_path / "stopped", 12, sampler, workers)  # a fresh process resumes from iteration 5
    _assert_same(tmp_path / "straight", tmp_path / "stopped")


def test_with_the_checkpointer_on_rank_0_only_every_rank_resumes_exactly(tmp_path: Path) -> None:
    """2 processes, DDP model with dropout, detectron2's hook on the main process only (as its scripts register it)."""
    _run(tmp_path / "straight", 40, "TrainingSampler", 0, nproc=2)
    _run(tmp_path / "stopped", 20, "TrainingSampler", 0, nproc=2)
    _run(tmp_path / "stopped", 40, "TrainingSampler", 0, nproc=2)
    _assert_same(tmp_path / "straight", tmp_path / "stopped")


def test_without_the_stream_position_the_resumed_run_differs(tmp_path: Path) -> None:
    """The negative control: a checkpoint without the data-stream entry (as detectron2 writes it) resumes with the
    stream placed from the iteration, which with random augmentation is not the uninterrupted run."""
    _run(tmp_path / "straight", 12, "TrainingSampler", 2)
    _run(tmp_path / "stopped", 6, "TrainingSampler", 2)
    checkpoint = tmp_path / "stopped" / "model_final.pth"
    state = torch.load(checkpoint, weights_only=False)
    del state["trainer"]["data"]
    torch.save(state, checkpoint)
    _run(tmp_path / "stopped", 12, "TrainingSampler", 2)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert not all(torch.equal(a[k], b[k]) for k in a)
