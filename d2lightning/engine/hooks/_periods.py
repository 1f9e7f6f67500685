"""The iteration arithmetic hooks share, defined once.

``trainer.iter`` is 0-based and counts optimizer steps. "Every ``n`` iterations" means after iterations
``n - 1, 2n - 1, ...``; "the last iteration" is ``max_iter - 1``; and in ``after_train`` a run counts as
finished when ``iter + 1 >= max_iter`` (so a failure in the last iteration counts as finished, as in
detectron2).
"""

from __future__ import annotations

from typing import Any

__all__ = ["every_n_iters", "is_finished", "is_last_iter"]


def every_n_iters(trainer: Any, n: int) -> bool:
    """Whether the iteration just run completes a period of ``n`` (never for ``n <= 0``)."""
    return n > 0 and (trainer.iter + 1) % n == 0


def is_last_iter(trainer: Any) -> bool:
    """Whether the iteration just run is the run's last (``iter == max_iter - 1``)."""
    return trainer.iter + 1 >= trainer.max_iter


def is_finished(trainer: Any) -> bool:
    """In ``after_train``: whether training reached its end (``iter + 1 >= max_iter``)."""
    return trainer.iter + 1 >= trainer.max_iter
