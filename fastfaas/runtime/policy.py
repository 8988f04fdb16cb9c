"""Capacity policy as plain functions of state and time (sans-IO).

The runtime asks these what to do; they never touch a process or a clock of
their own, so they are tested under trio's autojump clock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from typing import Any

from fastfaas import _native

MIN_TICK_S = 0.005
MAX_TICK_S = 1.0


def reap_tick(timeouts: Iterable[float]) -> float:
    """How often the reaper looks: a quarter of the shortest timeout, within bounds."""
    shortest = min(timeouts, default=MAX_TICK_S * 4)
    return min(MAX_TICK_S, max(MIN_TICK_S, shortest / 4))


def expired_instances(
    table: _native.InstanceTable, slot: int, now: float, idle_timeout_s: float
) -> list[int]:
    """Warm idle instances of a slot idle for idle_timeout_s or longer, now DRAINING."""
    out = []
    cutoff = now - idle_timeout_s
    while (inst := table.pop_expired(slot, _native.KIND_WARM, cutoff)) is not None:
        out.append(inst)
    return out


def zygote_expired(
    *, last_used: float, now: float, zygote_idle_timeout_s: float, busy: int, warm: int
) -> bool:
    """A zygote with no busy or warm instances (spares don't count) past its idle timeout."""
    return busy == 0 and warm == 0 and now - last_used >= zygote_idle_timeout_s


def spare_deficit(*, target: int, idle_spares: int, spawning: int) -> int:
    """How many spares to fork now."""
    return max(0, target - idle_spares - spawning)


def spare_target(*, prewarm: int, spares: int) -> int:
    return max(prewarm, spares)


def pool_deficit(*, target: int, ready: int, forking: int) -> int:
    """How many generic zygotes the warming pool should fork now."""
    return max(0, target - ready - forking)


class Deadline:
    """One invocation's deadline in a Deadlines heap; `finish()` it when the call ends."""

    __slots__ = ("_owner", "at", "done", "key")

    def __init__(self, at: float, key: Any, owner: Deadlines) -> None:
        self.at = at
        self.key = key
        self.done = False
        self._owner = owner

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self._owner._live -= 1


class Deadlines:
    """Deadlines of invocations in flight: O(log n) to add, O(1) to finish.

    Finished entries are dropped lazily, when they reach the top, and the
    heap is rebuilt when they outnumber the live ones: otherwise a long
    `timeout_s` under load would pile up millions of finished entries for
    the watcher to pop at once. Heap items are (at, seq, entry) tuples, so
    comparisons run in C.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._live = 0

    def __len__(self) -> int:
        return self._live

    def push(self, at: float, key: Any) -> Deadline:
        entry = Deadline(at, key, self)
        heap = self._heap
        if len(heap) > 64 and len(heap) > 2 * self._live:
            heap[:] = [item for item in heap if not item[2].done]
            heapq.heapify(heap)
        heapq.heappush(heap, (at, next(self._seq), entry))
        self._live += 1
        return entry

    def _drop_done(self) -> None:
        heap = self._heap
        while heap and heap[0][2].done:
            heapq.heappop(heap)

    def next_deadline(self) -> float | None:
        """The earliest deadline of an unfinished invocation."""
        self._drop_done()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[Any]:
        """Keys of unfinished invocations whose deadline is <= now (finished)."""
        out = []
        self._drop_done()
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)[2]
            if not entry.done:
                entry.finish()
                out.append(entry.key)
            self._drop_done()
        return out
