"""Parameter schedulers with fvcore's names and semantics (``fvcore.common.param_scheduler``).

A parameter scheduler maps training progress ``where`` (a float in ``[0, 1]``, ``iter / max_iter``) to a
value, typically an LR multiplier that :class:`~d2lightning.solver.LRMultiplier` applies. They are
stateless, so a resumed run only needs the iteration number. fvcore is not a dependency: these classes
reimplement its formulas (including its ``WHERE_EPSILON`` rounding) so the values match it exactly, and
they keep fvcore's keyword names so LazyConfig files that ``L(MultiStepParamScheduler)(values=...)`` only
need their import changed.

Deviations from fvcore (each avoids a crash, never changes a value fvcore returns):

- ``where`` is checked against ``[0, 1]`` (with ``WHERE_EPSILON`` slack) by every scheduler, and ``1.0``
  is accepted everywhere; :class:`StepParamScheduler` returns its last value at ``where=1`` where fvcore
  raises ``IndexError`` (reached by the scheduler step after the last iteration).
- :class:`CompositeParamScheduler` evaluates a zero-length ``"rescaled"`` segment at its start instead of
  dividing by zero, clips the progress it passes to a ``"rescaled"`` scheduler to ``[0, 1]`` (fvcore can
  pass e.g. ``-1e-17`` through rounding or the ``WHERE_EPSILON`` slack), and copies ``lengths`` instead of
  modifying the caller's list.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

from d2lightning.solver import _checks

__all__ = [
    "CompositeParamScheduler",
    "ConstantParamScheduler",
    "CosineParamScheduler",
    "ExponentialParamScheduler",
    "LinearParamScheduler",
    "MultiStepParamScheduler",
    "ParamScheduler",
    "PolynomialDecayParamScheduler",
    "StepParamScheduler",
    "StepWithFixedGammaParamScheduler",
]


class ParamScheduler:
    """Base class mirroring fvcore's ``ParamScheduler``: ``__call__(where) -> value``.

    Subclasses implement :meth:`_value`; ``__call__`` checks ``where`` first.
    """

    #: Slack used when comparing ``where`` with segment boundaries (fvcore's value).
    WHERE_EPSILON = 1e-6

    def __call__(self, where: float) -> float:
        """Return the value at training progress ``where``.

        Args:
            where: fraction of training done, in ``[0, 1]``.

        Raises:
            TypeError: ``where`` is not a real number.
            ValueError: ``where`` is outside ``[0, 1]`` by more than ``WHERE_EPSILON``.
        """
        if not _checks.is_real(where):
            raise TypeError(f"where must be a real number in [0, 1], got {where!r}")
        if not -self.WHERE_EPSILON <= where <= 1.0 + self.WHERE_EPSILON:
            raise ValueError(f"where in ParamScheduler must be in [0, 1], got {where!r}")
        return self._value(float(where))

    def _value(self, where: float) -> float:
        raise NotImplementedError("Param schedulers must implement _value(where)")


def is_param_scheduler(obj: Any) -> bool:
    """True for a :class:`ParamScheduler` or an fvcore ``ParamScheduler`` (detected without importing fvcore).

    Lets schedulers built with a real fvcore (e.g. in existing LazyConfigs) be combined with ours.
    """
    if isinstance(obj, ParamScheduler):
        return True
    return any(cls.__name__ == "ParamScheduler" and cls.__module__.startswith("fvcore.") for cls in type(obj).__mro__)


class ConstantParamScheduler(ParamScheduler):
    """fvcore ``ConstantParamScheduler``: always returns ``value``."""

    def __init__(self, value: float) -> None:
        self._value_const = _checks.real("value", value)

    def _value(self, where: float) -> float:
        return self._value_const


class CosineParamScheduler(ParamScheduler):
    """fvcore ``CosineParamScheduler``: half cosine from ``start_value`` (where 0) to ``end_value`` (where 1).

    ``value = end + 0.5 * (start - end) * (1 + cos(pi * where))``.

    Example::

        CosineParamScheduler(1.0, 0.0)(0.5)  # 0.5
    """

    def __init__(self, start_value: float, end_value: float) -> None:
        self._start = _checks.real("start_value", start_value)
        self._end = _checks.real("end_value", end_value)

    def _value(self, where: float) -> float:
        return self._end + 0.5 * (self._start - self._end) * (1 + math.cos(math.pi * where))


class ExponentialParamScheduler(ParamScheduler):
    """fvcore ``ExponentialParamScheduler``: ``start_value * decay ** where``."""

    def __init__(self, start_value: float, decay: float) -> None:
        self._start = _checks.real("start_value", start_value)
        self._decay = _checks.real("decay", decay, positive=True)

    def _value(self, where: float) -> float:
        return self._start * (self._decay**where)


class LinearParamScheduler(ParamScheduler):
    """fvcore ``LinearParamScheduler``: linear from ``start_value`` (where 0) to ``end_value`` (where 1).

    ``value = end * where + start * (1 - where)`` (fvcore's exact formula).
    """

    def __init__(self, start_value: float, end_value: float) -> None:
        self._start = _checks.real("start_value", start_value)
        self._end = _checks.real("end_value", end_value)

    def _value(self, where: float) -> float:
        return self._end * where + self._start * (1 - where)


class PolynomialDecayParamScheduler(ParamScheduler):
    """fvcore ``PolynomialDecayParamScheduler``: ``base_value * (1 - where) ** power``."""

    def __init__(self, base_value: float, power: float) -> None:
        self._base = _checks.real("base_value", base_value)
        self._power = _checks.real("power", power)

    def _value(self, where: float) -> float:
        return self._base * max(1.0 - where, 0.0) ** self._power


class MultiStepParamScheduler(ParamScheduler):
    """fvcore ``MultiStepParamScheduler``: piecewise-constant ``values`` switching at ``milestones``.

    The value at progress ``where`` is ``values[bisect_right(milestones, u)]`` with
    ``u = int((where + 1e-6) * num_updates)``, so a milestone takes effect *at* its own update.
    Equivalent forms (all the same schedule): ``num_updates=90, milestones=[30, 60]``;
    ``num_updates=90`` (evenly split, each range ``ceil(90 / len(values))`` long);
    ``milestones=[30, 60, 90]`` (the last milestone is ``num_updates``).

    Args:
        values: value of each range (at least one).
        num_updates: end of the last range; ``None`` to take it from ``milestones[-1]``.
        milestones: strictly increasing range boundaries, each ``< num_updates``; ``len(values) - 1`` of
            them with ``num_updates``, ``len(values)`` without; ``None`` to split ``num_updates`` evenly.

    Raises:
        ValueError: both ``num_updates`` and ``milestones`` are None, wrong number of milestones,
            milestones not increasing or not below ``num_updates``, or ``num_updates < len(values)``.

    Example::

        MultiStepParamScheduler([1.0, 0.1, 0.01], milestones=[60000, 80000], num_updates=90000)
    """

    def __init__(
        self,
        values: Sequence[float],
        num_updates: int | None = None,
        milestones: Sequence[int] | None = None,
    ) -> None:
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"values must be a non-empty list of numbers, got {values!r}")
        vals = [_checks.real(f"values[{i}]", v) for i, v in enumerate(values)]
        if num_updates is None and milestones is None:
            raise ValueError("num_updates and milestones cannot both be None")
        if num_updates is not None:
            num_updates = _checks.positive_int("num_updates", num_updates)
        if milestones is None:
            assert num_updates is not None  # narrowed above
            width = math.ceil(num_updates / float(len(vals)))
            stones = [width * (i + 1) for i in range(len(vals) - 1)]
        else:
            expected = len(vals) - int(num_updates is not None)
            if isinstance(milestones, str) or not isinstance(milestones, Sequence):
                raise ValueError(f"milestones must be a list of integers, got {milestones!r}")
            if len(milestones) != expected:
                raise ValueError(
                    f"MultiStepParamScheduler needs {expected} milestones for {len(vals)} values "
                    f"(num_updates={num_updates!r}), got milestones={list(milestones)!r}"
                )
            stones = [_checks.positive_int(f"milestones[{i}]", m) for i, m in enumerate(milestones)]
        if num_updates is None:
            num_updates, stones = stones[-1], stones[:-1]
        if num_updates < len(vals):
            raise ValueError(f"num_updates ({num_updates}) must be at least the number of values ({len(vals)})")
        previous = 0
        for stone in stones:
            if stone >= num_updates:
                raise ValueError(
                    f"each milestone must be smaller than num_updates={num_updates}, got milestone={stone}"
                )
            if stone <= previous:
                raise ValueError(f"milestones must be strictly increasing and > 0, got {stones}")
            previous = stone
        self._values = vals
        self._num_updates = num_updates
        self._milestones = stones

    def _value(self, where: float) -> float:
        update = int((where + self.WHERE_EPSILON) * self._num_updates)
        return self._values[bisect.bisect_right(self._milestones, update)]


class StepParamScheduler(ParamScheduler):
    """fvcore ``StepParamScheduler``: ``values`` spread evenly over training.

    The value at ``where`` is ``values[int((where + 1e-6) * len(values))]``, clamped to the last value at
    ``where=1`` (fvcore raises ``IndexError`` there).

    Args:
        num_updates: total number of updates (> 0; kept for fvcore compatibility, the schedule is
            scale-free).
        values: the values, at least one.
    """

    def __init__(self, num_updates: int | float, values: Sequence[float]) -> None:
        _checks.real("num_updates", num_updates, positive=True)
        if isinstance(values, str) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"values must be a non-empty list of numbers, got {values!r}")
        self._values = [_checks.real(f"values[{i}]", v) for i, v in enumerate(values)]

    def _value(self, where: float) -> float:
        index = int((where + self.WHERE_EPSILON) * len(self._values))
        return self._values[min(index, len(self._values) - 1)]


class StepWithFixedGammaParamScheduler(ParamScheduler):
    """fvcore ``StepWithFixedGammaParamScheduler``: ``num_decays`` equal steps, each multiplying by ``gamma``.

    Same as ``StepParamScheduler(num_updates, [base_value * gamma**k for k in 0..num_decays])``
    (each value computed by repeated multiplication, as fvcore does).

    Args:
        base_value: starting value (> 0).
        num_decays: number of decays (positive integer).
        gamma: factor applied at each decay (> 0).
        num_updates: total number of updates (positive integer).

    Example::

        StepWithFixedGammaParamScheduler(base_value=0.1, num_decays=3, gamma=0.1, num_updates=120)
        # 0.1 for updates 0-29, 0.01 for 30-59, 0.001 for 60-89, 0.0001 for 90-119
    """

    def __init__(self, base_value: float, num_decays: int, gamma: float, num_updates: int) -> None:
        self.base_value = _checks.real("base_value", base_value, positive=True)
        self.num_decays = _checks.positive_int("num_decays", num_decays)
        self.gamma = _checks.real("gamma", gamma, positive=True)
        self.num_updates = _checks.positive_int("num_updates", num_updates)
        values = [self.base_value]
        for _ in range(self.num_decays):
            values.append(values[-1] * self.gamma)
        self._steps = StepParamScheduler(num_updates=self.num_updates, values=values)

    def _value(self, where: float) -> float:
        return self._steps(where)


class CompositeParamScheduler(ParamScheduler):
    """fvcore ``CompositeParamScheduler``: run ``schedulers`` one after another.

    Scheduler ``i`` covers a fraction ``lengths[i]`` of training (the lengths sum to 1 within 1e-3; the
    last one is adjusted to make the sum exact). A point ``where`` belongs to the first segment whose
    cumulative end is ``>= where + 1e-6``. With ``interval_scaling[i] == "rescaled"`` the scheduler sees
    the progress *within* its segment (0 to 1); with ``"fixed"`` it sees the global ``where``.

    Args:
        schedulers: the schedulers (ours or fvcore's), at least one.
        lengths: fraction of training for each scheduler (non-negative, summing to 1).
        interval_scaling: ``"rescaled"`` or ``"fixed"`` for each scheduler.

    Example::

        CompositeParamScheduler(
            [ConstantParamScheduler(0.42), CosineParamScheduler(0.42, 1e-4)],
            lengths=[0.3, 0.7],
            interval_scaling=["rescaled", "rescaled"],
        )  # 0.42 for the first 30% of training, then a cosine decay to 1e-4
    """

    def __init__(
        self,
        schedulers: Sequence[ParamScheduler],
        lengths: Sequence[float],
        interval_scaling: Sequence[str],
    ) -> None:
        if len(schedulers) == 0:
            raise ValueError("There must be at least one scheduler in the composite scheduler")
        for i, sched in enumerate(schedulers):
            if not is_param_scheduler(sched):
                raise TypeError(f"schedulers[{i}] must be a ParamScheduler, got {sched!r}")
        if len(lengths) != len(schedulers) or len(interval_scaling) != len(schedulers):
            raise ValueError(
                f"schedulers, lengths and interval_scaling must have the same length, got "
                f"{len(schedulers)}, {len(lengths)} and {len(interval_scaling)}"
            )
        lens = [_checks.real(f"lengths[{i}]", x, non_negative=True) for i, x in enumerate(lengths)]
        if abs(sum(lens) - 1.0) >= 1e-3:
            raise ValueError(f"The sum of all values in lengths must be 1, got {lens}")
        if sum(lens) != 1.0:
            lens[-1] = 1.0 - sum(lens[:-1])
        for i, scaling in enumerate(interval_scaling):
            _checks.choice(f"interval_scaling[{i}]", scaling, ("rescaled", "fixed"))
        self._schedulers: list[Any] = list(schedulers)
        self._lengths = lens
        self._interval_scaling = list(interval_scaling)

    def _value(self, where: float) -> float:
        i = 0
        running_total = self._lengths[0]
        while where + self.WHERE_EPSILON > running_total and i < len(self._schedulers) - 1:
            i += 1
            running_total += self._lengths[i]
        inner_where = where
        if self._interval_scaling[i] == "rescaled":
            start = running_total - self._lengths[i]
            inner_where = (where - start) / self._lengths[i] if self._lengths[i] > 0 else 0.0
            inner_where = min(max(inner_where, 0.0), 1.0)
        return self._schedulers[i](inner_where)
