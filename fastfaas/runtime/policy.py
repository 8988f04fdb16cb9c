"""Capacity policy as plain functions of state and time (sans-IO).

The runtime asks these what to do; they never touch a process or a clock of
their own, so they are tested under trio's autojump clock.
"""

from __future__ import annotations

from collections.abc import Iterable

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
