"""Small argument checks shared by the solver modules (private).

Each check raises ``ValueError``/``TypeError`` naming the argument, the bad value and what is accepted.
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_real(value: Any) -> bool:
    """True for ints and floats (and numpy scalars), False for bools and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """True for ints (and numpy integers), False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def real(name: str, value: Any, *, positive: bool = False, non_negative: bool = False) -> float:
    """Return ``value`` as a float after checking it is a finite real number with the given sign."""
    if not is_real(value) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if non_negative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int after checking it is an integer > 0."""
    if not is_int(value):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    """Return ``value`` after checking it is one of the ``accepted`` strings."""
    if value not in accepted:
        raise ValueError(f"{name} must be one of {list(accepted)}, got {value!r}")
    return str(value)
