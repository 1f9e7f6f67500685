"""d2lightning.slurm.scontrol and lightning_setup: job ids, requeue, "is Slurm requeueing us?", Trainer wiring.

``scontrol`` is a fake (``D2L_SCONTROL``) that records its arguments and prints what the test asks, in the
one-line format of ``scontrol show job -o`` as Slurm 22.05 prints it (fields observed on the local cluster).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

from d2lightning.slurm.lightning_setup import preemption_enabled, termination_hook
from d2lightning.slurm.preemption import SlurmPreemption
from d2lightning.slurm.scontrol import requeue_job, requeue_pending, scontrol_executable, slurm_job_id


@pytest.fixture
def fake_scontrol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """``make(stdout, exit_code)`` installs a fake scontrol; returns the file its calls are logged to."""

    def make(stdout: str = "", exit_code: int = 0) -> Path:
        log = tmp_path / "calls"
        script = tmp_path / "scontrol"
        script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{stdout}"\nexit {exit_code}\n')
        script.chmod(0o755)
        monkeypatch.setenv("D2L_SCONTROL", str(script))
        return log

    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    return make


@pytest.mark.parametrize(
    ("environ", "job_id"),
    [
        ({}, None),
        ({"SLURM_JOB_ID": "1234"}, "1234"),
        ({"SLURM_JOB_ID": "1240", "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "6"}, "1234_6"),
    ],
)
def test_slurm_job_id_is_array_aware(environ: dict[str, str], job_id: str | None) -> None:
    assert slurm_job_id(environ) == job_id


def test_slurm_job_id_rejects_garbage() -> None:
    with pytest.raises(ValueError, match=r"'12; rm' .* is not '<digits>\[_<digits>\]'"):
        slurm_job_id({"SLURM_JOB_ID": "12; rm"})


def test_scontrol_executable() -> None:
    assert scontrol_executable({}) == "scontrol"
    assert scontrol_executable({"D2L_SCONTROL": "/opt/fake"}) == "/opt/fake"


def test_requeue_job_runs_scontrol_requeue(fake_scontrol) -> None:  # type: ignore[no-untyped-def]
    calls = fake_scontrol()
    assert requeue_job("1234_6") is True
    assert calls.read_text() == "requeue 1234_6\n"


def test_failed_requeue_is_logged_not_raised(fake_scontrol, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    fake_scontrol("slurm_requeue error: Requested operation is presently disabled", exit_code=1)
    with caplog.at_level(logging.ERROR, logger="d2lightning.slurm.scontrol"):
        assert requeue_job("1234") is False
    assert "Requeueing Slurm job 1234 failed" in caplog.text
    assert "exited with 1: slurm_requeue error: Requested operation is presently disabled" in caplog.text


_RUNNING = "JobId=36 JobName=wrap JobState=RUNNING Reason=None Requeue=1 Restarts=0 PreemptTime=None"
_REQUEUED = "JobId=36 JobName=wrap JobState=COMPLETING Reason=None Requeue=1 Restarts=1 PreemptTime=None"
_PREEMPTED = "JobId=34 JobName=wrap JobState=RUNNING Reason=None Requeue=1 Restarts=0 PreemptTime=2026-11-23T21:49:05"
_NOT_REQUEUEABLE = _PREEMPTED.replace("Requeue=1", "Requeue=0")


@pytest.mark.parametrize(
    ("stdout", "restart_count", "pending"),
    [
        (_RUNNING, None, False),  # scancel, or the time limit
        (_REQUEUED, None, True),  # scontrol requeue: Restarts went up before the SIGTERM
        (_REQUEUED, "1", False),  # the second run of a job requeued once
        (_PREEMPTED, None, True),  # PreemptMode=REQUEUE, in its GraceTime
        (_NOT_REQUEUEABLE, None, False),
    ],
)
def test_requeue_pending(fake_scontrol, stdout: str, restart_count: str | None, pending: bool) -> None:  # type: ignore[no-untyped-def]
    calls = fake_scontrol(stdout)
    environ = {} if restart_count is None else {"SLURM_RESTART_COUNT": restart_count}
    assert requeue_pending("36", environ) is pending
    assert calls.read_text() == "show job -o 36\n"


@pytest.mark.parametrize(("stdout", "exit_code"), [("slurm_load_jobs error: Invalid job id specified", 1), ("", 0)])
def test_requeue_pending_assumes_yes_when_slurm_cannot_answer(fake_scontrol, stdout: str, exit_code: int) -> None:  # type: ignore[no-untyped-def]
    fake_scontrol(stdout, exit_code)
    assert requeue_pending("36", {}) is True


def test_requeue_pending_without_scontrol(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("D2L_SCONTROL", str(tmp_path / "missing"))
    assert requeue_pending("36", {}) is True


# ---- what TrainerBase.train adds to its Lightning Trainer -------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"SLURM_JOB_ID": "7"}, True),
        ({"SLURM_JOB_ID": "7", "D2L_SLURM_PREEMPTION": "0"}, False),
        ({"SLURM_JOB_ID": "7", "D2L_SLURM_PREEMPTION": "Off"}, False),
        ({"SLURM_JOB_ID": "7", "D2L_SLURM_PREEMPTION": "1"}, True),
    ],
)
def test_preemption_enabled(environ: dict[str, str], enabled: bool) -> None:
    assert preemption_enabled(environ) is enabled


@pytest.mark.parametrize(
    ("environ", "hook"),
    [
        ({}, "SigtermCheckpoint"),
        ({"SLURM_JOB_ID": "7"}, "SlurmPreemption"),
        ({"SLURM_JOB_ID": "7", "D2L_SLURM_PREEMPTION": "0"}, None),
    ],
)
def test_the_termination_hook_depends_on_where_the_run_is(environ: dict[str, str], hook: str | None) -> None:
    got = termination_hook(environ)
    assert (type(got).__name__ if got is not None else None) == hook
    if isinstance(got, SlurmPreemption):
        assert got.check_period == 20


def test_a_given_cluster_environment_is_kept_inside_slurm(monkeypatch: pytest.MonkeyPatch, fake_scontrol) -> None:  # type: ignore[no-untyped-def]
    import torch

    from d2lightning.engine import SimpleTrainer
    from tests.jobs.preemption_job import Regressor, Stream

    for key, value in {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(key, value)
    environment = LightningEnvironment()
    model = Regressor()
    trainer = SimpleTrainer(model, Stream(0), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.lightning_kwargs = {"plugins": [environment]}
    trainer.train(0, 1)
    assert trainer.pl_trainer._accelerator_connector.cluster_environment is environment


def test_trainer_of_a_slurm_step_uses_slurm_environment_without_auto_requeue(
    monkeypatch: pytest.MonkeyPatch, fake_scontrol
) -> None:  # type: ignore[no-untyped-def]
    import torch

    from d2lightning.engine import SimpleTrainer
    from tests.jobs.preemption_job import Regressor, Stream

    for key, value in {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train"}.items():
        monkeypatch.setenv(key, value)
    model = Regressor()
    trainer = SimpleTrainer(model, Stream(0), torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.train(0, 2)
    environment = trainer.pl_trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False
