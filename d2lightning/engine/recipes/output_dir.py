"""What ``DefaultTrainer`` does about its ``OUTPUT_DIR`` before training: claim it, tidy it, warn before overwriting.

No detectron2 counterpart. :func:`claim_output_dir` locks the directory for this run
(:class:`~d2lightning.utils.run_lock.OutputDirLock`: a second training there is refused) and, holding the lock,
deletes the temporary files that killed saves left behind — safe then, since no other run writes there.
:func:`warn_before_overwriting` names the files of an earlier run that a fresh run (no ``--resume``) is about to
overwrite.
"""

from __future__ import annotations

import logging
import os
import re

from d2lightning.checkpoint.atomic import remove_stale_temp_files
from d2lightning.checkpoint.checkpointer import is_checkpoint_file_name
from d2lightning.utils.run_lock import OutputDirLock

__all__ = ["claim_output_dir", "warn_before_overwriting"]

logger = logging.getLogger(__name__)

_PERIODIC = re.compile(r"model_(\d{7})\.pth")


def claim_output_dir(output_dir: str) -> OutputDirLock:
    """Lock ``output_dir`` for this run and delete the temporary files of killed saves; return the held lock.

    Call it on the process that writes the files (the main process).

    Raises:
        OutputDirInUseError: when another live run holds the directory (nothing in it is touched then).
    """
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
