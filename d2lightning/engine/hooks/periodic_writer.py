"""detectron2 ``PeriodicWriter``: write the storage through ``EventWriter``s every ``period`` iterations.

after_step → ``on_train_batch_end``; after_train → ``on_train_end`` / ``on_exception`` (final write, close).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from d2lightning.engine.hook_base import HookBase
from d2lightning.engine.hooks._periods import every_n_iters, is_last_iter
from d2lightning.utils.validation import check_int

__all__ = ["PeriodicWriter"]


class PeriodicWriter(HookBase):
    """Call every writer's ``write()`` every ``period`` iterations and after the last iteration.

    After training (also a failed one) every writer writes once more and is closed. Writers are
    ``EventWriter``s — d2lightning's or detectron2's, or any object with ``write()`` and ``close()``.

    Args:
        writers: the writers, e.g. ``default_writers(output_dir, max_iter)``.
        period: iterations between writes.

    Raises:
        TypeError: naming a writer without ``write``/``close``.
        ValueError: when ``period`` is not an int >= 1.
    """

    def __init__(self, writers: Sequence[Any], period: int = 20) -> None:
        self._writers = list(writers)
        for w in self._writers:
            if not (callable(getattr(w, "write", None)) and callable(getattr(w, "close", None))):
                raise TypeError(f"PeriodicWriter writers must be EventWriters (write() and close()), got {w!r}")
        self._period = check_int("PeriodicWriter period", period, minimum=1)

    def after_step(self) -> None:
        if every_n_iters(self.trainer, self._period) or is_last_iter(self.trainer):
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            # A last write after training; a writer may want to write something then (detectron2 does it).
            writer.write()
            writer.close()
