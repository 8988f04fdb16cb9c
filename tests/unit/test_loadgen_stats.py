"""The load generator's statistics against known distributions (fastfaas/loadgen/hist.py, dist.py).

Every generator is seeded, so each run draws the same numbers; the
statistical bounds are still set wide (about 6 sigma, or a 1e-9 tail), so a
different seed or Python's random module changing its streams would not make
them fail by chance. Each bound's derivation is next to it.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable, Iterator
from fractions import Fraction

import pytest

from fastfaas.loadgen.dist import Zipf, poisson_arrivals
from fastfaas.loadgen.hist import Histogram

PS = (0.0, 0.1, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0)
HOUR_US = 3_600_000_000


def nearest_rank(p: float, n: int) -> int:
    """The 1-based rank of percentile p among n samples, by exact decimal arithmetic."""
    return max(1, math.ceil(Fraction(str(p)) * n / 100))


def within_precision(reported: int, exact: int, digits: int) -> bool:
    """reported is no smaller than exact and within a relative 10**-digits of it."""
    return exact <= reported and (reported - exact) * 10**digits <= exact


def record_all(values: list[int], digits: int = 3, highest: int = HOUR_US) -> Histogram:
    h = Histogram(digits=digits, highest=highest)
    for v in values:
        h.record(v)
    return h


def record_corrected_naively(h: Histogram, value: int, interval: int) -> None:
    """HdrHistogram's recordValueWithExpectedInterval, one term at a time."""
    h.record(value)
    missing = value - interval
    while missing >= interval:
        h.record(missing)
        missing -= interval


# --- percentiles against exact order statistics -------------------------------

SAMPLES: dict[str, Callable[[random.Random], int]] = {
    "uniform": lambda rng: rng.randrange(0, 10_000_000),  # 0..10 s
    "exponential": lambda rng: int(rng.expovariate(1 / 2_000)),  # mean 2 ms
}


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_percentiles_match_order_statistics(kind: str, digits: int) -> None:
    rng = random.Random(f"{kind}-{digits}")
    values = [SAMPLES[kind](rng) for _ in range(50_000)]
    h = record_all(values, digits)
    ordered = sorted(values)
    got = h.percentiles(PS)
    assert set(got) == set(PS)
    for p in PS:
        exact = ordered[nearest_rank(p, len(values)) - 1]
        assert within_precision(got[p], exact, digits), (p, got[p], exact)
        # The reported value is the order statistic's slot's highest value (capped at the max).
        if p > 0:
            assert got[p] == min(h.highest_equivalent(exact), h.max)
        assert h.percentile(p) == got[p]
    assert got[0.0] == h.min == ordered[0]
    assert got[100.0] == h.max == ordered[-1]
    assert h.total == len(values)
    assert h.mean == pytest.approx(sum(values) / len(values), rel=1e-12)


def test_percentile_ranks_are_exact_for_decimal_percentiles() -> None:
    # 1000 distinct values 1..1000: p99.9 is the 999th, p0.1 the 1st, p50 the 500th.
    h = record_all(list(range(1, 1001)))
    assert h.percentiles([0.1, 50.0, 99.9, 99.95]) == {0.1: 1, 50.0: 500, 99.9: 999, 99.95: 1000}
    # 1..21: p10 is the 3rd (ceil(2.1)), not the 2nd (round(2.1)).
    assert record_all(list(range(1, 22))).percentile(10) == 3


# --- the bucket scheme's precision --------------------------------------------


def magnitudes(seed: int) -> list[int]:
    """Values from 1 us to 1 h: powers of ten, around powers of two, and log-uniform draws."""
    rng = random.Random(seed)
    values = {10**k for k in range(10)} | {HOUR_US, 1, 2}
    for k in range(1, 32):
        values |= {2**k - 1, 2**k, 2**k + 1}
    values |= {int(math.exp(rng.uniform(0, math.log(HOUR_US)))) for _ in range(60)}
    return sorted(v for v in values if 1 <= v <= HOUR_US)


@pytest.mark.parametrize("digits", [1, 2, 3, 4, 5])
def test_record_and_percentile_precision_from_1us_to_1h(digits: int) -> None:
    values = magnitudes(digits)
    h = record_all(values, digits)
    for v in values:
        lo, hi = h.lowest_equivalent(v), h.highest_equivalent(v)
        assert lo <= v <= hi
        # The whole slot is within the precision of its lowest value.
        assert (hi - lo) * 10**digits <= lo, (v, lo, hi)
    # Each value read back at its own rank i of n, as percentile 100 * i / n.
    n = len(values)
    ranks = {100 * i / n: v for i, v in enumerate(values, start=1)}
    got = h.percentiles(list(ranks))
    for p, v in ranks.items():
        assert got[p] == min(h.highest_equivalent(v), h.max), (p, v)
        assert within_precision(got[p], v, digits), (p, v, got[p])
    assert h.percentile(0) == h.min == 1
    # Below 2 * 10**digits every value has its own slot.
    for v in range(0, 2 * 10**digits, max(1, 10**digits // 100)):
        assert h.lowest_equivalent(v) == v == h.highest_equivalent(v)


@pytest.mark.parametrize("digits", [1, 2])
def test_slots_tile_the_range_without_gaps(digits: int) -> None:
    h = Histogram(digits=digits, highest=1 << 16)
    v = 0
    while v <= 1 << 16:
        lo, hi = h.lowest_equivalent(v), h.highest_equivalent(v)
        assert lo == v <= hi, v  # each slot starts where the previous one ended
        assert (hi - lo) * 10**digits <= lo
        for inside in (lo, (lo + hi) // 2, hi):
            assert h.lowest_equivalent(inside) == lo and h.highest_equivalent(inside) == hi
        v = hi + 1


# --- merge, serialisation ---------------------------------------------------------


def two_samples() -> tuple[list[int], list[int]]:
    rng = random.Random(7)
    a = [int(rng.expovariate(1 / 500)) for _ in range(20_000)]
    b = [rng.randrange(0, 2 * HOUR_US) for _ in range(5_000)]  # about half clamped
    return a, b


def test_merge_equals_recording_everything_into_one() -> None:
    a, b = two_samples()
    merged = record_all(a)
    merged.merge(record_all(b))
    together = record_all(a + b)
    assert merged.to_dict() == together.to_dict()
    assert merged.clamped == sum(v > HOUR_US for v in b) > 0
    assert merged.percentiles(PS) == together.percentiles(PS)
    # Merging an empty one changes nothing; merging into an empty one copies.
    merged.merge(Histogram())
    assert merged.to_dict() == together.to_dict()
    empty = Histogram()
    empty.merge(together)
    assert empty.to_dict() == together.to_dict()


@pytest.mark.parametrize("other", [Histogram(digits=2), Histogram(highest=1000)])
def test_merge_refuses_different_parameters(other: Histogram) -> None:
    with pytest.raises(ValueError, match="same parameters"):
        Histogram().merge(other)


def test_to_dict_from_dict_round_trip_through_json() -> None:
    a, b = two_samples()
    h = record_all(a + b, digits=4)
    h.record_corrected(123_456, 1_000)
    d = json.loads(json.dumps(h.to_dict()))
    back = Histogram.from_dict(d)
    assert back.to_dict() == h.to_dict() == d
    assert (back.total, back.min, back.max, back.mean, back.clamped) == (
        h.total, h.min, h.max, h.mean, h.clamped)
    assert back.percentiles(PS) == h.percentiles(PS)
    assert back.cdf() == h.cdf()
    assert set(d) == {"digits", "highest", "total", "min", "max", "sum", "clamped", "buckets"}
    assert all(count > 0 for _, count in d["buckets"])


def test_from_dict_rejects_what_to_dict_cannot_produce() -> None:
    good = record_all([1, 5000, 5001]).to_dict()
    assert good["buckets"] == [[1, 1], [5000, 2]]  # 5000 and 5001 share a 4-wide slot
    with pytest.raises(ValueError, match="bad bucket"):
        Histogram.from_dict({**good, "buckets": [[1, 1], [5001, 2]]})  # not a slot's lowest
    with pytest.raises(ValueError, match="bad bucket"):
        Histogram.from_dict({**good, "buckets": [[1, 1], [5000, 0], [5002, 2]]})
    with pytest.raises(ValueError, match="add up"):
        Histogram.from_dict({**good, "total": 4})
    with pytest.raises(ValueError, match="not a histogram"):
        Histogram.from_dict({k: v for k, v in good.items() if k != "sum"})


def test_json_stays_sparse_for_a_million_samples() -> None:
    rng = random.Random(1)
    h = Histogram()
    for _ in range(1_000_000):
        h.record(int(rng.expovariate(1 / 1_000)) + 50)  # 50 us + exponential of mean 1 ms
    text = json.dumps(h.to_dict(), separators=(",", ":"))
    # At most one entry per slot between min and max: 2048 unit slots below
    # 2048 us, then 1024 per doubling (max is about 50 + 1000 * ln(1e6) = 14 ms,
    # so 3 doublings up to 16 ms): <= 5120 entries of at most 14 bytes
    # ("[16383,999999],") plus the header, about 72 KB; the samples as a JSON
    # list would be about 5 MB.
    slots_spanned = 2048 + 1024 * math.ceil(math.log2(h.max / 2048))
    assert len(h.to_dict()["buckets"]) <= slots_spanned
    assert len(text) <= slots_spanned * 15 + 200 < 100_000


# --- coordinated-omission correction ------------------------------------------


def test_one_stall_with_correction_fills_in_the_requests_it_held_up() -> None:
    ms = 1_000
    plain, corrected = Histogram(), Histogram()
    for h in (plain, corrected):
        for _ in range(10_000):
            h.record_corrected(ms, ms)  # on time: nothing to add
    plain.record(1_000 * ms)
    corrected.record_corrected(1_000 * ms, ms)
    # The stall is the sample, plus 999 the sender should have sent during it:
    # 999, 998, ..., 1 ms. So 10,001 at 1 ms and one each at 2..1000 ms.
    assert plain.total == 10_001
    assert corrected.total == 11_000
    assert sum(c for v, c in corrected.to_dict()["buckets"] if v <= ms) == 10_001
    assert corrected.min == ms and corrected.max == 1_000 * ms
    assert corrected.mean == pytest.approx((10_001 * ms + ms * (1001 * 1000 // 2 - 1)) / 11_000)
    # p99 without correction: rank 9,901 of 10,001 is 1 ms. With it: rank
    # ceil(0.99 * 11,000) = 10,890; ranks 10,002.. are 2, 3, ... ms, so rank
    # 10,890 is 890 ms.
    assert plain.percentile(99) == ms
    assert corrected.percentile(99) == corrected.highest_equivalent(890 * ms)
    assert within_precision(corrected.percentile(99), 890 * ms, 3)
    # The median stays at 1 ms: ranks up to 10,001 of 11,000 are.
    assert corrected.percentile(50) == ms
    assert corrected.percentile(90) == ms  # rank 9,900


def test_correction_in_bulk_equals_recording_each_term() -> None:
    rng = random.Random(3)
    for _ in range(30):
        highest = rng.choice([50_000, HOUR_US])
        bulk, naive = Histogram(highest=highest), Histogram(highest=highest)
        for _ in range(3):
            value, interval = rng.randrange(0, 200_000), rng.randrange(10, 5_000)
            bulk.record_corrected(value, interval)
            record_corrected_naively(naive, value, interval)
        assert bulk.to_dict() == naive.to_dict(), (highest, value, interval)


def test_correction_work_is_bounded_by_buckets_not_terms() -> None:
    # 3.6e9 terms one at a time would take an hour; by bucket it is ~23k steps.
    h = Histogram()
    h.record_corrected(HOUR_US, 1)
    assert h.total == HOUR_US
    assert h.to_dict()["sum"] == HOUR_US * (HOUR_US + 1) // 2
    assert (h.min, h.max, h.clamped) == (1, HOUR_US, 0)
    assert h.percentile(50) == h.highest_equivalent(HOUR_US // 2)


def test_correction_clamps_terms_above_highest() -> None:
    h, naive = Histogram(highest=1_000), Histogram(highest=1_000)
    h.record_corrected(5_000, 1_000)  # 5000 and 4000, 3000, 2000 clamped; 1000 not
    record_corrected_naively(naive, 5_000, 1_000)
    assert h.to_dict() == naive.to_dict()
    assert (h.total, h.clamped, h.max) == (5, 4, 1_000)
    with pytest.raises(ValueError, match="expected_interval"):
        h.record_corrected(5_000, 0)


# --- clamping, empty, bad arguments ---------------------------------------------


def test_values_above_highest_are_clamped_and_counted() -> None:
    h = Histogram(highest=1_000)
    h.record(999)
    h.record(5_000)
    h.record(10**12, count=2)
    assert (h.total, h.clamped, h.max, h.min) == (4, 3, 1_000, 999)
    assert h.percentile(100) == h.percentile(50) == 1_000
    assert h.mean == (999 + 3 * 1_000) / 4


def test_empty_histogram() -> None:
    h = Histogram()
    assert (h.total, h.min, h.max, h.mean, h.clamped) == (0, 0, 0, 0.0, 0)
    assert h.percentile(50) == h.percentile(0) == h.percentile(100) == 0
    assert h.percentiles([1.0, 99.0]) == {1.0: 0, 99.0: 0}
    assert h.cdf() == []
    assert h.to_dict()["buckets"] == []
    assert Histogram.from_dict(h.to_dict()).to_dict() == h.to_dict()


@pytest.mark.parametrize("digits", [1, 3])
def test_count_at_least_never_misses_a_sample_and_errs_only_within_precision(
        digits: int) -> None:
    rng = random.Random(f"count-at-least-{digits}")
    values = [int(rng.expovariate(1 / 50_000)) for _ in range(20_000)]
    h = record_all(values, digits)
    for threshold in (0, 1, 99, 1_000, 12_345, 50_000, 300_000, 10**9):
        at_least = sum(1 for v in values if v >= threshold)
        # Values below the threshold but in its slot may be counted, no others.
        slot_low = h.lowest_equivalent(threshold)
        assert at_least <= h.count_at_least(threshold) <= sum(
            1 for v in values if v >= slot_low), threshold
    assert h.count_at_least(0) == h.total
    assert h.count_at_least(HOUR_US * 2) == 0  # nothing clamped here


def test_cdf_ends_at_max_with_fraction_one() -> None:
    h = record_all([1, 1, 2, 3000, 3001, 7000])
    assert h.cdf() == [(1, 2 / 6), (2, 3 / 6), (3001, 5 / 6), (7000, 1.0)]


@pytest.mark.parametrize("p", [-0.001, 100.001, math.nan, math.inf])
def test_percentile_outside_0_100_is_refused(p: float) -> None:
    h = record_all([1])
    with pytest.raises(ValueError, match="percentile"):
        h.percentile(p)
    with pytest.raises(ValueError, match="percentile"):
        h.percentiles([50.0, p])


def test_bad_arguments_are_refused() -> None:
    for digits in (0, 6):
        with pytest.raises(ValueError, match="digits"):
            Histogram(digits=digits)
    with pytest.raises(ValueError, match="highest"):
        Histogram(highest=0)
    h = Histogram()
    with pytest.raises(ValueError, match=">= 0"):
        h.record(-1)
    with pytest.raises(ValueError, match="count"):
        h.record(5, count=0)
    assert h.total == 0


# --- Zipf -----------------------------------------------------------------------


def chi_square_threshold(df: int, z: float = 6.0) -> float:
    """The chi-square value exceeded with the normal tail probability of z sigma.

    Wilson-Hilferty: (X / df)**(1/3) is about normal with mean 1 - 2 / (9 df) and
    variance 2 / (9 df). z = 6 is a tail of 1e-9; for df = 99 the threshold is
    about 209 (the statistic's mean is 99).
    """
    v = 2 / (9 * df)
    return df * (1 - v + z * math.sqrt(v)) ** 3


def chi_square(counts: list[int], probabilities: list[float]) -> float:
    n = sum(counts)
    return sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probabilities, strict=True))


@pytest.mark.parametrize("s", [1.0, 0.0, 0.5])
def test_zipf_frequencies_match_pmf(s: float) -> None:
    n, draws = 100, 200_000  # smallest expected bin for s=1: 200k * 0.01 / H(100) = 386
    zipf = Zipf(n, s, random.Random(11))
    counts = [0] * n
    for _ in range(draws):
        counts[zipf.sample()] += 1
    pmf = [zipf.pmf(k) for k in range(n)]
    assert chi_square(counts, pmf) < chi_square_threshold(n - 1)
    if s > 0:
        # The test has power: the same draws against the uniform fail it by far.
        assert chi_square(counts, [1 / n] * n) > 100 * chi_square_threshold(n - 1)


def test_zipf_pmf_is_normalised_power_law() -> None:
    zipf = Zipf(100, 1.0, random.Random(0))
    assert math.fsum(zipf.pmf(k) for k in range(100)) == pytest.approx(1.0, abs=1e-12)
    harmonic_100 = math.fsum(1 / k for k in range(1, 101))
    for k in (0, 1, 9, 99):
        assert zipf.pmf(k) == pytest.approx(1 / (k + 1) / harmonic_100, rel=1e-12)
    uniform = Zipf(7, 0.0, random.Random(0))
    assert all(uniform.pmf(k) == pytest.approx(1 / 7, rel=1e-12) for k in range(7))
    one = Zipf(1, 2.0, random.Random(0))
    assert one.pmf(0) == 1.0 and {one.sample() for _ in range(100)} == {0}


def test_zipf_is_reproducible_with_the_same_seed() -> None:
    def draws(seed: int) -> list[int]:
        zipf = Zipf(1000, 1.2, random.Random(seed))
        return [zipf.sample() for _ in range(2_000)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)
    assert all(0 <= k < 1000 for k in draws(5))


def test_zipf_bad_arguments_are_refused() -> None:
    rng = random.Random(0)
    with pytest.raises(ValueError, match="n >= 1"):
        Zipf(0, 1.0, rng)
    for s in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="exponent"):
            Zipf(10, s, rng)
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        Zipf(10, 1.0, rng).pmf(10)


# --- Poisson arrivals -----------------------------------------------------------


def take(it: Iterator[float], n: int) -> list[float]:
    return list(itertools.islice(it, n))


def test_poisson_gaps_are_exponential_with_mean_one_over_rate() -> None:
    rate, n = 1_000.0, 100_000
    times = take(poisson_arrivals(rate, random.Random(2024)), n)
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    mean = math.fsum(gaps) / n
    std = math.sqrt(math.fsum((g - mean) ** 2 for g in gaps) / (n - 1))
    # The mean of n exponential gaps has standard deviation (1 / rate) / sqrt(n):
    # 3.2 us here, so 6 sigma is 19 us around 1 ms.
    assert abs(mean - 1 / rate) < 6 * (1 / rate) / math.sqrt(n)
    # The coefficient of variation of an exponential is 1; by the delta method
    # (mu = sigma = 1, third moment 2, fourth 9) its estimate has variance 1 / n,
    # so 6 sigma is 6 / sqrt(n) = 0.019.
    assert abs(std / mean - 1) < 6 / math.sqrt(n)


def test_poisson_counts_in_fixed_windows_are_poisson_like() -> None:
    rate, window = 1_000.0, 0.010  # 10 arrivals per window on average
    times = take(poisson_arrivals(rate, random.Random(99)), 100_000)
    windows = int(times[-1] / window)  # whole windows only
    counts = [0] * windows
    for t in times:
        if t < windows * window:
            counts[int(t / window)] += 1
    mean = sum(counts) / windows
    variance = sum((c - mean) ** 2 for c in counts) / (windows - 1)
    # For Poisson counts (W - 1) * variance / mean is about chi-square with
    # W - 1 degrees of freedom, so the index of dispersion has standard
    # deviation sqrt(2 / (W - 1)): 0.014 for ~10,000 windows; 6 sigma is 0.085.
    # (Evenly spaced sends would give 0, bursts far above 1.)
    assert abs(variance / mean - 1) < 6 * math.sqrt(2 / (windows - 1))
    assert abs(mean - rate * window) < 6 * math.sqrt(rate * window / windows)


def test_poisson_times_strictly_increase_from_start_and_are_reproducible() -> None:
    times = take(poisson_arrivals(50.0, random.Random(8), start=1_000.0), 10_000)
    assert times[0] > 1_000.0
    assert all(a < b for a, b in itertools.pairwise(times))
    assert times == take(poisson_arrivals(50.0, random.Random(8), start=1_000.0), 10_000)


def test_poisson_times_increase_even_when_a_gap_is_zero() -> None:
    class AlwaysZero(random.Random):
        def random(self) -> float:
            return 0.0  # expovariate's -log(1 - 0) / rate: a gap of exactly 0

    times = take(poisson_arrivals(1_000.0, AlwaysZero(), start=1e9), 100)
    assert all(a < b for a, b in zip([1e9, *times], times, strict=False))


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_poisson_bad_rate_is_refused_at_the_call(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(rate, random.Random(0))  # no next() needed


def test_ramp_arrivals_follow_the_rising_rate() -> None:
    # 0 -> 2000/s over 10 s: expected counts per second 100, 300, ..., 1900.
    from fastfaas.loadgen.dist import ramp_arrivals

    times = []
    for t in ramp_arrivals(0.0, 2000.0, 10.0, random.Random(7)):
        if t >= 10.0:
            break
        times.append(t)
    assert times == sorted(times)
    for second in range(10):
        n = sum(1 for t in times if second <= t < second + 1)
        expected = 200 * second + 100
        assert abs(n - expected) <= 6 * math.sqrt(expected)  # Poisson: 6 sigma
    with pytest.raises(ValueError):
        ramp_arrivals(0.0, 0.0, 1.0, random.Random(1))
