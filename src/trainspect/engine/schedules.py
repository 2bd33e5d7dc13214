"""Schedules: when an instrument is due.

A schedule is any callable ``step -> bool`` (as in Cockpit's ``cockpit/utils/schedules.py``). Schedules
must be deterministic functions of the global step, never of data, so that every process of a distributed
run takes the same decisions and runs the same collectives.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

ScheduleLike = Union[int, Callable[[int], bool], "Schedule", None]


class Schedule:
    """Base class of the built-in schedules; they compose with ``|`` (due if either is due)."""

    def __call__(self, step: int) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def __or__(self, other: ScheduleLike) -> Schedule:
        return AnyOf(self, as_schedule(other))

    def periodicity(self) -> tuple[int, int] | None:
        """``(period, start)`` such that the schedule says the same at ``step`` and ``step + period`` for every
        ``step >= start``; None if it has no period (or it is not known). The engine uses it to look the due
        instruments up instead of evaluating every schedule on every step."""
        return None


class Every(Schedule):
    """Due at steps ``offset, offset + interval, offset + 2 * interval, ...``."""

    def __init__(self, interval: int, offset: int = 0):
        if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
            raise ValueError(f"a schedule interval must be a positive integer, got {interval!r}")
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"a schedule offset must be a non-negative integer, got {offset!r}")
        self.interval = interval
        self.offset = offset

    def __call__(self, step: int) -> bool:
        return step >= self.offset and (step - self.offset) % self.interval == 0

    def periodicity(self) -> tuple[int, int] | None:
        return self.interval, self.offset

    def __repr__(self) -> str:
        return f"every({self.interval}, offset={self.offset})"


class Logarithmic(Schedule):
    """Due at roughly ``per_decade`` logarithmically spaced steps per decade, and at step 0.

    Dense early in training (when most faults appear) and sparse later; the expensive curvature
    instruments use it by default. Membership is a set lookup, O(1) per step.
    """

    def __init__(self, per_decade: int = 10, end: int = 10**9):
        if per_decade < 1:
            raise ValueError(f"per_decade must be a positive integer, got {per_decade!r}")
        self.per_decade = per_decade
        steps = {0}
        k = 0
        while True:
            s = int(round(10 ** (k / per_decade)))
            if s > end:
                break
            steps.add(s)
            k += 1
        self._steps = steps

    def __call__(self, step: int) -> bool:
        return step in self._steps

    def __repr__(self) -> str:
        return f"logarithmic(per_decade={self.per_decade})"


class FirstSteps(Schedule):
    """Due at every step below ``count`` (e.g. to watch the start of training closely)."""

    def __init__(self, count: int):
        self.count = count

    def __call__(self, step: int) -> bool:
        return step < self.count

    def periodicity(self) -> tuple[int, int] | None:
        return 1, max(self.count, 0)  # never due from `count` on

    def __repr__(self) -> str:
        return f"first({self.count})"


class AnyOf(Schedule):
    def __init__(self, *schedules: Callable[[int], bool]):
        self.schedules = schedules

    def __call__(self, step: int) -> bool:
        return any(s(step) for s in self.schedules)

    def periodicity(self) -> tuple[int, int] | None:
        parts = [s.periodicity() if isinstance(s, Schedule) else None for s in self.schedules]
        if not parts or any(p is None for p in parts):
            return None
        return math.lcm(*(p[0] for p in parts)), max(p[1] for p in parts)  # type: ignore[index]

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.schedules)


class _Callable(Schedule):
    def __init__(self, fn: Callable[[int], bool]):
        self.fn = fn

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))

    def __repr__(self) -> str:
        return f"custom({getattr(self.fn, '__name__', self.fn)!r})"


def every(interval: int, offset: int = 0) -> Schedule:
    """Every ``interval`` steps, starting at ``offset``."""
    return Every(interval, offset)


def logarithmic(per_decade: int = 10, end: int = 10**9) -> Schedule:
    """Logarithmically spaced steps, ``per_decade`` of them per decade, plus step 0."""
    return Logarithmic(per_decade, end)


def first(count: int) -> Schedule:
    """The first ``count`` steps."""
    return FirstSteps(count)


def as_schedule(value: ScheduleLike, *, what: str = "schedule") -> Schedule:
    """Turn a positive int (interval) or a callable ``step -> bool`` into a :class:`Schedule`.

    Raises:
        TypeError: for anything else, naming what was given.
        ValueError: for a non-positive interval.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a positive integer interval or a callable step -> bool, got a bool")
    if isinstance(value, int):
        return Every(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 1:
        return Every(int(value))
    if callable(value):
        return _Callable(value)
    raise TypeError(
        f"{what} must be a positive integer interval or a callable step -> bool, got {type(value).__name__} "
        f"{value!r}; e.g. trainspect.every(10) or lambda step: step % 10 == 0"
    )
