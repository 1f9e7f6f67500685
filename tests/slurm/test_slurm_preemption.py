"""d2lightning.slurm.preemption without a cluster: real training processes get real signals from the test.

``tests/jobs/preemption_job.py`` (SimpleTrainer, checkpoints every 8 iterations, metrics.json every 20) runs as a
"Slurm job" (``SLURM_JOB_ID`` set) with ``D2L_SCONTROL`` pointing to a fake ``scontrol`` that records its
arguments. The job pauses after iteration 5 until the test has sent its signal; the preemption check then
comes after iteration 19. An uninterrupted 50-iteration run writes model_0000007/15/23/31/39/47.pth,
model_final.pth and metrics.json lines for iterations 19, 39 and 49.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import SimpleTrainer, hooks
from d2lightning.slurm import SlurmPreemption, TrainingPreempted
from tests.helpers import REPO
from tests.helpers.distributed import LAUNCHER_VARS
from tests.jobs.cli_job import RaiseSignalAt
from tests.jobs.preemption_job import Regressor, Stream

JOB = REPO / "tests" / "jobs" / "preemption_job.py"
UNINTERRUPTED_FILES = [
    "last_checkpoint",
    "log.txt",
    "metrics.json",
    "model_0000007.pth",
    "model_0000015.pth",
    "model_0000023.pth",
    "model_0000031.pth",
    "model_0000039.pth",
    "model_0000047.pth",
    "model_final.pth",
]
FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "{log}"
if [ "$1" = show ]; then echo "{show}"; fi
"""
RUNNING = "JobId=424242 JobName=train JobState=RUNNING Reason=None Requeue=1 Restarts=0 PreemptTime=None"
REQUEUEING = "JobId=424242 JobName=train JobState=COMPLETING Reason=None Requeue=1 Restarts=1 PreemptTime=None"


def _env(tmp_path: Path, show: str = RUNNING, **extra: str) -> dict[str, str]:
    scontrol = tmp_path / "scontrol"
    scontrol.write_text(FAKE_SCONTROL.format(log=tmp_path / "scontrol.log", show=show))
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(REPO), SLURM_JOB_ID="424242", D2L_SCONTROL=str(scontrol), **extra)
    return env


def _train(out: Path, env: dict[str, str] | None, signum: int | None = None) -> int:
    """Run the job to its end; with ``signum``, pause after iteration 5 and send that signal to rank 0."""
    cmd = [sys.executable, str(JOB), str(out), "50"] + (["5"] if signum is not None else [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if signum is not None:
        paused = out / "paused"
        deadline = time.monotonic() + 120
        while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert paused.exists(), proc.communicate()[0][-3000:]
        os.kill(int(paused.read_text()), signum)
        (out / "go").touch()
    output = proc.communicate(timeout=300)[0]
    if signum is not None:
        (out / "paused").unlink()
        (out / "go").unlink()
    assert proc.returncode in (0, 128 + signal.SIGTERM), output[-3000:]
    return proc.returncode


def _files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def _metrics(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]


def _scontrol_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "scontrol.log"
    return log.read_text().splitlines() if log.exists() else []


def test_sigusr1_checkpoints_requeues_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    reference, run = tmp_path / "reference", tmp_path / "run"
    plain = _env(tmp_path)
    del plain["SLURM_JOB_ID"]
    assert _train(reference, plain) == 0
    assert _files(reference) == UNINTERRUPTED_FILES

    assert _train(run, _env(tmp_path), signal.SIGUSR1) == 0
    assert _scontrol_calls(tmp_path) == ["requeue 424242"]
    # the preemption checkpoint of iteration 19 is the latest, and marked as temporary
    assert _files(run) == [
        "last_checkpoint",
        "log.txt",
        "metrics.json",
        "model_0000007.pth",
        "model_0000015.pth",
        "model_0000019.pth",
        "preempted_checkpoint",
    ]
    assert (run / "last_checkpoint").read_text() == "model_0000019.pth"
    assert (run / "preempted_checkpoint").read_text() == "model_0000019.pth"
    assert torch.load(run / "model_0000019.pth", weights_only=False)["iteration"] == 19
    assert [m["iteration"] for m in _metrics(run)] == [19]

    assert _train(run, _env(tmp_path, SLURM_RESTART_COUNT="1")) == 0
    assert _scontrol_calls(tmp_path) == ["requeue 424242"]  # no second requeue
    assert "Starting training from iteration 20" in (run / "log.txt").read_text()
    assert _files(run) == UNINTERRUPTED_FILES
    ours, theirs = _metrics(run), _metrics(reference)
    assert [m["iteration"] for m in ours] == [m["iteration"] for m in theirs] == [19, 39, 49]
    for mine, ref in zip(ours, theirs, strict=True):  # the training itself is bit-identical
        assert {k: mine[k] for k in ("loss_a", "loss_b", "total_loss")} == {
            k: ref[k] for k in ("loss_a", "loss_b", "total_loss")
        }
    final, expected = (torch.load(d / "model_final.pth", weights_only=False)["model"] for d in (run, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_sigterm_while_slurm_requeues_the_job_checkpoints_without_requeueing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, _env(tmp_path, show=REQUEUEING), signal.SIGTERM) == 0
    assert _scontrol_calls(tmp_path) == ["show job -o 424242"]  # asked, and left the requeue to Slurm
    assert (run / "last_checkpoint").read_text() == "model_0000019.pth"
    assert (run / "preempted_checkpoint").read_text() == "model_0000019.pth"


def test_sigterm_of_a_cancelled_job_stops_without_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _train(run, _env(tmp_path, show=RUNNING), signal.SIGTERM) == 128 + signal.SIGTERM
    assert _scontrol_calls(tmp_path) == ["show job -o 424242"]
    assert _files(run) == ["last_checkpoint", "log.txt", "metrics.json", "model_0000007.pth", "model_0000015.pth"]
    assert [m["iteration"] for m in _metrics(run)] == [19]


@pytest.mark.slow
def test_two_ranks_agree_when_only_rank0_gets_the_signal(tmp_path: Path) -> None:
    """Two launched processes; SIGUSR1 goes to rank 0 only, yet both stop after iteration 19, rank 0 saves."""
    run = tmp_path / "run"
    assert _train(run, _env(tmp_path, NPROC="2"), signal.SIGUSR1) == 0
    assert _scontrol_calls(tmp_path) == ["requeue 424242"]  # once, from rank 0
    assert (run / "last_checkpoint").read_text() == "model_0000019.pth"
    for log in ("log.txt", "log.txt.rank1"):
        assert "Training stops after iteration 19 for the requeue" in (run / log).read_text()
    assert (run / "log.txt").read_text().count("Saving checkpoint to") == 3  # 7, 15 and 19, by rank 0 only
    assert "Saving checkpoint" not in (run / "log.txt.rank1").read_text()


# ---- in this process: the hook's decisions and files, signals raised from inside training -----------------


def _in_process_run(out: Path, max_iter: int, raise_at: int | None) -> SimpleTrainer:
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = SimpleTrainer(model, Stream(0), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out), optimizer=optimizer, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.PeriodicCheckpointer(checkpointer, 8),
            RaiseSignalAt(raise_at, signal.SIGUSR1) if raise_at is not None else None,
            SlurmPreemption(check_period=10),
        ]
    )
    checkpointer.resume_or_load("", resume=True)
    trainer.train(trainer.iter + 1 if checkpointer.has_checkpoint() else 0, max_iter)
    return trainer


def _checkpoint_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.suffix == ".pth" or p.name.endswith("checkpoint"))


def test_preempted_twice_then_finished_keeps_only_the_regular_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    with pytest.raises(TrainingPreempted) as stop:
        _in_process_run(out, 30, raise_at=3)
    assert stop.value.code == 0
    assert _checkpoint_files(out) == [
        "last_checkpoint",
        "model_0000007.pth",
        "model_0000009.pth",
        "preempted_checkpoint",
    ]
    with pytest.raises(TrainingPreempted):
        _in_process_run(out, 30, raise_at=12)  # resumes at 10; model_0000015 supersedes model_0000009
    assert _checkpoint_files(out) == [
        "last_checkpoint",
        "model_0000007.pth",
        "model_0000015.pth",
        "model_0000019.pth",
        "preempted_checkpoint",
    ]
    assert (out / "preempted_checkpoint").read_text() == "model_0000019.pth"
    trainer = _in_process_run(out, 30, raise_at=None)
    assert (trainer.start_iter, trainer.iter) == (20, 30)
    assert _checkpoint_files(out) == [
        "last_checkpoint",
        "model_0000007.pth",
        "model_0000015.pth",
        "model_0000023.pth",
        "model_final.pth",
    ]
    assert _scontrol_calls(tmp_path) == ["requeue 424242", "requeue 424242"]
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # Lightning put the previous handler back


def test_preemption_at_a_periodic_checkpoint_keeps_that_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    trainer = SimpleTrainer(model, Stream(0), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out), trainer=trainer)
    trainer.register_hooks(
        [hooks.PeriodicCheckpointer(checkpointer, 5), RaiseSignalAt(2, signal.SIGUSR1), SlurmPreemption(check_period=5)]
    )
    with pytest.raises(TrainingPreempted):
        trainer.train(0, 20)
    assert _checkpoint_files(out) == ["last_checkpoint", "model_0000004.pth"]  # saved again, not temporary


def test_signal_in_the_last_period_lets_the_run_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env(tmp_path).items():
        monkeypatch.setenv(key, value)
    trainer = _in_process_run(tmp_path / "run", 20, raise_at=12)  # next check would be after 19, the last
    assert trainer.iter == 20
    assert _scontrol_calls(tmp_path) == []
    assert _checkpoint_files(tmp_path / "run") == [
        "last_checkpoint",
        "model_0000007.pth",
        "model_0000015.pth",
        "model_final.pth",
    ]


def test_default_trainer_adds_the_hook_only_inside_a_slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from d2lightning.engine import DefaultTrainer
    from tests.helpers.demo import tiny_cfg

    def preemption_hooks(trainer: DefaultTrainer) -> int:
        return sum(isinstance(h, SlurmPreemption) for h in trainer._hooks)

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    assert preemption_hooks(DefaultTrainer(tiny_cfg(tmp_path))) == 0
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    assert preemption_hooks(DefaultTrainer(tiny_cfg(tmp_path))) == 1
    monkeypatch.setenv("D2L_SLURM_PREEMPTION", "0")
    assert preemption_hooks(DefaultTrainer(tiny_cfg(tmp_path))) == 0


def test_a_loop_of_ones_own_inside_a_slurm_job_is_told_to_register_the_hook(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_JOB_ID", "424242")
    plain = SimpleTrainer(Regressor(), Stream(0), torch.optim.SGD(Regressor().parameters(), lr=0.1))
    with caplog.at_level(logging.WARNING, logger="d2lightning"):
        plain.train(0, 2)
    assert "Slurm job 424242" in caplog.text and "register d2lightning.slurm.SlurmPreemption" in caplog.text
    caplog.clear()
    handled = SimpleTrainer(Regressor(), Stream(0), torch.optim.SGD(Regressor().parameters(), lr=0.1))
    handled.register_hooks([SlurmPreemption()])
    with caplog.at_level(logging.WARNING, logger="d2lightning"):
        handled.train(0, 2)
    assert "SlurmPreemption" not in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"check_period": 0}, ValueError, "check_period must be an int >= 1, got 0"),
        ({"check_period": 2.5}, ValueError, "check_period must be an int >= 1, got 2.5"),
        ({"checkpointer": object()}, TypeError, "checkpointer must have a save"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        SlurmPreemption(**kwargs)  # type: ignore[arg-type]
