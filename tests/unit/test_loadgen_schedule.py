"""The open loop's schedule (fastfaas/loadgen/schedule.py): pure, times in and out."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from fastfaas.loadgen.dist import poisson_arrivals
from fastfaas.loadgen.engine import Plan, Target, planned_arrivals
from fastfaas.loadgen.schedule import Schedule


def every(step: float, start: float = 0.0) -> Iterator[float]:
    t = start
    while True:
        t += step
        yield t


def test_a_free_sender_gets_the_next_future_arrival_then_nothing_after_end() -> None:
    dropped: list[float] = []
    s = Schedule(every(1.0), end=3.5, backlog_limit=5, on_overload=dropped.append)
    assert s.take(0.0) == 1.0  # in the future: the sender waits for it
    assert s.take(0.5) == 2.0
    assert s.take(0.6) == 3.0
    assert s.finished
    assert s.take(10.0) is None and dropped == []


def test_due_arrivals_go_out_oldest_first() -> None:
    s = Schedule(every(1.0), end=100.0, backlog_limit=5, on_overload=lambda t: None)
    assert s.waiting(3.5) == 3
    assert s.take_due(3.5) == 1.0
    assert s.take(3.5) == 2.0
    assert s.take(3.5) == 3.0
    assert s.take_due(3.5) is None  # 4.0 is not due yet: take_due leaves it for take
    assert s.take(3.5) == 4.0


def test_arrivals_beyond_the_backlog_limit_are_overload_not_queued() -> None:
    dropped: list[float] = []
    s = Schedule(every(1.0), end=100.0, backlog_limit=3, on_overload=dropped.append)
    assert s.take(0.0) == 1.0  # one sender busy from here on
    # At 7.5, arrivals 2..7 are due: 2, 3, 4 wait, and 5, 6, 7 found 3 waiting.
    assert s.waiting(7.5) == 3
    assert dropped == [5.0, 6.0, 7.0]
    assert [s.take(7.5), s.take(7.5), s.take(7.5)] == [2.0, 3.0, 4.0]
    assert s.take(7.5) == 8.0  # the backlog is empty again: the next one is in the future
    assert dropped == [5.0, 6.0, 7.0]


def test_overload_is_decided_in_order_as_if_at_each_arrival() -> None:
    """Lazily examined, but with takes in between the backlog frees up as it would have."""
    dropped: list[float] = []
    s = Schedule(every(1.0), end=100.0, backlog_limit=2, on_overload=dropped.append)
    assert s.take(2.5) == 1.0  # at 2.5: 1 and 2 were due, 1 taken
    assert s.take(4.5) == 2.0  # at 4.5: 3 and 4 joined 2; 4 found [2, 3] waiting
    assert dropped == [4.0]
    assert s.take(4.5) == 3.0


def test_close_returns_what_was_due_and_never_handed_out() -> None:
    dropped: list[float] = []
    s = Schedule(every(1.0), end=10.0, backlog_limit=3, on_overload=dropped.append)
    assert s.take(0.0) == 1.0
    left = s.close(20.0)  # the final deadline: 2..9 were due, 3 of them could wait
    assert left == [2.0, 3.0, 4.0]
    assert dropped == [5.0, 6.0, 7.0, 8.0, 9.0]
    assert s.finished and s.take(30.0) is None


def test_close_early_counts_only_arrivals_due_by_then() -> None:
    s = Schedule(every(1.0), end=10.0, backlog_limit=5, on_overload=lambda t: None)
    assert s.close(2.5) == [1.0, 2.0]  # 3.0 never came


def test_every_arrival_is_handed_out_dropped_or_left_exactly_once() -> None:
    rng = random.Random("schedule-accounting")
    times = list(_take_until(poisson_arrivals(1000.0, random.Random(7)), 2.0))
    dropped: list[float] = []
    s = Schedule(poisson_arrivals(1000.0, random.Random(7)), end=2.0, backlog_limit=8,
                 on_overload=dropped.append)
    taken: list[float] = []
    now = 0.0
    while now < 2.5 and not s.finished:
        now += rng.expovariate(800.0)  # a sender free now and then, slower than arrivals
        t = s.take(now)
        if t is not None:
            taken.append(t)
    left = s.close(3.0)
    assert sorted(taken + dropped + left) == times
    assert dropped  # slower senders than arrivals: the backlog filled up
    assert taken == sorted(taken)


def test_backlog_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="backlog_limit must be >= 1"):
        Schedule(every(1.0), end=1.0, backlog_limit=0, on_overload=lambda t: None)


def test_planned_arrivals_are_seeded_per_worker_and_split_the_rate() -> None:
    plan = Plan(target=Target(port=1), functions=["f"], mode="open", rate=200.0, workers=2,
                connections=2, duration_s=10.0)
    first = list(_take_until(planned_arrivals(plan, 0), 10.0))
    assert first == list(_take_until(planned_arrivals(plan, 0), 10.0))
    assert first != list(_take_until(planned_arrivals(plan, 1), 10.0))
    # 100/s each for 10 s: 1000 expected; +-6 sigma (sqrt(1000) ~ 32) never flakes.
    assert 1000 - 190 < len(first) < 1000 + 190


def _take_until(times: Iterator[float], end: float) -> Iterator[float]:
    for t in times:
        if t >= end:
            return
        yield t
