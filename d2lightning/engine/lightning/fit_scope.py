"""Everything a fit changes outside d2lightning's own objects, each change with its undo, undone in one place.

No detectron2 counterpart. Fitting a detectron2-style trainer in a user's ``lightning.pytorch.Trainer`` needs a
few changes to objects that are not ours: the run goes first among the Trainer's callbacks (with the trainer's
registered hooks missing from the list), Trainer options Lightning refuses under manual optimization are taken
over (``gradient_clip_val``, ``accumulate_grad_batches``), Lightning's notices about d2lightning's own choices are
silenced, ``fit(ckpt_path="last")`` also finds detectron2's ``last_checkpoint``, and the trainer's optimizer gets a
step pre-hook. A :class:`FitScope` makes each of them and records how to undo it; :meth:`FitScope.close` undoes
them all, in reverse order, once — the run calls it when the fit ends, whether it finished or failed.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["FitScope"]

logger = logging.getLogger(__name__)


class FitScope:
    """The changes one fit made to objects that are not d2lightning's, and their undo.

    Each method makes one change and records its undo. :meth:`close` undoes everything in reverse order; an undo
    that raises does not stop the others (the first error is raised at the end).

    Example::

        scope = FitScope()
        scope.set_attribute(pl_trainer, "gradient_clip_val", None)
        ...
        scope.close()   # pl_trainer.gradient_clip_val is back
    """

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self.closed = False

    def set_attribute(self, obj: Any, name: str, value: Any) -> None:
        """``setattr(obj, name, value)``; the undo puts the old value back (or removes an attribute of the instance
        that only its class had)."""
        # an attribute of the instance, or a property: put the old value back; else (a method, say) the instance
        # attribute this sets hid the class's, and the undo removes it
        own = name in getattr(obj, "__dict__", {}) or hasattr(getattr(type(obj), name, None), "__set__")
        old = getattr(obj, name)
        setattr(obj, name, value)
        if own:
            self._undo.append(lambda: setattr(obj, name, old))
        else:
            self._undo.append(lambda: delattr(obj, name))

    def insert_callbacks(self, pl_trainer: Any, index: int, callbacks: Iterable[Any]) -> None:
        """Insert ``callbacks`` into ``pl_trainer.callbacks`` at ``index``; the undo takes them out again.

        Both assign a new list, never change the current one in place: Lightning may be iterating it (a callback's
        ``setup`` or ``on_exception`` is running).
        """
        added = list(callbacks)
        current = list(pl_trainer.callbacks)
        pl_trainer.callbacks = [*current[:index], *added, *current[index:]]

        def remove() -> None:
            pl_trainer.callbacks = [cb for cb in pl_trainer.callbacks if not any(cb is a for a in added)]

        self._undo.append(remove)

    def ignore_warnings(self, messages: Iterable[str]) -> None:
        """Ignore warnings whose message starts with one of ``messages``; the undo restores the process's warning
        filters exactly as they were (``warnings.catch_warnings``)."""
        catcher = warnings.catch_warnings()
        catcher.__enter__()
        for message in messages:
            warnings.filterwarnings("ignore", message=re.escape(message))
        self._undo.append(lambda: catcher.__exit__(None, None, None))

    def on_close(self, undo: Callable[[], None]) -> None:
        """Call ``undo`` when the scope closes (for a change made elsewhere, e.g. a hook handle to remove)."""
        self._undo.append(undo)

    def close(self) -> None:
        """Undo every change, newest first, once."""
        if self.closed:
            return
        self.closed = True
        first: BaseException | None = None
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except BaseException as e:  # the other undos still run
                logger.exception("Undoing a change of the fit failed")
                first = first or e
        if first is not None:
            raise first
