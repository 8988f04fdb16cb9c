"""Memory sizing from observed usage (sans-IO: samples in, a recommendation out).

Every invocation leaves a `UsageSample` (peak memory and CPU time from its
cgroups, duration, outcome, start kind) in a bounded history per function
version. `recommend` turns a history into a size with its reason and its
evidence:

- the size that holds a high percentile of the observed peaks with headroom,
  rounded up to a step, never below the minimum;
- larger when OutOfMemory outcomes pass a rate;
- and at least the size whose CPU quota (proportional to memory, one vCPU at
  1769 MB) lets a call run within SLOWER_AT_MOST of its time at a full vCPU:
  larger when the cgroup's throttling counter shows the quota holding calls
  back by more than that (CPU-bound: how much faster it would be is
  estimated from the quota), never smaller than that;
- nothing (the current size) without enough samples.

The quota model (`quota_ms`) takes a call's CPU time as one burst that a share
of a vCPU stretches over CFS periods (on average over where in a period it
starts), and the rest of its duration as waiting.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from typing import Final

import msgspec

from fastfaas import errors
from fastfaas.runtime.cgroups import CFS_PERIOD_US

VCPU_MB: Final = 1769  # memory that buys one full vCPU (CPU share = memory / 1769 MB)
MIN_MB: Final = 128
MAX_MB: Final = 10240
STEP_MB: Final = 64
HEADROOM: Final = 1.3
PERCENTILE: Final = 99.0
MIN_SAMPLES: Final = 5
FAILURE_RATE: Final = 0.01  # OutOfMemory outcomes above this share: a larger size
HISTORY: Final = 2000  # samples kept per function version
PERIOD_MS: Final = CFS_PERIOD_US / 1000
SLOWER_AT_MOST: Final = 0.1  # a smaller size may slow calls (CPU quota) by this much
PHASES: Final = 16


class UsageSample(msgspec.Struct, frozen=True, array_like=True, gc=False):
    # gc=False: scalars only, no cycles; a server holds hundreds of thousands of these,
    # which the cyclic collector would otherwise walk at every full collection.
    time: float
    peak_bytes: int
    cpu_us: int
    duration_us: int
    outcome: str  # "success" or a function error kind
    start: str
    memory_mb: int = 0  # the size it ran at (0: recorded before sizes were kept)
    throttled_us: int = 0  # the time the CPU quota held it back (its cgroup's cpu.stat)


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


def quota_ms(cpu_ms: float, share: float) -> float:
    """How long `cpu_ms` of CPU in one burst takes, on average, under a quota of `share`
    of a vCPU per CFS period: the burst starts anywhere in a period (PHASES points),
    runs until that period's quota or the period ends, then gets `quota` per period."""
    quota = share * PERIOD_MS
    if cpu_ms <= quota or share >= 1.0:
        return cpu_ms
    total = 0.0
    for i in range(PHASES):
        left = PERIOD_MS * (PHASES - i - 0.5) / PHASES  # of the period the burst starts in
        first = min(quota, left)
        if cpu_ms <= first:
            total += cpu_ms
            continue
        rest = cpu_ms - first
        periods = math.ceil(rest / quota) - 1  # whole periods of quota, then the last bit
        total += left + periods * PERIOD_MS + (rest - periods * quota)
    return total / PHASES


def recommend(samples: Iterable[UsageSample], current_mb: int) -> Recommendation:
    got = list(samples)
    n = len(got)
    if n < MIN_SAMPLES:
        return Recommendation(current_mb, current_mb, "insufficient data",
                              f"{n} invocation(s) seen; {MIN_SAMPLES} are needed",
                              {"samples": float(n)})
    peaks = [s.peak_bytes / 2**20 for s in got if s.peak_bytes > 0]
    # Failure rates hold for the size they were seen at only (an OutOfMemory at 128 MB
    # says nothing about 256 MB; its peak, kept above, does).
    here = [s for s in got if s.memory_mb in (0, current_mb)]
    at_size = len(here)
    ooms = sum(1 for s in here if s.outcome == errors.OUT_OF_MEMORY)
    timeouts = sum(1 for s in here if s.outcome == errors.TIMEOUT)
    # CPU evidence holds for the size it was measured at only.
    ran = [s for s in here if s.duration_us > 0 and s.outcome != errors.OUT_OF_MEMORY]
    share = cpu_share(current_mb)
    busy = [s.cpu_us / (s.duration_us * share) for s in ran]
    evidence: dict[str, float] = {
        "samples": float(n),
        "peak_p50_mb": round(_percentile(peaks, 50), 1) if peaks else 0.0,
        "peak_p99_mb": round(_percentile(peaks, PERCENTILE), 1) if peaks else 0.0,
        "peak_max_mb": round(max(peaks), 1) if peaks else 0.0,
        "samples_at_size": float(at_size),
        "oom_rate": round(ooms / at_size, 4) if at_size else 0.0,
        "timeout_rate": round(timeouts / at_size, 4) if at_size else 0.0,
        "cpu_busy_p50": round(_percentile(busy, 50), 3) if busy else 0.0,
    }
    if evidence["oom_rate"] > FAILURE_RATE:
        size = _round_up(max(current_mb * 2, evidence["peak_max_mb"] * HEADROOM))
        return Recommendation(size, current_mb, "larger",
                              f"{ooms} of {at_size} invocations ran out of memory at"
                              f" {current_mb} MB", evidence)
    by_memory = _round_up(evidence["peak_p99_mb"] * HEADROOM)
    # The CPU quota: a call's CPU comes as a burst, which a share of a vCPU stretches
    # over CFS periods (quota_ms). Its time besides that burst is waiting; at a full
    # vCPU the call would take waiting + CPU. The size asked for is the smallest that
    # holds the memory and runs within SLOWER_AT_MOST of that: larger when the quota
    # holds the call back more (CPU-bound), smaller when it would not.
    cpu_ms = _percentile([s.cpu_us / 1000 for s in ran], 50) if ran else 0.0
    duration_ms = _percentile([s.duration_us / 1000 for s in ran], 50) if ran else 0.0
    held_ms = _percentile([s.throttled_us / 1000 for s in ran], 50) if ran else 0.0
    # The cgroup says how long the quota held a call back; the model, how long it
    # would at another size (it takes the CPU as one burst: spread thin, the CPU
    # meets the quota less, so the floor errs on the safe side).
    waiting = max(0.0, duration_ms - cpu_ms - held_ms)
    target_ms = (waiting + cpu_ms) * (1 + SLOWER_AT_MOST)
    size = by_memory
    while size < MAX_MB and waiting + quota_ms(cpu_ms, cpu_share(size)) > target_ms:
        size += STEP_MB
    evidence["cpu_ms_p50"] = round(cpu_ms, 3)
    evidence["duration_ms_p50"] = round(duration_ms, 3)
    evidence["throttled_ms_p50"] = round(held_ms, 3)
    evidence["full_vcpu_ms"] = round(waiting + cpu_ms, 3)
    evidence["cpu_floor_mb"] = float(size)
    # CPU-bound: the quota measurably held the calls back, by more than the margin.
    if ran and held_ms > SLOWER_AT_MOST * (waiting + cpu_ms) and size > current_mb:
        faster = round(duration_ms / (waiting + quota_ms(cpu_ms, cpu_share(size))), 2)
        why = (f"CPU-bound: the CPU quota held its calls back {held_ms:.0f} ms of"
               f" {duration_ms:.0f} ms at {current_mb} MB ({share:.2f} vCPU); at {size} MB"
               f" ({cpu_share(size):.2f} vCPU) about {duration_ms / faster:.0f} ms")
        if evidence["timeout_rate"] > FAILURE_RATE:
            why += f"; {timeouts} of {at_size} invocations timed out"
        return Recommendation(size, current_mb, "larger", why, evidence, faster)
    if by_memory > current_mb:
        return Recommendation(by_memory, current_mb, "larger",
                              f"the p99 peak, {evidence['peak_p99_mb']} MB, with"
                              f" {HEADROOM - 1:.0%} headroom does not fit {current_mb} MB",
                              evidence)
    if size < current_mb:
        why = (f"the p99 peak is {evidence['peak_p99_mb']} MB: {by_memory} MB holds it with"
               f" {HEADROOM - 1:.0%} headroom")
        if size > by_memory:
            why += (f"; below {size} MB its {cpu_ms:.0f} ms of CPU per call would make it"
                    f" more than {SLOWER_AT_MOST:.0%} slower than at a full vCPU (CPU quota)")
        return Recommendation(size, current_mb, "smaller", why, evidence)
    why = f"the p99 peak, {evidence['peak_p99_mb']} MB, with headroom fits {current_mb} MB"
    if by_memory < current_mb:
        why = (f"the p99 peak, {evidence['peak_p99_mb']} MB, needs only {by_memory} MB, but"
               f" at a smaller size its {cpu_ms:.0f} ms of CPU per call would make it more"
               f" than {SLOWER_AT_MOST:.0%} slower than at a full vCPU (CPU quota)")
    return Recommendation(current_mb, current_mb, "keep", why, evidence)


# --- auto-apply ---------------------------------------------------------------------

AUTO_AFTER: Final = 50  # qualifying invocations (at the current size) before a change
SHRINK_AT_LEAST: Final = 0.1  # a smaller size is applied when it saves this share or more


class SizeChange(msgspec.Struct, frozen=True):
    """One size applied by auto_size: when, from what to what, and why."""

    time: float
    version: str
    from_mb: int
    to_mb: int
    reason: str
    samples: int


def auto_size(samples: Iterable[UsageSample], current_mb: int, min_mb: int | None,
              max_mb: int | None, rec: Recommendation | None = None) -> tuple[int, str] | None:
    """The size to apply now and why, or None to keep the current one.

    The recommendation, bounded by `min_mb`/`max_mb` and never below the observed
    p99 peak with headroom (unless `max_mb` says so); a smaller size only when it
    saves at least SHRINK_AT_LEAST (each change starts a new zygote). `rec`: the
    recommendation for these samples, if already made.
    """
    if rec is None:
        rec = recommend(samples, current_mb)
    if rec.change not in ("larger", "smaller") or 1.0 < rec.faster_by < 1 + SLOWER_AT_MOST:
        return None  # (more memory for a little speed: not worth a new zygote)
    floor = _round_up(rec.evidence["peak_p99_mb"] * HEADROOM)
    hi = max_mb or MAX_MB
    target = min(max(rec.memory_mb, floor, min_mb or MIN_MB), hi)
    if target == current_mb or (
            target < current_mb and current_mb - target < SHRINK_AT_LEAST * current_mb):
        return None
    if (target > current_mb) != (rec.memory_mb > current_mb):
        return None  # the bounds turn it around (max_memory_mb under the current size)
    reason = rec.reason
    if target != rec.memory_mb:
        reason += (f" (bounded: {target} MB by max_memory_mb)" if target == hi
                   else f" (bounded: {target} MB by min_memory_mb or the p99 peak)")
    return target, reason


# --- tuning runs ----------------------------------------------------------------------

TUNE_SIZES: Final = (128, 256, 512, 1024, 1769, 3008)  # Power Tuning's usual list
TUNE_RUNS: Final = 5
TUNE_MAX_RUNS: Final = 1000
TUNE_MAX_SIZES: Final = 32
TRIM: Final = 0.2  # the fastest and slowest 20% of each size's runs are dropped
STRATEGIES: Final = ("cost", "speed", "balanced")
TIE: Final = 0.01  # costs or durations within 1% of the best are equal


class TuneSize(msgspec.Struct, frozen=True):
    memory_mb: int
    runs: int
    errors: dict[str, int]  # error kind -> count; a size with any is never "best"
    duration_ms: float  # the mean of the runs kept after trimming
    cost_mb_s: float  # duration x memory: MB-seconds per invocation
    durations_ms: list[float]  # every run, in order


class TuneReport(msgspec.Struct, frozen=True):
    sizes: list[TuneSize]
    best: dict[str, int]  # strategy -> memory_mb (missing: no size ran without errors)
    trim: float = TRIM
    stopped: str = ""  # why it ended before every size ran (the rest are missing)


def _trimmed_mean(values: list[float]) -> float:
    s = sorted(values)
    k = int(len(s) * TRIM)
    kept = s[k:len(s) - k] or s
    return sum(kept) / len(kept)


def tune_report(trials: dict[int, list[tuple[int, str | None]]]) -> TuneReport:
    """Per size, (handler duration in µs, error kind or None) for each run → the table
    and the best size per strategy: the least cost (the fastest of those within 1%),
    the least duration (the cheapest of those within 1%), and "balanced", the least
    sum of cost and duration each divided by its best."""
    sizes: list[TuneSize] = []
    for mb in sorted(trials):
        runs = trials[mb]
        ms = [d / 1000 for d, _ in runs]
        failed: dict[str, int] = {}
        for _, kind in runs:
            if kind is not None:
                failed[kind] = failed.get(kind, 0) + 1
        mean = round(_trimmed_mean(ms), 3) if ms else 0.0
        sizes.append(TuneSize(mb, len(runs), failed, mean, round(mean / 1000 * mb, 4),
                              [round(x, 3) for x in ms]))
    ok = [s for s in sizes if not s.errors and s.runs]
    best: dict[str, int] = {}
    if ok:
        least_cost = min(s.cost_mb_s for s in ok) or 1e-9
        least_time = min(s.duration_ms for s in ok) or 1e-9
        # Within TIE of the best is a tie (noise): the cost's go to the faster size, the
        # speed's to the cheaper.
        cheap = [s for s in ok if s.cost_mb_s <= least_cost * (1 + TIE)]
        fast = [s for s in ok if s.duration_ms <= least_time * (1 + TIE)]
        best["cost"] = min(cheap, key=lambda s: s.duration_ms).memory_mb
        best["speed"] = min(fast, key=lambda s: s.cost_mb_s).memory_mb
        best["balanced"] = min(ok, key=lambda s: s.cost_mb_s / least_cost
                               + s.duration_ms / least_time).memory_mb
    return TuneReport(sizes, best)
