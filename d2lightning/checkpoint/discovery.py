"""Which checkpointers a trainer and its hooks save with — the one search every caller uses.

No detectron2 counterpart. A run needs the checkpointers of a detectron2-style trainer and its hooks: to hand them
the fit's Lightning state, to save a stop checkpoint after a signal, to find the ``last_checkpoint`` that
``fit(ckpt_path="last")`` resumes from. A holder names its checkpointer in a ``checkpointer`` attribute
(``DefaultTrainer``, the ``PeriodicCheckpointer`` and ``BestCheckpointer`` hooks, detectron2's hooks), and a
periodic checkpointer carries the real one in its own ``checkpointer`` attribute (fvcore's, d2lightning's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["find_checkpointers"]


def find_checkpointers(holders: Iterable[Any]) -> list[Any]:
    """The checkpointers the ``holders`` save with, in the holders' order, each once.

    A holder's ``checkpointer`` attribute names one (a periodic checkpointer is looked through to the checkpointer
    it drives); anything without a callable ``save`` is left out.

    Example::

        find_checkpointers([trainer, *trainer._hooks])   # [DetectionCheckpointer(...)]
    """
    found: list[Any] = []
    for holder in holders:
        checkpointer = getattr(holder, "checkpointer", None)
        inner = getattr(checkpointer, "checkpointer", None)  # a periodic checkpointer drives another one
        if inner is not None and callable(getattr(inner, "save", None)):
            checkpointer = inner
        if callable(getattr(checkpointer, "save", None)) and all(c is not checkpointer for c in found):
            found.append(checkpointer)
    return found
