"""The sizing policy on made-up histories (sans-IO)."""

from __future__ import annotations

import random

import pytest

from fastfaas.config import FunctionConfig
from fastfaas.errors import InvalidRequestError
from fastfaas.runtime import sizing
from fastfaas.runtime.sizing import UsageSample

MB = 2**20


def runs(n: int, peak_mb: float, cpu_ms: float = 0.1, duration_ms: float = 10,
         outcome: str = "success", seed: int = 7, held_ms: float = 0) -> list[UsageSample]:
    rng = random.Random(seed)
    return [UsageSample(float(i), int(peak_mb * MB * rng.uniform(0.9, 1.0)),
                        int(cpu_ms * 1000), int(duration_ms * 1000), outcome, "warm",
                        0, int(held_ms * 1000))
            for i in range(n)]


def test_too_few_samples_keep_the_size() -> None:
    rec = sizing.recommend(runs(4, 50), 512)
    assert (rec.memory_mb, rec.change) == (512, "insufficient data")


def test_an_oversized_function_gets_the_p99_peak_with_headroom_rounded_up() -> None:
    rec = sizing.recommend(runs(100, 100), 1024)
    assert rec.change == "smaller"
    assert rec.memory_mb == 192  # 100 MB x 1.3 = 130 -> the next 64 MB step
    assert 90 <= rec.evidence["peak_p99_mb"] <= 100 and rec.evidence["samples"] == 100


def test_a_function_near_its_limit_gets_more_and_never_less_than_the_minimum() -> None:
    assert sizing.recommend(runs(50, 120), 128).memory_mb == 192
    assert sizing.recommend(runs(50, 120), 128).change == "larger"
    assert sizing.recommend(runs(50, 5), 128).memory_mb == 128  # the floor


def test_out_of_memory_above_the_rate_doubles_the_size() -> None:
    history = runs(95, 100) + runs(5, 128, outcome="OutOfMemory", seed=8)
    rec = sizing.recommend(history, 128)
    assert rec.change == "larger" and rec.memory_mb >= 256
    assert "ran out of memory" in rec.reason and rec.evidence["oom_rate"] == 0.05


def test_a_cpu_bound_function_is_told_how_much_faster_a_larger_size_is() -> None:
    # At 128 MB it gets 7.2 ms of CPU per 100 ms period: 100 ms of CPU take 1.2-1.4 s.
    share = 128 / sizing.VCPU_MB
    took = sizing.quota_ms(100, share)
    assert 1200 < took < 1400
    rec = sizing.recommend(runs(20, 40, cpu_ms=100, duration_ms=took, held_ms=took - 100), 128)
    # The smallest size (64 MB steps) within 10% of a full vCPU's 100 ms.
    assert rec.change == "larger" and 1024 < rec.memory_mb < 1769, rec
    assert sizing.quota_ms(100, rec.memory_mb / sizing.VCPU_MB) <= 110
    assert sizing.quota_ms(100, (rec.memory_mb - 64) / sizing.VCPU_MB) > 110
    assert "CPU-bound" in rec.reason and rec.faster_by > 11
    # The same CPU and duration, but the cgroup saw no throttling: its CPU was spread
    # over the call (the quota never met it), so a larger size would not be faster.
    spread = sizing.recommend(runs(20, 40, cpu_ms=100, duration_ms=took), 128)
    assert spread.change == "keep" and spread.faster_by == 1.0, spread
    idle = sizing.recommend(runs(20, 40, cpu_ms=1, duration_ms=100), 128)
    assert idle.memory_mb == 128 and idle.faster_by == 1.0


def at(samples: list[UsageSample], memory_mb: int) -> list[UsageSample]:
    return [UsageSample(s.time, s.peak_bytes, s.cpu_us, s.duration_us, s.outcome, s.start,
                        memory_mb, s.throttled_us) for s in samples]


def test_quota_ms_models_a_burst_under_the_cfs_quota() -> None:
    assert sizing.quota_ms(5, 0.1) == 5  # within a period's 10 ms, wherever it starts
    assert sizing.quota_ms(250, 1.0) == 250  # a whole vCPU is never throttled
    # 25 ms at 10 ms per period: from a period's start 10 + wait + 10 + wait + 5 = 205;
    # started near its end it gets the next period's quota at once (at best 115).
    assert 115 < sizing.quota_ms(25, 0.1) < 205
    # More CPU or less share: never faster.
    times = [sizing.quota_ms(c, s) for c in (10, 50, 200) for s in (0.5, 0.2, 0.07)]
    assert times[0:3] == sorted(times[0:3]) and times[6:9] == sorted(times[6:9])
    assert sizing.quota_ms(200, 0.07) > 2000  # ~29 periods


def test_a_smaller_size_may_not_slow_the_calls_by_more_than_a_tenth() -> None:
    # At 1024 MB (0.58 vCPU) a call burns 23 ms of CPU, then waits 77 ms. 128 MB would
    # hold its memory, but its 7.2 ms of quota per 100 ms period would stretch the burst
    # to 300 ms. 448 MB (25 ms per period) runs it unthrottled; 384 MB (21.7 ms) would
    # add a period: 78% slower.
    share = 1024 / sizing.VCPU_MB
    rec = sizing.recommend(runs(50, 60, cpu_ms=40 * share, duration_ms=100), 1024)
    assert rec.change == "smaller" and rec.memory_mb == 448, rec
    assert rec.evidence["cpu_floor_mb"] == 448 and "10% slower" in rec.reason
    # A function that waits far longer than it computes goes down to its memory's need.
    waits = sizing.recommend(runs(50, 60, cpu_ms=2, duration_ms=1000), 1024)
    assert waits.memory_mb == 128 and waits.evidence["cpu_floor_mb"] == 128
    # A CPU-bound function at a full vCPU goes down only as far as it stays within 10%
    # of that speed, and from there neither up nor down.
    full = sizing.recommend(runs(50, 60, cpu_ms=100, duration_ms=100), 1792)
    assert sizing.quota_ms(100, full.memory_mb / sizing.VCPU_MB) <= 110 < sizing.quota_ms(
        100, (full.memory_mb - 64) / sizing.VCPU_MB)
    assert sizing.auto_size(runs(50, 60, cpu_ms=100, duration_ms=100), 1792, None,
                            None) == (full.memory_mb, full.reason)
    took = sizing.quota_ms(100, full.memory_mb / sizing.VCPU_MB)
    there = runs(50, 60, cpu_ms=100, duration_ms=took, held_ms=took - 100)
    assert sizing.recommend(there, full.memory_mb).change == "keep"
    assert sizing.auto_size(there, full.memory_mb, None, None) is None
    # Short bursts (CPU time far above what the share would allow) do not meet the quota.
    burst = sizing.recommend(runs(50, 60, cpu_ms=1, duration_ms=0.1), 1024)
    assert burst.memory_mb == 128 and burst.evidence["cpu_floor_mb"] == 128


def test_cpu_evidence_comes_from_the_current_size_only() -> None:
    # CPU-bound at 128 MB; since moved to 1792 MB where no sample ran yet: no CPU claim.
    took = sizing.quota_ms(100, 128 / 1769)
    old = at(runs(50, 40, cpu_ms=100, duration_ms=took, held_ms=took - 100), 128)
    rec = sizing.recommend(old, 1792)
    assert rec.evidence["cpu_busy_p50"] == 0.0 and "CPU-bound" not in rec.reason
    # Peaks hold at any size: 40 MB -> the minimum, 128 MB.
    assert rec.memory_mb == 128 and rec.change == "smaller"
    # Samples from before sizes were recorded (0) count as the current size's.
    assert "CPU-bound" in sizing.recommend(at(old, 0), 128).reason


def test_auto_size_applies_the_recommendation_within_bounds() -> None:
    history = runs(60, 100)  # p99 ~100 MB -> 192 MB
    assert sizing.auto_size(history, 1024, None, None) == (192, sizing.recommend(
        history, 1024).reason)
    # min_memory_mb lifts it; max_memory_mb caps a larger size.
    assert sizing.auto_size(history, 1024, 512, None)[0] == 512  # type: ignore[index]
    size, why = sizing.auto_size(runs(60, 900), 512, None, 768)  # type: ignore[misc]
    assert size == 768 and "max_memory_mb" in why
    # Nothing to do: already there, too few samples, or a saving under 10%.
    assert sizing.auto_size(history, 192, None, None) is None
    assert sizing.auto_size(runs(3, 100), 1024, None, None) is None
    assert sizing.auto_size(runs(60, 180), 256, None, None) is None  # 256 -> 256: keep
    assert sizing.recommend(runs(60, 190), 320).memory_mb == 256  # 20% smaller:
    assert sizing.auto_size(runs(60, 190), 320, None, None) is not None  # applied
    # Out of memory: twice the size, whatever the peaks said.
    oom = runs(95, 100) + runs(5, 128, outcome="OutOfMemory", seed=8)
    assert sizing.auto_size(oom, 128, None, None)[0] >= 256  # type: ignore[index]


def test_auto_size_never_goes_below_the_p99_peak_with_headroom() -> None:
    # max_memory_mb below the need wins only as an explicit cap, and says so.
    assert sizing.auto_size(runs(60, 300), 256, None, 256) is None  # capped: no change
    size, _ = sizing.auto_size(runs(60, 300), 1024, 128, None) or (0, "")
    assert size == 448 and size >= 300 * 1.3  # min 128 does not pull it under the peak


def test_tune_report_trims_and_picks_the_best_size_per_strategy() -> None:
    # A CPU-bound function: duration falls with the share up to a vCPU, then stays.
    trials: dict[int, list[tuple[int, str | None]]] = {}
    for mb in (128, 512, 1024, 1769, 3008):
        base = 100_000 / min(1.0, mb / sizing.VCPU_MB)  # µs
        # One slow and one fast outlier each: trimmed away (20% of 5 = 1 each side).
        trials[mb] = [(int(base), None)] * 3 + [(int(base * 10), None), (int(base / 10), None)]
    report = sizing.tune_report(trials)
    by_mb = {s.memory_mb: s for s in report.sizes}
    assert [s.memory_mb for s in report.sizes] == [128, 512, 1024, 1769, 3008]
    assert by_mb[1769].duration_ms == 100.0 and by_mb[3008].duration_ms == 100.0
    assert by_mb[128].duration_ms == round(100 * sizing.VCPU_MB / 128, 3)
    assert by_mb[1769].cost_mb_s == 176.9 and len(by_mb[1769].durations_ms) == 5
    # Cost is flat up to a vCPU (equal within 1%: the fastest of those wins), speed is
    # best from a vCPU on (1769 and 3008 equal: the cheaper wins), balanced weighs both.
    flat = [by_mb[mb].cost_mb_s for mb in (128, 512, 1024, 1769)]
    assert max(flat) - min(flat) < 0.01 and by_mb[3008].cost_mb_s > 1.5 * max(flat)
    assert report.best == {"cost": 1769, "speed": 1769, "balanced": 1769}
    # Within 1% is a tie; beyond it the least wins.
    close = sizing.tune_report({128: [(1000, None)] * 5, 256: [(499, None)] * 5,
                                512: [(240, None)] * 5})
    costs = {s.memory_mb: s.cost_mb_s for s in close.sizes}  # 0.128, 0.1277, 0.1229
    assert close.best["cost"] == 512 and costs[512] < costs[256] * 0.99
    tied = sizing.tune_report({128: [(1000, None)] * 5, 256: [(500, None)] * 5,
                               512: [(252, None)] * 5})  # costs 0.128, 0.128, 0.129
    assert tied.best["cost"] == 512  # within 1%: the fastest


def test_a_size_with_errors_is_never_the_best() -> None:
    report = sizing.tune_report({128: [(1000, "OutOfMemory")] * 5,
                                 256: [(2000, None)] * 4 + [(2000, "Timeout")],
                                 512: [(3000, None)] * 5})
    assert report.best == {"cost": 512, "speed": 512, "balanced": 512}
    assert report.sizes[0].errors == {"OutOfMemory": 5}
    assert sizing.tune_report({128: [(1, "Crashed")] * 5}).best == {}


def test_out_of_memory_at_a_smaller_size_does_not_ratchet_the_size_up() -> None:
    # Round 1 at 128 MB: 5% of calls ran out of memory -> twice the size.
    first = at(runs(45, 100), 128) + at(runs(5, 128, outcome="OutOfMemory", seed=8), 128)
    assert sizing.auto_size(first, 128, None, None)[0] == 256  # type: ignore[index]
    # Round 2 at 256 MB, all well: the OutOfMemory at 128 MB is no reason to go on up.
    second = first + at(runs(50, 100, seed=9), 256)
    rec = sizing.recommend(second, 256)
    assert rec.change != "larger" and rec.evidence["oom_rate"] == 0.0, rec
    assert rec.evidence["samples_at_size"] == 50
    decided = sizing.auto_size(second, 256, None, None)
    assert decided is None or decided[0] <= 256
    # Their peaks (at the limit) still count: not back under what ran out.
    assert rec.memory_mb >= 128 * 1.3


def test_bounds_that_turn_a_larger_size_around_change_nothing() -> None:
    oom = runs(95, 100) + runs(5, 128, outcome="OutOfMemory", seed=8)
    assert sizing.auto_size(oom, 512, None, 256) is None  # max under the current size
    with pytest.raises(InvalidRequestError, match="above max_memory_mb"):
        FunctionConfig.create(handler="app.handler", min_memory_mb=512, max_memory_mb=256)
