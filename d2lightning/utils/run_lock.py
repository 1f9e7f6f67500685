"""One training run per output directory: an exclusive lock file naming the run that holds it.

No detectron2 counterpart (two detectron2 trainings on one ``OUTPUT_DIR`` interleave ``metrics.json`` and
overwrite each other's checkpoints without a word). :class:`OutputDirLock` claims a directory by locking
``<dir>/.d2lightning.lock`` with ``flock`` and writing into it who holds it (pid, host, start time, command).
A second claim from another process fails at once with :class:`OutputDirInUseError` naming that run.

* The operating system drops a ``flock`` when its process dies, however it dies: the lock file of a killed
  run is then taken over by the next claim (with a warning naming the run that left it); there is no
  "is that pid still alive?" guess. This also works across machines on network file systems that support
  locks (NFSv4, GPFS, Lustre with ``flock``).
* On a file system without ``flock`` (and on Windows) the file is created exclusively instead; a lock file
  whose run was on this host and is gone is taken over, one from another host is left for the user to delete.
* Within one process, claims of the same directory share one lock (a count): a CLI run and the
  ``DefaultTrainer`` it builds, or a notebook that trains twice, do not lock themselves out.
* Releasing deletes the lock file; locks still held when the interpreter exits are released then.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import weakref
from dataclasses import dataclass
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "OutputDirInUseError", "OutputDirLock"]

logger = logging.getLogger(__name__)

#: The lock file's name inside the claimed directory.
LOCK_FILE = ".d2lightning.lock"
_ATTEMPTS = 20


class OutputDirInUseError(RuntimeError):
    """Another live run holds the output directory."""


@dataclass
class _Holding:
    """This process' lock of one directory."""

    path: str
    fd: int | None  # the flock'ed descriptor, or None when the file was created exclusively
    count: int = 1


_HELD: dict[str, _Holding] = {}  # this process' locks, by real directory path (OS resources, like open files)


class OutputDirLock:
    """An exclusive claim of ``directory`` by this process (see the module docstring).

    Args:
        directory: the directory to claim; created when missing.

    Example::

        with OutputDirLock(cfg.OUTPUT_DIR):
            trainer.train()
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.fspath(directory)
        self._key: str | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the claim."""
        return self._key is not None

    def acquire(self) -> None:
        """Claim the directory; a no-op when this object holds it already.

        Raises:
            OutputDirInUseError: naming the directory and the run (pid, host, start, command) that holds it.
            OSError: when the directory or its lock file cannot be created.
        """
        if self._key is not None:
            return
        os.makedirs(self.directory, exist_ok=True)
        key = os.path.realpath(self.directory)
        holding = _HELD.get(key)
        if holding is not None:
            holding.count += 1
        else:
            _HELD[key] = _claim(self.directory)
        self._key = key
        self._finalizer = weakref.finalize(self, _release, key)  # released when this object is collected

    def release(self) -> None:
        """Give the claim up (the last claim of this process deletes the lock file); a no-op when not held."""
        if self._finalizer is not None:
            self._finalizer()  # runs _release once
        self._key, self._finalizer = None, None

    def __enter__(self) -> OutputDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _release(key: str) -> None:
    holding = _HELD.get(key)
    if holding is None:
        return
    holding.count -= 1
    if holding.count > 0:
        return
    del _HELD[key]
    if holding.fd is None or _is_file_of(holding.fd, holding.path):
        with contextlib.suppress(OSError):
            os.remove(holding.path)  # before unlocking: a waiting claim then finds the inode gone and retries
    if holding.fd is not None:
        os.close(holding.fd)


@atexit.register
def _release_all() -> None:
    for key in list(_HELD):
        _HELD[key].count = 1
        _release(key)


def _claim(directory: str) -> _Holding:
    path = os.path.join(directory, LOCK_FILE)
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        locked = _try_flock(fd)
        if locked is None:  # no flock on this file system
            os.close(fd)
            return _claim_exclusively(directory, path)
        if not locked:
            holder = _read_holder(fd)
            os.close(fd)
            raise OutputDirInUseError(_busy_message(directory, holder, path, same_host_checked=True))
        if not _is_file_of(fd, path):  # released and deleted between our open and our lock: try the new file
            os.close(fd)
            continue
        previous = _read_holder(fd)
        if previous:
            logger.warning(
                f"OUTPUT_DIR {directory!r}: taking over the lock left by a run that is no longer running "
                f"({_describe(previous)})"
            )
        _write_holder(fd)
        return _Holding(path, fd)
    raise OutputDirInUseError(f"OUTPUT_DIR {directory!r}: could not lock {path} (other runs keep claiming it)")


def _claim_exclusively(directory: str, path: str) -> _Holding:
    """The claim without ``flock``: create the lock file exclusively; take over a dead local run's file."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read_holder_of(path)
            if holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid")):
                logger.warning(
                    f"OUTPUT_DIR {directory!r}: taking over the lock left by a run that is no longer running "
                    f"({_describe(holder)})"
                )
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                continue
            raise OutputDirInUseError(_busy_message(directory, holder, path, same_host_checked=False)) from None
        _write_holder(fd)
        os.close(fd)
        return _Holding(path, None)
    raise OutputDirInUseError(f"OUTPUT_DIR {directory!r}: could not create {path} (other runs keep claiming it)")


def _try_flock(fd: int) -> bool | None:
    """True when locked, False when another process holds the lock, None when locks are not supported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP, ENOSYS...
        return None
    return True


def _is_file_of(fd: int, path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except OSError:
        return False


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 65536, 0)
        info = json.loads(raw.decode("utf-8")) if raw else {}
    except (OSError, ValueError):
        return {"unreadable": True}
    return info if isinstance(info, dict) else {"unreadable": True}


def _read_holder_of(path: str) -> dict[str, Any]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return {}
    try:
        return _read_holder(fd)
    finally:
        os.close(fd)


def _describe(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "holder unknown: its lock file is empty or unreadable"
    command = str(holder.get("command", ""))
    if len(command) > 200:
        command = command[:197] + "..."
    return f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}: {command}"


def _busy_message(directory: str, holder: dict[str, Any], path: str, *, same_host_checked: bool) -> str:
    message = (
        f"OUTPUT_DIR {directory!r} is in use by another training run ({_describe(holder)}); wait for it to end, "
        "stop it, or train into another OUTPUT_DIR"
    )
    if not same_host_checked and holder.get("host") != socket.gethostname():
        message += f" (if that run has ended, delete {path})"
    return message


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
