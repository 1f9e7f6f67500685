"""What ``DefaultTrainer`` does about its ``OUTPUT_DIR`` before training: claim it, tidy it, warn before overwriting.

No detectron2 counterpart. :func:`make_output_dir` creates the directory, or raises an error naming the config key
when it cannot be used (a file in its path, no permission). :func:`claim_output_dir` locks the directory for this run
(:class:`~d2lightning.utils.run_lock.OutputDirLock`: a second training there is refused) and, holding the lock,
deletes the temporary files that killed saves left behind — safe then, since no other run writes there.
:func:`warn_before_overwriting` names the files of an earlier run that a fresh run (no ``--resume``) is about to
overwrite.
"""

from __future__ import annotations

import errno
import logging
import os
import re

from d2lightning.checkpoint.atomic import remove_stale_temp_files
from d2lightning.checkpoint.checkpointer import is_checkpoint_file_name
from d2lightning.utils.run_lock import OutputDirLock

__all__ = ["claim_output_dir", "make_output_dir", "warn_before_overwriting"]

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth")


def make_output_dir(output_dir: str, key: str = "OUTPUT_DIR") -> None:
    """Create ``output_dir`` (with its parents) unless it exists, and check that files can be created in it.

    Args:
        output_dir: the directory.
        key: the config key it comes from, for the message (``"train.output_dir"`` for a LazyConfig).

    Raises:
        OSError: of the same kind as the failure (``NotADirectoryError``, ``PermissionError``...), in one line
            naming ``key``, the directory and what is wrong, e.g. which part of the path is a file.
    """
    try:
        os.makedirs(output_dir, exist_ok=True)
        if not os.access(output_dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), output_dir)
    except OSError as e:
        raise type(e)(f"{key} {output_dir!r} cannot be used as the output directory: {_why(output_dir, e)}") from e


def _why(output_dir: str, error: OSError) -> str:
    if isinstance(error, (NotADirectoryError, FileExistsError)):
        path = os.path.normpath(output_dir)
        while path not in ("", ".", os.sep) and not os.path.exists(path):
            path = os.path.dirname(path)
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{path!r} is a file, not a directory"
    reason = error.strerror or str(error)
    return f"{reason} ({error.filename!r})" if error.filename else reason


def claim_output_dir(output_dir: str, key: str = "OUTPUT_DIR") -> OutputDirLock:
    """Lock ``output_dir`` for this run and delete the temporary files of killed saves; return the held lock.

    Call it on the process that writes the files (the main process).

    Raises:
        OutputDirInUseError: when another live run holds the directory (nothing in it is touched then).
        OSError: naming ``key`` when the directory cannot be created or written to (:func:`make_output_dir`).
    """
    make_output_dir(output_dir, key)
    lock = OutputDirLock(output_dir)
    lock.acquire()
    for stale in remove_stale_temp_files(output_dir, is_checkpoint_file_name):
        logger.info(f"Removed {stale}, left by an interrupted save")
    return lock


def warn_before_overwriting(output_dir: str, checkpoint_period: int, max_iter: int) -> None:
    """Warn, naming the files, when a run starting at iteration 0 will overwrite an earlier run's checkpoints.

    A run saving ``model_{i:07d}.pth`` every ``checkpoint_period`` iterations up to ``max_iter`` overwrites
    ``last_checkpoint``, ``model_final.pth`` and the periodic files of its own schedule; the earlier run's other
    checkpoints stay beside its own, and ``metrics.json`` gets the new run's lines appended.
    """
    if not os.path.isdir(output_dir):
        return
    existing = sorted(n for n in os.listdir(output_dir) if is_checkpoint_file_name(n))
    if not existing:
        return
    overwritten = [n for n in existing if _written_by_schedule(n, checkpoint_period, max_iter)]
    kept = [n for n in existing if n not in overwritten]
    message = f"OUTPUT_DIR {output_dir!r} holds checkpoints of an earlier run and this run starts at iteration 0"
    if overwritten:
        message += f": it will overwrite {', '.join(overwritten)}"
    if kept:
        message += f"{';' if overwritten else ':'} {', '.join(kept)} will stay beside its own files"
    if os.path.exists(os.path.join(output_dir, "metrics.json")):
        message += "; metrics.json gets its lines appended"
    logger.warning(message + ". Pass --resume (resume=True) to continue that run, or use another OUTPUT_DIR.")


def _written_by_schedule(name: str, period: int, max_iter: int) -> bool:
    if name in ("last_checkpoint", "model_final.pth"):
        return True
    match = _PERIODIC.fullmatch(name)
    if match is None or period <= 0:
        return False
    iteration = int(match.group(1))
    return iteration < max_iter and (iteration + 1) % period == 0
