"""The open loop's schedule: arrivals handed to whichever sender is free, with a
bounded backlog.

Sans-IO: times go in, intended send times come out; the engine does the
waiting and the sending.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator


class Schedule:
    """The intended send times of an open loop, for a set of senders.

    A free sender calls `take(now)`: it gets the oldest arrival already due
    and still waiting, else the next future one (and waits for its time);
    `take_due(now)` hands out only the former.
    Arrivals that fall due while every sender is busy wait in a backlog of at
    most `backlog_limit`; an arrival that finds the backlog full is not queued
    but handed to `on_overload` (queueing without bound would only measure
    the generator's memory). Arrivals at or after `end` are not scheduled.

    Arrivals are examined lazily, in order, when `take` or `close` is called:
    an arrival is overload exactly when, at its time, `backlog_limit` older
    ones were waiting, since nothing was taken between two calls.

    Args:
        arrivals: increasing times, endless (e.g. `dist.poisson_arrivals`).
        end: the first time not scheduled.
        backlog_limit: how many due arrivals may wait, >= 1.
        on_overload: called with the time of each arrival dropped.

    Raises:
        ValueError: backlog_limit below 1.
    """

    def __init__(self, arrivals: Iterator[float], end: float, backlog_limit: int,
                 on_overload: Callable[[float], None]) -> None:
        if backlog_limit < 1:
            raise ValueError(f"backlog_limit must be >= 1, got {backlog_limit}")
        self._arrivals = arrivals
        self._end = end
        self._limit = backlog_limit
        self._on_overload = on_overload
        self._waiting: collections.deque[float] = collections.deque()
        self._next: float | None = None
        self._advance()

    def _advance(self) -> None:
        t = next(self._arrivals)
        self._next = t if t < self._end else None

    def _admit(self, now: float) -> None:
        """Queue (or drop, when the backlog is full) the arrivals due by `now`."""
        waiting = self._waiting
        while self._next is not None and self._next <= now:
            if len(waiting) < self._limit:
                waiting.append(self._next)
            else:
                self._on_overload(self._next)
            self._advance()

    def take(self, now: float) -> float | None:
        """The intended time of the next request for a free sender.

        Returns:
            The oldest waiting arrival (<= now), else the next future one
            (> now: the sender waits for it), else None: every arrival before
            `end` was handed out or dropped.
        """
        self._admit(now)
        if self._waiting:
            return self._waiting.popleft()
        t = self._next
        if t is not None:
            self._advance()
        return t

    def take_due(self, now: float) -> float | None:
        """The oldest arrival due by `now` and waiting; None when none is (a
        future one is left for `take`)."""
        self._admit(now)
        return self._waiting.popleft() if self._waiting else None

    def waiting(self, now: float) -> int:
        """How many arrivals are due by `now` and not handed out (the backlog)."""
        self._admit(now)
        return len(self._waiting)

    @property
    def finished(self) -> bool:
        """True when nothing is left to hand out, now or later."""
        return self._next is None and not self._waiting

    def close(self, now: float) -> list[float]:
        """End the schedule at `now`: the arrivals due by then and never handed
        out, oldest first (overloads among them go to `on_overload` as usual).
        Arrivals after `now` never came; `finished` is True afterwards."""
        self._admit(now)
        left = list(self._waiting)
        self._waiting.clear()
        self._next = None
        return left
