"""Crash-safe file writes for checkpoints (no detectron2 counterpart: fvcore writes in place).

Every file is written to a hidden temporary file in the destination directory, flushed and fsynced, then
renamed over the destination with ``os.replace`` (atomic on POSIX and Windows), and the directory is fsynced
so the rename itself survives a power loss. A process killed at any moment therefore leaves either the old
file or the complete new one, never a truncated file under the final name. :func:`atomic_save` also seals the
file with its CRC-32 (:mod:`.integrity`).

A killed writer can leave its temporary file (``.<name>.<random>.tmp``) behind; nothing reads those, and
:func:`remove_stale_temp_files` deletes them. A writer holds an exclusive ``flock`` on its temporary file
while it writes, and the cleanup skips every temporary file that is locked, so it never deletes the file of a
save in progress in another process (where the file system supports ``flock``).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
from typing import IO, Any, cast

import torch

from d2lightning.checkpoint.integrity import SealingWriter

try:
    import fcntl
except ImportError:  # Windows: an open file cannot be deleted there anyway
    fcntl = None  # type: ignore[assignment]

__all__ = ["atomic_save", "atomic_write", "atomic_write_text", "remove_stale_temp_files"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp$")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary binary file, then atomically move it to ``path``.

    Args:
        path: the destination file; its directory must exist.
        write: writes the whole content into the open file it is given.

    Raises:
        Whatever ``write`` or the file system raises; the temporary file is removed then and ``path`` is
        left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            _lock(f.fileno(), blocking=True)  # released when the file is closed
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise
    _fsync_dir(directory)


def atomic_save(obj: Any, path: str | os.PathLike[str], *, checksum: bool = True) -> None:
    """``torch.save(obj, path)``, atomically (see :func:`atomic_write`).

    Args:
        obj: what to save.
        path: the destination file.
        checksum: seal the file with the CRC-32 of its content (:class:`.integrity.SealingWriter`), which
            loading verifies; ``torch.load`` reads the file either way.
    """

    def write(f: IO[bytes]) -> None:
        if not checksum:
            torch.save(obj, f)
            return
        sealing = SealingWriter(f)
        torch.save(obj, cast(IO[bytes], sealing))
        sealing.seal()

    atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, atomically (see :func:`atomic_write`)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


def remove_stale_temp_files(directory: str | os.PathLike[str], accept: Callable[[str], bool]) -> list[str]:
    """Delete the temporary files killed writers left in ``directory``; return their paths.

    A temporary file that a live writer holds locked is left alone (see the module docstring).

    Args:
        directory: the directory to clean.
        accept: called with the destination name of each temporary file (``model_0000009.pth``); only those
            it accepts are deleted.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    removed = []
    for entry in sorted(os.listdir(directory)):
        match = _TEMP.match(entry)
        if match is None or not accept(match.group("name")):
            continue
        path = os.path.join(directory, entry)
        if _remove_unless_locked(path):
            removed.append(path)
    return removed


def _lock(fd: int, *, blocking: bool) -> bool:
    """``flock`` ``fd`` exclusively; False when another process holds it (non-blocking only).

    Where locks are not supported (no ``fcntl``, or a file system without ``flock``), report success.
    """
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, EOPNOTSUPP...: no locking on this file system
        return True
    return True


def _remove_unless_locked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile (another process cleaning up), or not ours to read
        return False
    try:
        if not _lock(fd, blocking=False):
            return False  # a save in progress
        os.remove(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
