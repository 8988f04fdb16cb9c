"""Memory sizing from observed usage (sans-IO: samples in, a recommendation out).

Every invocation leaves a `UsageSample` (peak memory and CPU time from its
cgroups, duration, outcome, start kind) in a bounded history per function
version. `recommend` turns a history into a size with its reason and its
evidence:

- the size that holds a high percentile of the observed peaks with headroom,
  rounded up to a step, never below the minimum;
- larger when OutOfMemory (or, CPU-bound, Timeout) outcomes pass a rate;
- CPU-bound (CPU time close to duration x the CPU share this size gets: the
  quota holds it back): a larger size is faster, by the ratio of CPU shares,
  up to one vCPU;
- nothing (the current size) without enough samples.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Final

import msgspec

from fastfaas import errors

VCPU_MB: Final = 1769  # memory that buys one full vCPU (CPU share = memory / 1769 MB)
MIN_MB: Final = 128
MAX_MB: Final = 10240
STEP_MB: Final = 64
HEADROOM: Final = 1.3
PERCENTILE: Final = 99.0
MIN_SAMPLES: Final = 5
FAILURE_RATE: Final = 0.01  # OutOfMemory outcomes above this share: a larger size
CPU_BOUND: Final = 0.8  # CPU time / (duration x CPU share) between these: held by the quota
CPU_CAPPED: Final = 2.0  # (CPU counts the whole call, duration the handler: short calls
#                           run a little ahead; a burst under one period runs at 1/share)
HISTORY: Final = 2000  # samples kept per function version


class UsageSample(msgspec.Struct, frozen=True, array_like=True):
    time: float
    peak_bytes: int
    cpu_us: int
    duration_us: int
    outcome: str  # "success" or a function error kind
    start: str


class Recommendation(msgspec.Struct, frozen=True):
    memory_mb: int  # what to configure
    current_mb: int
    change: str  # "larger", "smaller", "keep", "insufficient data"
    reason: str
    evidence: dict[str, float]
    faster_by: float = 1.0  # CPU-bound: the expected speed-up at memory_mb


def history() -> collections.deque[UsageSample]:
    return collections.deque(maxlen=HISTORY)


def cpu_share(memory_mb: int) -> float:
    """The vCPUs a size gets under the CPU-quota rule (at most one here)."""
    return min(1.0, memory_mb / VCPU_MB)


def _round_up(mb: float) -> int:
    return int(min(MAX_MB, max(MIN_MB, math.ceil(mb / STEP_MB) * STEP_MB)))


def _percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def recommend(samples: Iterable[UsageSample], current_mb: int) -> Recommendation:
    got = list(samples)
    n = len(got)
    if n < MIN_SAMPLES:
        return Recommendation(current_mb, current_mb, "insufficient data",
                              f"{n} invocation(s) seen; {MIN_SAMPLES} are needed",
                              {"samples": float(n)})
    peaks = [s.peak_bytes / 2**20 for s in got if s.peak_bytes > 0]
    ooms = sum(1 for s in got if s.outcome == errors.OUT_OF_MEMORY)
    timeouts = sum(1 for s in got if s.outcome == errors.TIMEOUT)
    ran = [s for s in got if s.duration_us > 0 and s.outcome != errors.OUT_OF_MEMORY]
    share = cpu_share(current_mb)
    busy = [s.cpu_us / (s.duration_us * share) for s in ran]
    evidence: dict[str, float] = {
        "samples": float(n),
        "peak_p50_mb": round(_percentile(peaks, 50), 1) if peaks else 0.0,
        "peak_p99_mb": round(_percentile(peaks, PERCENTILE), 1) if peaks else 0.0,
        "peak_max_mb": round(max(peaks), 1) if peaks else 0.0,
        "oom_rate": round(ooms / n, 4),
        "timeout_rate": round(timeouts / n, 4),
        "cpu_busy_p50": round(_percentile(busy, 50), 3) if busy else 0.0,
    }
    if ooms / n > FAILURE_RATE:
        size = _round_up(max(current_mb * 2, evidence["peak_max_mb"] * HEADROOM))
        return Recommendation(size, current_mb, "larger",
                              f"{ooms} of {n} invocations ran out of memory at"
                              f" {current_mb} MB", evidence)
    # The quota binds when a call's CPU time per second of duration sits at this size's
    # share: a short burst under one quota period gets a whole CPU (busy well above 1)
    # and would gain nothing from a larger size.
    cpu_bound = bool(busy) and CPU_BOUND <= evidence["cpu_busy_p50"] <= CPU_CAPPED \
        and share < 1.0
    by_memory = _round_up(evidence["peak_p99_mb"] * HEADROOM)
    if cpu_bound:
        # More memory buys CPU: the smallest size with a full vCPU, if the memory
        # rule asks for less.
        size = max(by_memory, _round_up(VCPU_MB))
        faster = round(cpu_share(size) / share, 2)
        why = (f"CPU-bound: its CPU time is {evidence['cpu_busy_p50']:.0%} of what"
               f" {current_mb} MB allows ({share:.2f} vCPU); at {size} MB it gets"
               f" {cpu_share(size):.2f} vCPU")
        if timeouts / n > FAILURE_RATE:
            why += f"; {timeouts} of {n} invocations timed out"
        return Recommendation(size, current_mb, "larger" if size > current_mb else "keep",
                              why, evidence, faster)
    if by_memory > current_mb:
        return Recommendation(by_memory, current_mb, "larger",
                              f"the p99 peak, {evidence['peak_p99_mb']} MB, with"
                              f" {HEADROOM - 1:.0%} headroom does not fit {current_mb} MB",
                              evidence)
    if by_memory < current_mb:
        return Recommendation(by_memory, current_mb, "smaller",
                              f"the p99 peak is {evidence['peak_p99_mb']} MB: {by_memory} MB"
                              f" holds it with {HEADROOM - 1:.0%} headroom", evidence)
    return Recommendation(current_mb, current_mb, "keep",
                          f"the p99 peak, {evidence['peak_p99_mb']} MB, with headroom fits"
                          f" {current_mb} MB", evidence)
