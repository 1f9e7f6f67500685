"""d2lightning.utils.run_lock: one training run per output directory, across processes; stale locks taken over."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from d2lightning.checkpoint.atomic import remove_stale_temp_files
from d2lightning.utils import run_lock
from d2lightning.utils.run_lock import LOCK_FILE, OutputDirInUseError, OutputDirLock
from tests.helpers.cli import cli_env, wait_for_file

HOLDER = """
import sys, time
from pathlib import Path
from d2lightning.utils.run_lock import OutputDirLock

directory = Path(sys.argv[1])
lock = OutputDirLock(directory)
lock.acquire()
(directory / "held").write_text("yes")
while not (directory / "release").exists():
    time.sleep(0.02)
lock.release()
"""


def _start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(directory)],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_file(directory / "held", proc)
    return proc


def _holder_info(directory: Path) -> dict:
    return json.loads((directory / LOCK_FILE).read_text())


def test_a_second_process_is_refused_with_the_holders_identity(tmp_path: Path) -> None:
    holder = _start_holder(tmp_path)
    try:
        info = _holder_info(tmp_path)
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        assert "-c" in info["command"] and info["started"]
        with pytest.raises(OutputDirInUseError) as refused:
            OutputDirLock(tmp_path).acquire()
        assert str(refused.value) == (
            f"OUTPUT_DIR '{tmp_path}' is in use by another training run (pid {holder.pid} on {info['host']}, "
            f"started {info['started']}: {info['command']}); wait for it to end, stop it, or train into another "
            "OUTPUT_DIR"
        )
        assert _holder_info(tmp_path) == info  # a refused claim changes nothing
    finally:
        (tmp_path / "release").touch()
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert not (tmp_path / LOCK_FILE).exists()  # released: the lock file is gone
    with OutputDirLock(tmp_path):
        assert _holder_info(tmp_path)["pid"] == os.getpid()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    holder = _start_holder(tmp_path)
    info = _holder_info(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=60)
    assert (tmp_path / LOCK_FILE).exists()  # left behind by the killed run
    lock = OutputDirLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="d2lightning.utils.run_lock"):
        lock.acquire()
    assert caplog.messages == [
        f"OUTPUT_DIR '{tmp_path}': taking over the lock left by a run that is no longer running (pid {holder.pid} "
        f"on {info['host']}, started {info['started']}: {info['command']})"
    ]
    assert _holder_info(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_claims_within_one_process_share_the_lock(tmp_path: Path) -> None:
    first, second = OutputDirLock(tmp_path), OutputDirLock(tmp_path / "." / "")
    first.acquire()
    second.acquire()  # the same directory, claimed again by this process: no refusal
    first.acquire()  # idempotent per object
    first.release()
    assert (tmp_path / LOCK_FILE).exists() and second.held and not first.held
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from d2lightning.utils.run_lock import OutputDirLock; OutputDirLock({str(tmp_path)!r}).acquire()",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 1 and "OutputDirInUseError" in other.stderr  # still held by `second`
    del second  # collected: released
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.fixture
def without_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system where flock is not supported: the exclusive-create fallback."""
    monkeypatch.setattr(run_lock, "_try_flock", lambda fd: None)


def _write_lock_file(directory: Path, pid: int, host: str) -> None:
    info = {"pid": pid, "host": host, "started": "2025-01-01T00:00:00+00:00", "command": "d2lightning train"}
    (directory / LOCK_FILE).write_text(json.dumps(info))


@pytest.mark.usefixtures("without_flock")
def test_without_flock_a_live_local_run_is_refused(tmp_path: Path) -> None:
    _write_lock_file(tmp_path, os.getppid(), socket.gethostname())
    with pytest.raises(OutputDirInUseError, match=f"in use by another training run \\(pid {os.getppid()} on"):
        OutputDirLock(tmp_path).acquire()


@pytest.mark.usefixtures("without_flock")
def test_without_flock_a_dead_local_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    _write_lock_file(tmp_path, dead, socket.gethostname())
    lock = OutputDirLock(tmp_path)
    with caplog.at_level(logging.WARNING, logger="d2lightning.utils.run_lock"):
        lock.acquire()
    assert f"taking over the lock left by a run that is no longer running (pid {dead} on" in caplog.text
    assert _holder_info(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()


@pytest.mark.usefixtures("without_flock")
def test_without_flock_another_hosts_run_is_refused_with_the_file_to_delete(tmp_path: Path) -> None:
    _write_lock_file(tmp_path, 12345, "some-other-host")
    with pytest.raises(OutputDirInUseError) as refused:
        OutputDirLock(tmp_path).acquire()
    assert str(refused.value).endswith(
        "; wait for it to end, stop it, or train into another OUTPUT_DIR (if that run has ended, delete "
        f"{tmp_path / LOCK_FILE})"
    )


def test_cleanup_skips_the_temporary_file_of_a_save_in_progress(tmp_path: Path) -> None:
    """A writer holds its temporary file locked; a cleanup running meanwhile must leave it alone."""
    live = tmp_path / ".model_0000009.pth.k2j3x9a.tmp"
    live.write_bytes(b"being written")
    with open(live, "rb") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        assert remove_stale_temp_files(tmp_path, lambda name: True) == []
        assert live.exists()
    assert remove_stale_temp_files(tmp_path, lambda name: True) == [str(live)]  # its writer is gone
    assert not live.exists()
