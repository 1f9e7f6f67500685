"""The demo on a real Slurm cluster: submitted, preempted with SIGUSR1, requeued, resumed, finished.

Needs the local cluster of ``scripts/slurm/up.sh`` (``.ci/run`` starts it); skipped with the reason otherwise.
The job: ``d2lightning slurm submit`` of the built-in ``shapes_detector`` config on 2 CPU tasks (srun, gloo) for 40
iterations, checkpoints every 15, evaluation every 20. Uninterrupted, that run writes model_0000014.pth,
model_0000029.pth, model_final.pth and metrics.json lines for iterations 19, 39 (training) and 40 (final
evaluation). About a minute, most of it process start-up and Slurm's requeue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS
from tests.helpers.slurm_cluster import require_slurm

READY = "training stops within 20 iterations"  # logged by every rank once its signal handlers are in place


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _job_fields(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    return dict(word.split("=", 1) for word in out.split() if "=" in word)


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_preempted_demo_job_is_requeued_and_ends_like_an_uninterrupted_one(tmp_path: Path, strategy: str) -> None:
    """Also sharded (LIGHTNING.STRATEGY fsdp): the preemption checkpoint is gathered on every rank and resumed."""
    require_slurm()
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    submit_cmd = [
        sys.executable,
        "-m",
        "d2lightning",
        "slurm",
        "submit",
        "--config-file",
        "shapes_detector",
    ]
    overrides = ["SOLVER.MAX_ITER", "40", "SOLVER.CHECKPOINT_PERIOD", "15", "TEST.EVAL_PERIOD", "20"]
    overrides += ["LIGHTNING.STRATEGY", strategy]
    submit = subprocess.run(
        [*submit_cmd, "--nodes", "1", "--gpus-per-node", "2", *overrides, "OUTPUT_DIR", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip()
    slurm_out = out / f"slurm-{job}.out"
    try:
        ready = [out / "log.txt", out / "log.txt.rank1"]
        _wait_for(lambda: all(READY in _read(p) for p in ready), 180, "both ranks to start training")
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        requeued = {"Restarts": "1", "JobState": "PENDING"}
        _wait_for(lambda: requeued.items() <= _job_fields(job).items(), 120, "the requeued job to be pending")
        # skip Slurm's begin-time delay of requeued jobs (cred_expire); fails harmlessly if it already started
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
        _wait_for(lambda: _job_fields(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 240, "the end")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    fields = _job_fields(job)
    assert (fields["JobState"], fields["Restarts"], fields["ExitCode"]) == ("COMPLETED", "1", "0:0"), _read(slurm_out)
    batch_log = _read(slurm_out)
    assert f"d2lightning: job {job} restart 0 on" in batch_log
    assert f"d2lightning: job {job} restart 1 on" in batch_log  # the second run saw SLURM_RESTART_COUNT=1
    log = _read(out / "log.txt")
    first, second = log.split(f"Slurm job {job} (restart 1)")
    assert f"No checkpoint found in {out}: training starts at iteration 0" in first  # --resume, first run
    assert f"Saving checkpoint to {out}/model_0000019.pth" in first
    assert f"Requeued Slurm job {job}" in first
    assert "Training stops after iteration 19 for the requeue" in first
    assert f"Loading from {out}/model_0000019.pth" in log.split("Starting training from iteration 20")[0]
    assert "Deleting model_0000019.pth, the preemption checkpoint superseded by model_0000029.pth" in second
    checkpoints = sorted(p.name for p in out.iterdir() if p.suffix == ".pth" or p.name.endswith("checkpoint"))
    assert checkpoints == ["last_checkpoint", "model_0000014.pth", "model_0000029.pth", "model_final.pth"]
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [19, 39, 40]
    assert "bbox/AP" in metrics[0] and "bbox/AP" in metrics[2] and "total_loss" in metrics[1]
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert all(type(v) is torch.Tensor for v in final.values())  # full weights, also when sharded
    if strategy == "fsdp":
        assert log.count("FSDP over 2 processes") == 2  # sharded again after the requeue


PROBE = """
import os, signal, sys, time
from d2lightning.slurm.scontrol import requeue_pending, slurm_job_id
received = []
signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
print("ready", os.environ.get("SLURM_RESTART_COUNT", "0"), flush=True)
while not received:
    time.sleep(0.05)
with open(f"{sys.argv[1]}.{os.environ.get('SLURM_RESTART_COUNT', '0')}", "w") as f:
    f.write(str(requeue_pending(slurm_job_id())))
"""


@pytest.mark.slurm
def test_requeue_pending_tells_a_requeue_from_a_cancel_on_real_slurm(tmp_path: Path) -> None:
    """In a job step that got SIGTERM: True after `scontrol requeue`, False after `scancel` (of the rerun)."""
    require_slurm()
    probe, result, out = tmp_path / "probe.py", tmp_path / "pending", tmp_path / "job.out"
    probe.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    cmd = ["sbatch", "--parsable", "--requeue", "--open-mode=append", "-o", str(out)]
    job = subprocess.run(
        [*cmd, "--wrap", f"srun {sys.executable} {probe} {result}"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        _wait_for(lambda: "ready 0" in _read(out), 120, "the first run")
        subprocess.run(["scontrol", "requeue", job], check=True)
        _wait_for(lambda: _job_fields(job).get("JobState") == "PENDING", 60, "the requeued job to be pending")
        subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"], capture_output=True)
        _wait_for(lambda: "ready 1" in _read(out), 120, "the second run")
        subprocess.run(["scancel", job], check=True)
        _wait_for(lambda: Path(f"{result}.1").exists(), 60, "the second run's answer")
    finally:
        subprocess.run(["scancel", job], capture_output=True)
    assert Path(f"{result}.0").read_text() == "True"
    assert Path(f"{result}.1").read_text() == "False"
