"""SIGTERM outside Slurm: stop at an iteration boundary, write a checkpoint, exit 143 with a one-line resume hint;
and, where the ``d2lightning`` command turns it on, the same for a first Ctrl-C (exit 130), a second one aborting.

In this process (``SigtermCheckpoint`` on a ``SimpleTrainer``, the signal raised from a hook), and through the
``d2lightning`` command in subprocesses: one process (the signal raised inside the run, or sent by the test while a
hook holds the run at an iteration) and two launched processes (SIGTERM sent by the test to the parent, which
passes it on to its workers; SIGINT sent to the whole process group, as a terminal's Ctrl-C is).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from d2lightning.checkpoint import DetectionCheckpointer
from d2lightning.engine import DefaultTrainer, SimpleTrainer, hooks
from d2lightning.engine.recipes.termination import PREEMPTED_CHECKPOINT_FILE, SigtermCheckpoint, TrainingPreempted
from d2lightning.slurm import SlurmPreemption
from d2lightning.slurm.lightning_setup import termination_hook
from d2lightning.utils.run_lock import LOCK_FILE
from tests.helpers.cli import (
    assert_same_tensors,
    demo_args,
    run_cli,
    start_cli,
    tiny_args,
    wait_for_file,
    weights,
)
from tests.helpers.demo import tiny_cfg
from tests.jobs.cli_job import RaiseSignalAt
from tests.jobs.preemption_job import Regressor, Stream


def _run(
    out: Path, max_iter: int, raise_at: int | None, signals: tuple[str, ...] = ("SIGTERM",), sigint: bool = False
) -> SimpleTrainer:
    torch.manual_seed(0)
    model = Regressor()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    trainer = SimpleTrainer(model, Stream(0), optimizer)
    checkpointer = DetectionCheckpointer(model, str(out), optimizer=optimizer, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.PeriodicCheckpointer(checkpointer, 8),
            *(RaiseSignalAt(raise_at, name) for name in signals if raise_at is not None),
            SigtermCheckpoint(sigint=sigint),
        ]
    )
    checkpointer.resume_or_load("", resume=True)
    trainer.train(trainer.iter + 1 if checkpointer.has_checkpoint() else 0, max_iter)
    return trainer


def _checkpoint_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.suffix == ".pth" or p.name.endswith("checkpoint"))


def test_sigterm_checkpoints_and_exits_143_and_the_resumed_run_is_exact(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingPreempted) as stop:
        _run(tmp_path / "run", 20, raise_at=5)  # stops right after iteration 5: one process checks every iteration
    assert stop.value.code == 143
    assert stop.value.message == (
        f"Training stopped by SIGTERM after iteration 5; checkpoint {tmp_path / 'run' / 'model_0000005.pth'} saved. "
        "To continue, run the same command with --resume."
    )
    assert signal.getsignal(signal.SIGTERM) == before  # Lightning put the previous handler back
    assert _checkpoint_files(tmp_path / "run") == ["last_checkpoint", "model_0000005.pth", PREEMPTED_CHECKPOINT_FILE]
    assert torch.load(tmp_path / "run" / "model_0000005.pth", weights_only=False)["iteration"] == 5

    resumed = _run(tmp_path / "run", 20, raise_at=None)
    assert (resumed.start_iter, resumed.iter) == (6, 20)
    # the stop checkpoint was temporary: the files are those of an uninterrupted run
    assert _checkpoint_files(tmp_path / "run") == [
        "last_checkpoint",
        "model_0000007.pth",
        "model_0000015.pth",
        "model_final.pth",
    ]
    reference = _run(tmp_path / "reference", 20, raise_at=None)
    assert_same_tensors(resumed.model.state_dict(), reference.model.state_dict())
    a, b = resumed.optimizer.state_dict()["state"], reference.optimizer.state_dict()["state"]
    assert all(torch.equal(a[k]["momentum_buffer"], b[k]["momentum_buffer"]) for k in b)


def test_a_signal_in_the_last_iteration_lets_the_run_finish(tmp_path: Path) -> None:
    trainer = _run(tmp_path / "run", 10, raise_at=9)
    assert trainer.iter == 10
    assert _checkpoint_files(tmp_path / "run") == ["last_checkpoint", "model_0000007.pth", "model_final.pth"]


def test_without_a_checkpointer_it_still_stops_with_143(tmp_path: Path) -> None:
    model = Regressor()
    trainer = SimpleTrainer(model, Stream(0), torch.optim.SGD(model.parameters(), lr=0.05))
    trainer.register_hooks([RaiseSignalAt(2), SigtermCheckpoint()])
    with pytest.raises(TrainingPreempted) as stop:
        trainer.train(0, 10)
    assert stop.value.code == 143
    assert "after iteration 2; nothing saved (no checkpointer)" in stop.value.message


def test_with_sigint_a_first_ctrl_c_checkpoints_and_exits_130(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingPreempted) as stop:
        _run(tmp_path / "run", 20, raise_at=5, signals=("SIGINT",), sigint=True)
    assert stop.value.code == 130
    assert stop.value.message == (
        f"Training stopped by Ctrl-C (SIGINT) after iteration 5; checkpoint {tmp_path / 'run' / 'model_0000005.pth'} "
        "saved. To continue, run the same command with --resume."
    )
    assert signal.getsignal(signal.SIGINT) == before
    assert _checkpoint_files(tmp_path / "run") == ["last_checkpoint", "model_0000005.pth", PREEMPTED_CHECKPOINT_FILE]
    resumed = _run(tmp_path / "run", 20, raise_at=None, sigint=True)
    assert (resumed.start_iter, resumed.iter) == (6, 20)
    reference = _run(tmp_path / "reference", 20, raise_at=None)
    assert_same_tensors(resumed.model.state_dict(), reference.model.state_dict())


def test_with_sigint_a_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run", 20, raise_at=9, signals=("SIGINT", "SIGINT"), sigint=True)
    # the second one came before the iteration boundary: no stop checkpoint, only the periodic one before
    assert _checkpoint_files(tmp_path / "run") == ["last_checkpoint", "model_0000007.pth"]


def test_by_default_ctrl_c_raises_keyboard_interrupt_as_in_detectron2(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "run", 20, raise_at=9, signals=("SIGINT",))
    assert _checkpoint_files(tmp_path / "run") == ["last_checkpoint", "model_0000007.pth"]


def test_sigterm_and_ctrl_c_together_stop_once_as_ctrl_c(tmp_path: Path) -> None:
    """What the workers of ``--num-gpus N`` see on a terminal's Ctrl-C: the SIGINT, and the launcher's SIGTERM."""
    with pytest.raises(TrainingPreempted) as stop:
        _run(tmp_path / "run", 20, raise_at=5, signals=("SIGINT", "SIGTERM"), sigint=True)
    assert stop.value.code == 130
    assert stop.value.message.startswith("Training stopped by Ctrl-C (SIGINT) after iteration 5; checkpoint ")


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, SigtermCheckpoint),
        ({"SLURM_JOB_ID": "7"}, SlurmPreemption),
        ({"SLURM_JOB_ID": "7", "D2L_SLURM_PREEMPTION": "0"}, type(None)),
    ],
    ids=["plain", "slurm", "slurm-opted-out"],
)
def test_the_signal_hook_depends_on_where_the_run_is(environ: dict[str, str], expected: type) -> None:
    assert type(termination_hook(environ)) is expected


def test_the_command_lines_variable_adds_ctrl_c_to_the_plain_hook() -> None:
    assert termination_hook({}).signals == (signal.SIGTERM,)
    assert termination_hook({"D2L_SIGINT": "checkpoint"}).signals == (signal.SIGTERM, signal.SIGINT)
    assert type(termination_hook({"D2L_SIGINT": "checkpoint", "SLURM_JOB_ID": "7"})) is SlurmPreemption


def test_default_trainer_registers_the_hook_and_runs_without_lightnings_auto_requeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning.fabric.plugins.environments import SLURMEnvironment

    for key in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NAME", "D2L_SLURM_PREEMPTION"):
        monkeypatch.delenv(key, raising=False)
    plain = DefaultTrainer(tiny_cfg(tmp_path / "plain"))
    assert isinstance(plain._hooks[-1], SigtermCheckpoint)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    in_slurm = DefaultTrainer(tiny_cfg(tmp_path / "slurm", "SOLVER.MAX_ITER", "1"))
    assert isinstance(in_slurm._hooks[-1], SlurmPreemption)
    in_slurm.train()
    environment = in_slurm.pl_trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and environment.auto_requeue is False


# ---- the d2lightning command, in subprocesses ---------------------------------------------------------------------


def test_cli_sigterm_exits_143_with_one_line_and_resumes_exactly(tmp_path: Path) -> None:
    run, reference = tmp_path / "run", tmp_path / "reference"
    signal_at_3 = ["LIGHTNING.CALLBACKS", "[{class_path: tests.jobs.cli_job.RaiseSignalAt, init_args: {at: 3}}]"]
    args = tiny_args(tmp_path, run, "SOLVER.MAX_ITER", "8", *signal_at_3)
    stopped = run_cli(args)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    hint = (
        f"Training stopped by SIGTERM after iteration 3; checkpoint {run / 'model_0000003.pth'} saved. To continue, "
        "run the same command with --resume."
    )
    assert stopped.stderr.splitlines()[-1] == f"d2lightning train: {hint}"
    assert "Traceback" not in stopped.stderr + stopped.stdout
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == ["model_0000002.pth", "model_0000003.pth"]
    assert not (run / LOCK_FILE).exists()  # released on the way out

    resumed = run_cli([args[0], "--resume", *args[1:]])  # "the same command with --resume"
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 4" in resumed.stdout
    uninterrupted = run_cli(tiny_args(tmp_path, reference, "SOLVER.MAX_ITER", "8"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    names = sorted(p.name for p in run.iterdir() if p.name != "log.txt" and not p.name.startswith("events."))
    assert names == sorted(
        p.name for p in reference.iterdir() if p.name != "log.txt" and not p.name.startswith("events.")
    )
    for name in ("model_0000005.pth", "model_final.pth"):
        assert_same_tensors(weights(run / name), weights(reference / name))
    ours, theirs = (
        torch.load(d / "model_final.pth", weights_only=False)["trainer"]["_trainer"]["optimizer"]["state"]
        for d in (run, reference)
    )
    assert all(torch.equal(ours[k]["momentum_buffer"], theirs[k]["momentum_buffer"]) for k in theirs)


def _pause_at(at: int, run: Path) -> list[str]:
    return [
        "LIGHTNING.CALLBACKS",
        f"[{{class_path: tests.jobs.cli_job.PauseAt, init_args: {{at: {at}, directory: {run}}}}}]",
    ]


def test_cli_first_ctrl_c_checkpoints_exits_130_and_resume_continues_from_it(tmp_path: Path) -> None:
    run, reference = tmp_path / "run", tmp_path / "reference"
    args = tiny_args(tmp_path, run, "SOLVER.MAX_ITER", "8", *_pause_at(3, run))
    proc = start_cli(args)
    wait_for_file(run / "paused", proc)  # the run is inside iteration 3's after_step
    proc.send_signal(signal.SIGINT)
    (run / "go").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == (
        f"d2lightning train: Training stopped by Ctrl-C (SIGINT) after iteration 3; checkpoint "
        f"{run / 'model_0000003.pth'} saved. To continue, run the same command with --resume."
    )
    assert "Traceback" not in out + err
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == ["model_0000002.pth", "model_0000003.pth"]
    assert torch.load(run / "model_0000003.pth", weights_only=False)["iteration"] == 3
    assert not (run / LOCK_FILE).exists()

    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 4" in resumed.stdout
    uninterrupted = run_cli(tiny_args(tmp_path, reference, "SOLVER.MAX_ITER", "8"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert_same_tensors(weights(run / "model_final.pth"), weights(reference / "model_final.pth"))
    assert not (run / "model_0000003.pth").exists()  # superseded: the files of an uninterrupted run


def test_cli_second_ctrl_c_aborts_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = start_cli(tiny_args(tmp_path, run, "SOLVER.MAX_ITER", "8", *_pause_at(3, run)))
    wait_for_file(run / "paused", proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)  # two signals sent at once may reach the process as one
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)  # the hook would hold the run for two minutes without "go"
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == (
        "d2lightning train: aborted by Ctrl-C, without a checkpoint of the iterations since the last one (a first "
        "Ctrl-C during training stops with a checkpoint); to continue from the last checkpoint, run the same "
        "command with --resume"
    )
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == ["model_0000002.pth"]
    assert not (run / LOCK_FILE).exists()


@pytest.mark.slow
def test_cli_ctrl_c_in_a_terminal_stops_both_workers_with_a_checkpoint(tmp_path: Path) -> None:
    """Two processes: Ctrl-C reaches the launcher and its workers (the process group); one stop, at iteration 19."""
    run = tmp_path / "run"
    args = demo_args(run, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", *_pause_at(5, run))
    args = [args[0], "--num-gpus", "2", "--dist-url", "auto", *args[1:]]
    proc = start_cli(args, new_session=True)
    wait_for_file(run / "paused", proc)
    os.killpg(proc.pid, signal.SIGINT)
    (run / "go").touch()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-3000:]
    assert err.splitlines()[-1] == (
        f"d2lightning train: Training stopped by Ctrl-C (SIGINT) after iteration 19; checkpoint "
        f"{run / 'model_0000019.pth'} saved. To continue, run the same command with --resume."
    )
    assert "Traceback" not in out + err
    assert (run / "last_checkpoint").read_text() == "model_0000019.pth"
    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 20" in resumed.stdout


@pytest.mark.slow
def test_cli_sigterm_to_the_launcher_stops_both_workers_with_a_checkpoint(tmp_path: Path) -> None:
    """Two processes on one machine: the parent passes SIGTERM on; ranks agree at the next check (iteration 19)."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    pause = [
        "LIGHTNING.CALLBACKS",
        f"[{{class_path: tests.jobs.cli_job.PauseAt, init_args: {{at: 5, directory: {run}}}}}]",
    ]
    args = demo_args(run, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", *pause)
    args = [args[0], "--num-gpus", "2", "--dist-url", "auto", *args[1:]]
    proc = start_cli(args)
    wait_for_file(run / "paused", proc)
    proc.send_signal(signal.SIGTERM)  # to the launching process only
    (run / "go").touch()
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err[-3000:]
    assert err.splitlines()[-1] == (
        f"d2lightning train: Training stopped by SIGTERM after iteration 19; checkpoint {run / 'model_0000019.pth'} "
        "saved. To continue, run the same command with --resume."
    )
    assert "Traceback" not in out + err
    assert (run / "last_checkpoint").read_text() == "model_0000019.pth"
    assert "Training stopped by SIGTERM after iteration 19" in (run / "log.txt.rank1").read_text()

    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    plain = demo_args(reference, "SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10")
    uninterrupted = run_cli([plain[0], "--num-gpus", "2", "--dist-url", "auto", *plain[1:]])
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert_same_tensors(weights(run / "model_final.pth"), weights(reference / "model_final.pth"))
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == [
        "model_0000009.pth",
        "model_0000019.pth",
        "model_0000029.pth",
        "model_final.pth",
    ]
