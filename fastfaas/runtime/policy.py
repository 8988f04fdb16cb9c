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


class ConcurrencyLimits:
    """A server-wide concurrency limit with per-function reservations (sans-IO).

    As on Lambda: a function with `reserved_concurrency` R has R executions
    held for it, which the others cannot take, and R is also its cap; the
    others share what is left (the limit minus every reservation). A
    function's `max_concurrency` caps it further. Counts are per function
    name, across its versions.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the concurrency limit must be >= 1, not {limit}")
        self.limit = limit
        self._reserved: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}
        self._unreserved_in_use = 0
        self.unreserved = limit  # executions the functions without a reservation share

    @property
    def reserved_total(self) -> int:
        return self.limit - self.unreserved

    def check_reservation(self, name: str, reserved: int | None) -> str | None:
        """Why `reserved` cannot be given to `name` (None: it can)."""
        if not reserved:
            return None
        others = self.reserved_total - self._reserved.get(name, 0)
        if others + reserved > self.limit:
            return (f"reserved_concurrency {reserved} is more than what is left to reserve:"
                    f" the server's limit is {self.limit} and {others} is reserved by other"
                    " functions")
        return None

    def set_reservation(self, name: str, reserved: int | None) -> None:
        """Raises ValueError when the reservation does not fit (see check_reservation)."""
        why = self.check_reservation(name, reserved)
        if why is not None:
            raise ValueError(why)
        in_flight = self._in_flight.get(name, 0)
        was_reserved = name in self._reserved
        if reserved:
            self._reserved[name] = reserved
        else:
            self._reserved.pop(name, None)
        now_reserved = name in self._reserved
        self.unreserved = self.limit - sum(self._reserved.values())
        if was_reserved != now_reserved:  # its calls in flight move between the pools
            self._unreserved_in_use += -in_flight if now_reserved else in_flight

    def forget(self, name: str) -> None:
        self.set_reservation(name, None)

    def try_acquire(self, name: str, max_concurrency: int | None) -> str | None:
        """Take one execution for `name`; the reason it is refused, or None."""
        in_flight = self._in_flight.get(name, 0)
        if max_concurrency is not None and in_flight >= max_concurrency:
            return f"function {name!r} is at its max_concurrency ({max_concurrency})"
        reserved = self._reserved.get(name)
        if reserved is not None:
            if in_flight >= reserved:
                return f"function {name!r} is at its reserved_concurrency ({reserved})"
        elif self._unreserved_in_use >= self.unreserved:
            return (f"the server is at its concurrency limit ({self.unreserved} executions for"
                    " functions without a reservation)")
        else:
            self._unreserved_in_use += 1
        self._in_flight[name] = in_flight + 1
        return None

    def release(self, name: str) -> None:
        in_flight = self._in_flight.get(name, 0) - 1
        if in_flight < 0:
            raise RuntimeError(f"release without acquire for {name!r}")
        if in_flight:
            self._in_flight[name] = in_flight
        else:
            del self._in_flight[name]
        if name not in self._reserved:
            self._unreserved_in_use -= 1

    def in_flight(self, name: str) -> int:
        return self._in_flight.get(name, 0)

    def statistics(self) -> dict[str, int]:
        return {"limit": self.limit, "reserved": self.reserved_total,
                "unreserved_in_use": self._unreserved_in_use,
                "in_flight": sum(self._in_flight.values())}


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

    def count(self, now: float, event: float | None = None) -> int:
        """Events in (now - window_s, now]; `event`: note one at that time first."""
        cutoff = now - self.window_s
        times = self._times
        if event is not None:
            times.append(event)
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


class FrequencyClass:
    """Is a function `frequent` or `infrequent`? From its recent rate and in-flight
    count, with hysteresis (sans-IO).

    It becomes frequent when its rate over `window_s` reaches `promote_per_s`,
    or at once when `burst_in_flight` of its calls are in flight; it becomes
    infrequent again only below `demote_per_s` with fewer calls in flight
    than that, and not before a whole window has passed since it last changed
    (or was created: the runtime creates a just-deployed function frequent, as
    a call is likely soon).
    """

    def __init__(self, window_s: float = 10.0, promote_per_s: float = 1.0,
                 demote_per_s: float = 0.2, burst_in_flight: int = 2, *,
                 frequent: bool = False, since: float = -math.inf) -> None:
        if not demote_per_s < promote_per_s:
            raise ValueError("demote_per_s must be below promote_per_s")
        self.window_s = window_s
        self.promote_per_s = promote_per_s
        self.demote_per_s = demote_per_s
        self.burst_in_flight = burst_in_flight
        self.frequent = frequent
        self._since = since
        self._calls = RecentEvents(window_s, max(8, math.ceil(4 * promote_per_s * window_s)))

    def rate(self, now: float) -> float:
        return self._calls.count(now) / self.window_s

    def note_call(self, now: float, in_flight: int) -> bool:
        """A call arrives with `in_flight` calls of the function running (itself
        included); returns whether the function is frequent now."""
        return self.update(now, in_flight, now)

    def update(self, now: float, in_flight: int, call: float | None = None) -> bool:
        """Whether the function is frequent now; `call`: note a call at that time
        first (`note_call`, in one step: this runs per call)."""
        calls = self._calls.count(now, call)
        rate = calls / self.window_s
        if not self.frequent:
            # At least two calls: one call in a short window is no rate.
            if (calls >= max(2, self.promote_per_s * self.window_s)
                    or in_flight >= self.burst_in_flight):
                self.frequent = True
                self._since = now
        elif (rate < self.demote_per_s and in_flight < self.burst_in_flight
              and now - self._since >= self.window_s):
            self.frequent = False
            self._since = now
        return self.frequent


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
