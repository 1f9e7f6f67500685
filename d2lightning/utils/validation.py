"""Argument checks shared by every constructor that takes an integer (no detectron2 counterpart).

detectron2 takes integers unchecked and fails later (``ZeroDivisionError`` at the first step for ``period=0``);
d2lightning refuses a bad one at once, always with the same message: ``"<name> must be an int >= <minimum>, got
<value>"``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NotAnIntError", "check_int"]


class NotAnIntError(TypeError, ValueError):
    """An argument that must be an int is not one: a ``TypeError``, and a ``ValueError`` too, so that code checking
    for a bad value (``except ValueError``) catches it as it catches an int out of range."""


def check_int(name: str, value: Any, minimum: int = 0, *, allow_none: bool = False) -> Any:
    """Return ``value`` when it is an int (not a bool) ``>= minimum`` (or None with ``allow_none``).

    Args:
        name: how the message names the argument, e.g. ``"EvalHook eval_period"``.
        value: the value given.
        minimum: the smallest value accepted.
        allow_none: accept None as well.

    Raises:
        NotAnIntError: (a ``TypeError`` and a ``ValueError``) when ``value`` is not an int (a bool, a float, a
            string...).
        ValueError: when it is below ``minimum``.

    Example::

        self._period = check_int("PeriodicWriter period", period, minimum=1)
    """
    if value is None and allow_none:
        return None
    accepted = f"an int >= {minimum}" if not allow_none else f"None or an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise NotAnIntError(f"{name} must be {accepted}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")
    return value
