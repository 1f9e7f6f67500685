"""fvcore's ``PeriodicCheckpointer``: save every ``period`` iterations and at the last one, keep the newest N."""

from __future__ import annotations

import logging
import os
from typing import Any

from d2lightning.utils.validation import check_int

__all__ = ["PeriodicCheckpointer"]

logger = logging.getLogger(__name__)


class PeriodicCheckpointer:
    """Call ``checkpointer.save`` on a schedule; :meth:`step` is called with each finished iteration.

    Mirrors fvcore's ``PeriodicCheckpointer``. ``step(i)`` saves ``{file_prefix}_{i:07d}`` (e.g.
    ``model_0004999.pth``) when ``(i + 1) % period == 0``, and ``{file_prefix}_final`` when
    ``i >= max_iter - 1`` (both at a last iteration that completes a period), each with ``iteration=i`` and the
    extra entries given to ``step``. With ``max_to_keep``, only the newest ``max_to_keep`` periodic files
    *written by this object* are kept: older ones are deleted, files of earlier runs and ``*_final.pth``
    never are, and the record starts empty in every process (it is not checkpointed).

    Args:
        checkpointer: the checkpointer that saves (a :class:`~d2lightning.checkpoint.Checkpointer`, or any
            object with ``save(name, **extra)``).
        period: iterations between saves (>= 1).
        max_iter: the number of iterations, for the final save; None saves no final file.
        max_to_keep: how many periodic files to keep (>= 1); None keeps all.
        file_prefix: the file name prefix.

    Raises:
        TypeError: when ``checkpointer`` has no ``save`` method or ``file_prefix`` is not a string.
        ValueError: naming ``period``, ``max_iter``, ``max_to_keep`` or ``file_prefix`` when out of range
            (fvcore fails only at the first step with ``ZeroDivisionError`` for ``period=0``).

    Example::

        periodic = PeriodicCheckpointer(Checkpointer(model, "output"), period=5000, max_iter=90000)
        for it in range(start_iter, 90000):
            train_one_iteration()
            periodic.step(it)
    """

    def __init__(
        self,
        checkpointer: Any,
        period: int,
        max_iter: int | None = None,
        max_to_keep: int | None = None,
        file_prefix: str = "model",
    ) -> None:
        if not callable(getattr(checkpointer, "save", None)):
            raise TypeError(f"checkpointer must have a save(name, **extra) method, got {type(checkpointer).__name__}")
        check_int("PeriodicCheckpointer period", period, minimum=1)
        check_int("PeriodicCheckpointer max_iter", max_iter, minimum=0, allow_none=True)
        check_int("PeriodicCheckpointer max_to_keep", max_to_keep, minimum=1, allow_none=True)
        if not isinstance(file_prefix, str):
            raise TypeError(f"PeriodicCheckpointer file_prefix must be a str, got {type(file_prefix).__name__}")
        if not file_prefix or os.path.basename(file_prefix) != file_prefix:
            raise ValueError(f"PeriodicCheckpointer file_prefix must be a non-empty file name, got {file_prefix!r}")
        self.checkpointer = checkpointer
        self.period = period
        self.max_iter = max_iter
        self.max_to_keep = max_to_keep
        self.file_prefix = file_prefix
        self.recent_checkpoints: list[str] = []

    def step(self, iteration: int, **kwargs: Any) -> None:
        """Save what is due after iteration ``iteration`` (0-based); ``kwargs`` are saved too."""
        iteration = int(iteration)
        state = {"iteration": iteration, **kwargs}
        if (iteration + 1) % self.period == 0:
            name = f"{self.file_prefix}_{iteration:07d}"
            self.checkpointer.save(name, **state)
            if self.max_to_keep is not None:
                self._keep_newest(name)
        if self.max_iter is not None and iteration >= self.max_iter - 1:
            self._save_final(**state)

    def _save_final(self, **kwargs: Any) -> None:
        self.checkpointer.save(f"{self.file_prefix}_final", **kwargs)

    def save(self, name: str, **kwargs: Any) -> None:
        """Save ``name`` now, outside the schedule (same arguments as ``Checkpointer.save``)."""
        self.checkpointer.save(name, **kwargs)

    def _keep_newest(self, name: str) -> None:
        written = _written_file(self.checkpointer, name)
        if written is None:  # this process does not write files (save_to_disk=False or no save_dir)
            return
        self.recent_checkpoints.append(written)
        while len(self.recent_checkpoints) > self.max_to_keep:  # type: ignore[operator]
            old = self.recent_checkpoints.pop(0)
            if old.endswith(f"{self.file_prefix}_final.pth") or not os.path.exists(old):
                continue
            logger.info(f"Deleting old checkpoint {old} (max_to_keep={self.max_to_keep})")
            os.remove(old)


def _written_file(checkpointer: Any, name: str) -> str | None:
    """The file ``checkpointer.save(name)`` has just written, or None when it writes nothing."""
    save_dir = getattr(checkpointer, "save_dir", None)
    if save_dir is None:  # not a Checkpointer: trust its own notion of the latest file, as fvcore does
        getter = getattr(checkpointer, "get_checkpoint_file", None)
        return getter() if callable(getter) else None
    if not save_dir or not getattr(checkpointer, "save_to_disk", True):
        return None
    return os.path.join(save_dir, f"{name}.pth")
