"""The scalar history behind ``EventStorage`` (fvcore ``HistoryBuffer``, same methods and results)."""

from __future__ import annotations

import statistics
from collections import deque
from itertools import islice

__all__ = ["HistoryBuffer"]


class HistoryBuffer:
    """A bounded series of ``(value, iteration)`` pairs with window statistics.

    Statistics over the last ``window_size`` *entries* (``median``, ``avg``) and over every value ever added
    (``global_avg``, which survives the bound on stored entries).

    Args:
        max_length: entries kept; the oldest is dropped beyond it.

    Example::

        buf = HistoryBuffer()
        for i, v in enumerate([1.0, 2.0, 10.0]):
            buf.update(v, i)
        buf.median(3), buf.avg(2), buf.latest()   # (2.0, 6.0, 10.0)
    """

    def __init__(self, max_length: int = 1_000_000) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self._data: deque[tuple[float, float]] = deque(maxlen=max_length)
        self._count = 0
        self._global_sum = 0.0

    def update(self, value: float, iteration: float | None = None) -> None:
        """Append ``value`` at ``iteration`` (default: the number of values added so far)."""
        if iteration is None:
            iteration = self._count
        self._data.append((value, iteration))
        self._count += 1
        self._global_sum += value

    def latest(self) -> float:
        """The most recent value."""
        return self._data[-1][0]

    def median(self, window_size: int) -> float:
        """Median of the last ``window_size`` values."""
        return float(statistics.median(self._window(window_size)))

    def avg(self, window_size: int) -> float:
        """Mean of the last ``window_size`` values."""
        window = self._window(window_size)
        return sum(window) / len(window)

    def global_avg(self) -> float:
        """Mean of every value ever added, including those dropped from the buffer."""
        return self._global_sum / self._count

    def values(self) -> deque[tuple[float, float]]:
        """All stored ``(value, iteration)`` pairs, oldest first (the buffer itself: do not modify)."""
        return self._data

    def _window(self, window_size: int) -> list[float]:
        return [v for v, _ in islice(reversed(self._data), window_size)]
