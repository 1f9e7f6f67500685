"""The ``d2lightning`` command after kills and damage, and with two runs on one OUTPUT_DIR (subprocesses).

* A kill during the first checkpoint write (no ``last_checkpoint`` yet) or a later one: the next start leaves no
  temporary file, takes over the killed run's lock, and resumes from the last complete checkpoint.
* A damaged newest checkpoint (random bytes, flipped bytes, not a zip) or a garbage ``last_checkpoint``: the
  resume falls back to the newest readable checkpoint with a warning naming both files.
* Two trainings on one OUTPUT_DIR: the second is refused in one line before it writes anything there (even a
  ``--resume`` started while the first is in the middle of a save); the first finishes unharmed.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from d2lightning.utils.run_lock import LOCK_FILE
from tests.helpers.checkpoint import flip_bytes, plain_text, random_bytes
from tests.helpers.cli import (
    assert_same_tensors,
    error_line,
    run_cli,
    start_cli,
    tiny_args,
    wait_for_file,
    weights,
)


def _temp_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp"))


def _kill_during_save(tmp_path: Path, out: Path, name: str) -> int:
    """Start a 6-iteration run that stalls before renaming ``name``; SIGKILL it there; return its pid."""
    proc = start_cli(tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "6"), D2L_TEST_STALL_SAVE=name)
    wait_for_file(out / "stalled", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (out / "stalled").unlink()
    return proc.pid


@pytest.mark.slow
def test_kill_during_the_first_checkpoint_write_leaves_nothing_after_the_next_start(tmp_path: Path) -> None:
    out = tmp_path / "out"
    pid = _kill_during_save(tmp_path, out, "model_0000002.pth")
    [temp] = _temp_files(out)
    assert temp.startswith(".model_0000002.pth.")  # the complete file, never renamed
    assert not (out / "last_checkpoint").exists() and (out / LOCK_FILE).exists()

    args = tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "6")
    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # said before the log is set up (the lock is taken before anything is written): on stderr
    assert f"taking over the lock left by a run that is no longer running (pid {pid} on" in resumed.stderr
    assert f"Removed {out / temp}, left by an interrupted save" in resumed.stdout
    assert f"No checkpoint found in {out}: training starts at iteration 0" in resumed.stdout
    assert _temp_files(out) == []
    assert not (out / LOCK_FILE).exists()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_kill_during_a_later_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path) -> None:
    out, reference = tmp_path / "out", tmp_path / "reference"
    _kill_during_save(tmp_path, out, "model_0000005.pth")
    assert [t.split(".pth.")[0] for t in _temp_files(out)] == [".model_0000005"]
    assert (out / "last_checkpoint").read_text() == "model_0000002.pth"

    args = tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "6")
    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Starting training from iteration 3" in resumed.stdout
    assert _temp_files(out) == []
    uninterrupted = run_cli(tiny_args(tmp_path, reference, "SOLVER.MAX_ITER", "6"))
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    assert_same_tensors(weights(out / "model_final.pth"), weights(reference / "model_final.pth"))


@pytest.fixture(scope="module")
def six_iterations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished 6-iteration run: model_0000002.pth, model_0000005.pth, model_final.pth (iteration 5)."""
    base = tmp_path_factory.mktemp("six")
    result = run_cli(tiny_args(base, base / "out", "SOLVER.MAX_ITER", "6"))
    assert result.returncode == 0, result.stderr[-3000:]
    return base, base / "out"


def _garbage_last_checkpoint(out: Path) -> None:
    random_bytes(out / "last_checkpoint")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda out: random_bytes(out / "model_final.pth"), "it is not a PyTorch file"),
        (lambda out: flip_bytes(out / "model_final.pth"), "does not match the CRC-32 checksum saved with it"),
        (lambda out: plain_text(out / "model_final.pth"), "neither a zip archive nor torch's legacy format"),
        (_garbage_last_checkpoint, None),
    ],
    ids=["random-bytes", "flipped-bytes", "not-a-zip", "garbage-last_checkpoint"],
)
def test_damaged_newest_checkpoint_falls_back_with_a_warning_naming_both_files(
    tmp_path: Path, six_iterations: tuple[Path, Path], damage: Callable[[Path], None], reason: str | None
) -> None:
    base, trained = six_iterations
    out = tmp_path / "out"
    shutil.copytree(trained, out)  # keeps the modification times: the write order
    damage(out)
    args = tiny_args(base, out, "SOLVER.MAX_ITER", "8")
    resumed = run_cli([args[0], "--resume", *args[1:]])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stdout + resumed.stderr
    pointer, final, previous = out / "last_checkpoint", out / "model_final.pth", out / "model_0000005.pth"
    if reason is None:  # last_checkpoint unreadable: the newest file is model_final.pth itself
        assert f"Cannot use {pointer}: it is not text (damaged)" in resumed.stdout
        assert f"Resuming from {final} instead of {pointer} (it is not text (damaged))" in resumed.stdout
    else:
        assert f"Cannot resume from {final}: Checkpoint {final} is truncated or corrupt: " in resumed.stdout
        assert reason in resumed.stdout
        assert f"Resuming from {previous} instead of {final} (named by {pointer}, unreadable)" in resumed.stdout
        assert "weights_only" not in resumed.stdout
    assert "Starting training from iteration 6" in resumed.stdout
    assert (out / "last_checkpoint").read_text() == "model_final.pth"


@pytest.mark.slow
def test_a_second_run_is_refused_and_the_first_finishes_unharmed(tmp_path: Path) -> None:
    """The second run even is a --resume started while the first is inside a checkpoint write."""
    out, reference = tmp_path / "out", tmp_path / "reference"
    args = tiny_args(tmp_path, out, "SOLVER.MAX_ITER", "6")
    first = start_cli(args, D2L_TEST_STALL_SAVE="model_0000002.pth")
    wait_for_file(out / "stalled", first)
    config, log = (out / "config.yaml").read_text(), (out / "log.txt").read_text()
    [temp] = _temp_files(out)

    second = run_cli([args[0], "--resume", *args[1:]])
    message = error_line(second)
    assert message.startswith(f"OUTPUT_DIR '{out}' is in use by another training run (pid {first.pid} on ")
    assert message.endswith("; wait for it to end, stop it, or train into another OUTPUT_DIR")
    assert second.stdout == ""  # refused before it set anything up
    assert _temp_files(out) == [temp]  # the first run's save in progress is untouched
    assert (out / "config.yaml").read_text() == config and (out / "log.txt").read_text() == log

    (out / "go").touch()
    _, err_text = first.communicate(timeout=300)
    assert first.returncode == 0, err_text[-3000:]
    assert (out / "log.txt").read_text().count("Command line arguments:") == 1
    assert _temp_files(out) == [] and not (out / LOCK_FILE).exists()
    uninterrupted = run_cli(tiny_args(tmp_path, reference, "SOLVER.MAX_ITER", "6"))
    assert uninterrupted.returncode == 0
    assert (out / "metrics.json").read_text().count("\n") == (reference / "metrics.json").read_text().count("\n")
    assert_same_tensors(weights(out / "model_final.pth"), weights(reference / "model_final.pth"))
