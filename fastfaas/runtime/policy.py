"""Capacity policy as plain functions of state and time (sans-IO).

The runtime asks these what to do; they never touch a process or a clock of
their own, so they are tested under trio's autojump clock.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from fastfaas import _native

MIN_TICK_S = 0.005
MAX_TICK_S = 1.0


def reap_tick(timeouts: Iterable[float]) -> float:
    """How often the reaper looks: a quarter of the shortest timeout, within bounds."""
    shortest = min(timeouts, default=MAX_TICK_S * 4)
    return min(MAX_TICK_S, max(MIN_TICK_S, shortest / 4))


def expired_instances(
    table: _native.InstanceTable, slot: int, now: float, idle_timeout_s: float,
    limit: int | None = None,
) -> list[int]:
    """Warm idle instances of a slot idle for idle_timeout_s or longer, now DRAINING;
    at most `limit` (the oldest first): the rest wait for the next look."""
    out: list[int] = []
    cutoff = now - idle_timeout_s
    while (limit is None or len(out) < limit) and (
            inst := table.pop_expired(slot, _native.KIND_WARM, cutoff)) is not None:
        out.append(inst)
    return out


def zygote_expired(
    *, last_used: float, now: float, zygote_idle_timeout_s: float, busy: int, warm: int,
    prewarm: int = 0,
) -> bool:
    """A zygote with no busy or warm instances (spares don't count) past its idle
    timeout; never one whose function asks for `prewarm` instances."""
    if prewarm > 0:
        return False
    return busy == 0 and warm == 0 and now - last_used >= zygote_idle_timeout_s


def spare_deficit(*, target: int, idle_spares: int, spawning: int) -> int:
    """How many spares to fork now."""
    return max(0, target - idle_spares - spawning)


def spare_target(*, prewarm: int, spares: int) -> int:
    return max(prewarm, spares)


def pool_deficit(*, target: int, ready: int, forking: int) -> int:
    """How many generic zygotes the warming pool should fork now."""
    return max(0, target - ready - forking)


# Deadlines of invocations in flight (O(log n) to add, O(1) to finish), compiled:
# one is pushed and finished per call.
Deadline = _native.Deadline
Deadlines = _native.Deadlines


# The concurrency limits (taken and given back per call), compiled.
ConcurrencyLimits = _native.ConcurrencyLimits


class RecentEvents:
    """The times of recent events in a sliding window of `window_s`, at most `most`
    of them (the oldest go first under a flood: bounded memory)."""

    def __init__(self, window_s: float, most: int) -> None:
        self.window_s = window_s
        self._times: collections.deque[float] = collections.deque(maxlen=most)

    def __len__(self) -> int:
        return len(self._times)

    def note(self, now: float) -> None:
        self._times.append(now)

    def count(self, now: float) -> int:
        """Events in (now - window_s, now]."""
        cutoff = now - self.window_s
        times = self._times
        while times and times[0] <= cutoff:
            times.popleft()
        return len(times)


class SpareSizer:
    """How many spares one function keeps, from its recent demand for new instances.

    Every start that needed a new instance (a spare taken, or a fork on the
    request path) is noted. The target is the base (1, or `prewarm`) plus
    `factor` (1) times the new instances needed in the last `window_s`, up to
    `max_spares`: a function whose concurrency is rising keeps spares ahead
    of it; a steady one falls back to the base as the window empties.
    """

    def __init__(self, window_s: float = 5.0, factor: float = 1.0,
                 max_spares: int = 16) -> None:
        self.factor = factor
        self.max_spares = max_spares
        self._needs = RecentEvents(window_s, math.ceil(4 * max_spares / max(factor, 1e-9)))

    def note_new_instance(self, now: float) -> None:
        self._needs.note(now)

    def target(self, now: float, base: int) -> int:
        extra = math.ceil(self._needs.count(now) * self.factor)
        return max(base, min(self.max_spares, base + extra))


class PoolSizer:
    """The warming pool's target size, from the recent rate of claims (sans-IO).

    Claims in the last `window_s` are counted. Above `grow_at` times the
    target, the target grows by one; below `shrink_at` times it, it shrinks by
    one (the gap between the two is the hysteresis); at most one step per
    `step_s`, always within [minimum, maximum].
    """

    def __init__(self, minimum: int, maximum: int, *, window_s: float = 10.0,
                 grow_at: float = 2.0, shrink_at: float = 0.5, step_s: float = 1.0) -> None:
        if not 0 <= minimum <= maximum:
            raise ValueError(f"need 0 <= minimum ({minimum}) <= maximum ({maximum})")
        if not shrink_at < grow_at:
            raise ValueError("shrink_at must be below grow_at")
        self.minimum = minimum
        self.maximum = maximum
        self.grow_at = grow_at
        self.shrink_at = shrink_at
        self.step_s = step_s
        self.current = minimum
        self._claims = RecentEvents(window_s, 100_000)  # a claim costs milliseconds
        self._last_step = -math.inf

    def note_claim(self, now: float) -> None:
        self._claims.note(now)

    def recent_claims(self, now: float) -> int:
        return self._claims.count(now)

    def target(self, now: float) -> int:
        claims = self.recent_claims(now)
        if now - self._last_step >= self.step_s:
            reference = max(self.current, 1)
            if claims > self.grow_at * reference and self.current < self.maximum:
                self.current += 1
                self._last_step = now
            elif claims < self.shrink_at * reference and self.current > self.minimum:
                self.current -= 1
                self._last_step = now
        return self.current


# A function's frequency class (noted per call), compiled.
FrequencyClass = _native.FrequencyClass


class Candidate(NamedTuple):
    """An instance that could be evicted to make room."""

    key: Any  # what the runtime retires
    function: str
    spare: bool
    idle_since: float
    memory: int  # bytes last measured


def eviction_order(candidates: Iterable[Candidate], *, need: int,
                   protect: str) -> list[Candidate]:
    """What to evict to free `need` bytes: idle warm instances of other
    functions, least recently used first, then spares (any function but
    `protect`'s). Returns [] if even all of them would not free enough (the
    caller refuses the start instead of evicting in vain)."""
    pool = [c for c in candidates if c.function != protect]
    order = sorted((c for c in pool if not c.spare), key=lambda c: c.idle_since)
    order += sorted((c for c in pool if c.spare), key=lambda c: c.idle_since)
    chosen: list[Candidate] = []
    freed = 0
    for c in order:
        if freed >= need:
            break
        chosen.append(c)
        freed += c.memory
    return chosen if freed >= need else []
