"""The sizing policy on made-up histories (sans-IO)."""

from __future__ import annotations

import random

from fastfaas.runtime import sizing
from fastfaas.runtime.sizing import UsageSample

MB = 2**20


def runs(n: int, peak_mb: float, cpu_ms: float = 0.1, duration_ms: float = 10,
         outcome: str = "success", seed: int = 7) -> list[UsageSample]:
    rng = random.Random(seed)
    return [UsageSample(float(i), int(peak_mb * MB * rng.uniform(0.9, 1.0)),
                        int(cpu_ms * 1000), int(duration_ms * 1000), outcome, "warm")
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
    # At 128 MB it gets 128/1769 of a CPU; it uses all of it.
    share = 128 / sizing.VCPU_MB
    rec = sizing.recommend(runs(20, 40, cpu_ms=100 * share, duration_ms=100), 128)
    assert rec.change == "larger" and rec.memory_mb == 1792  # a full vCPU, in 64 MB steps
    assert "CPU-bound" in rec.reason and rec.faster_by > 13
    idle = sizing.recommend(runs(20, 40, cpu_ms=1, duration_ms=100), 128)
    assert idle.memory_mb == 128 and idle.faster_by == 1.0
