"""Training on 2 CPU processes (gloo): DefaultTrainer under ``launch``, ``d2lightning train --num-gpus 2``, torchrun.

Every rank builds the trainer and takes part in every evaluation; only rank 0 writes checkpoints and
metrics. The CLI spawning its own workers and torchrun's workers train identically.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from d2lightning.engine import launch
from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS, free_port, read_results, without_launcher_variables
from tests.jobs.default_trainer_job import DEMO, OVERRIDES, train_demo

RUN_FILES = [
    "config.yaml",
    "inference",
    "last_checkpoint",
    "log.txt",
    "log.txt.rank1",
    "metrics.json",
    "model_0000004.pth",
    "model_0000009.pth",
    "model_final.pth",
]


@pytest.mark.slow
def test_default_trainer_on_two_launched_processes(tmp_path: Path) -> None:
    with without_launcher_variables():
        launch(train_demo, 2, dist_url=f"tcp://127.0.0.1:{free_port()}", args=(str(tmp_path),))
    r0, r1 = read_results(tmp_path, 2)
    assert (r0["world_size"], r0["iter"], r1["iter"]) == (2, 10, 10)
    assert (r0["evaluations"], r1["evaluations"]) == (2, 2)  # after iteration 4 and after training, on both ranks
    assert r0["weight_sum"] == r1["weight_sum"]  # DDP kept the replicas identical
    assert set(r0["results"]["bbox"]) >= {"AP", "AP50", "AP75"}
    assert r1["results"] == {}  # the evaluator returns its results on the main process only
    assert r0["files"] == RUN_FILES and r1["files"] == []
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.json").read_text().splitlines()]
    # written once, no duplicated line; the evaluation of iteration 4 is written with the training scalars at 9
    assert [m["iteration"] for m in metrics] == [9, 4, 10]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _cli_run(out: Path, launcher: list[str]) -> list[dict[str, float]]:
    cmd = [*launcher, "-m", "d2lightning", "train", "--config-file", DEMO, "--num-gpus", "2", *OVERRIDES]
    proc = subprocess.run([*cmd, "OUTPUT_DIR", str(out)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Final evaluation results (box AP, percent)" in proc.stdout
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("events.out")) == RUN_FILES
    log0, log1 = (out / "log.txt").read_text(), (out / "log.txt.rank1").read_text()
    assert log0.count("Saving checkpoint to") == 3 and "Saving checkpoint" not in log1
    assert log0.count("Start inference on 100 batches") == log1.count("Start inference on 100 batches") == 2
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


@pytest.mark.slow
def test_cli_with_two_cpu_processes_and_torchrun_train_identically(tmp_path: Path) -> None:
    spawned = _cli_run(tmp_path / "cli", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    joined = _cli_run(tmp_path / "torchrun", [*torchrun, "--master-port", str(free_port())])
    assert [m["iteration"] for m in spawned] == [m["iteration"] for m in joined] == [9, 4, 10]
    timing = {"data_time", "eta_seconds", "rank_data_time", "time"}
    for a, b in zip(spawned, joined, strict=True):
        assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
