"""A log-linear latency histogram in the manner of HdrHistogram.

Values are non-negative integers (microseconds in the load generator). The
range is cut into buckets of doubling width; each bucket holds the same number
of equally wide sub-buckets, enough that any value's sub-bucket is narrower
than 10**-digits of the value. Recording is one index computation and a list
increment; percentiles walk the counts once.

Index scheme (HdrHistogram's, with a lowest discernible value of 1): with
`sub_count = 2**ceil(log2(2 * 10**digits))` and `half = sub_count // 2`,
values below `sub_count` have their own slot (bucket 0); above, bucket `b >= 1`
covers `[half << b, sub_count << b)` in `half` sub-buckets of width `2**b`.
Every sub-bucket above bucket 0 starts at `>= half * 2**b`, and
`half >= 10**digits`, so its width is below 10**-digits of any value in it.
A value's slot is `(b << log2(half)) + (value >> b)`: slots `0..sub_count-1`
are bucket 0's, and each further bucket adds `half` slots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# A float target rank this close (relatively) to an integer is that integer:
# p * total / 100 in binary floating point is off by a few ulps at most, and
# p = 99.9 must give rank 999 of 1000, not 1000.
_RANK_TOLERANCE = 1e-12


class Histogram:
    """Counts of non-negative integers with `digits` significant decimal digits.

    Args:
        digits: significant decimal digits kept, 1..5: any value is reported
            within a relative error of 10**-digits.
        highest: the largest value tracked exactly; larger values are recorded
            as `highest` and counted in `clamped`.

    Raises:
        ValueError: digits outside 1..5 or highest below 1.
    """

    __slots__ = (
        "_clamped",
        "_counts",
        "_digits",
        "_half_count",
        "_half_magnitude",
        "_highest",
        "_magnitude",
        "_mask",
        "_max",
        "_min",
        "_sum",
        "_total",
    )

    def __init__(self, digits: int = 3, highest: int = 3_600_000_000) -> None:
        if not 1 <= digits <= 5:
            raise ValueError(f"digits must be within 1..5, got {digits}")
        if highest < 1:
            raise ValueError(f"highest must be >= 1, got {highest}")
        self._digits = digits
        self._highest = highest
        # ceil(log2(2 * 10**digits)); int() because int ** int is typed Any (it may be a float).
        magnitude = int(2 * 10**digits - 1).bit_length()
        self._magnitude = magnitude
        self._half_magnitude = magnitude - 1
        self._half_count = 1 << (magnitude - 1)
        self._mask = (1 << magnitude) - 1
        buckets = 1
        while (1 << (magnitude + buckets - 1)) <= highest:
            buckets += 1
        self._counts: list[int] = [0] * ((buckets + 1) << self._half_magnitude)
        self._total = 0
        self._sum = 0
        self._min = highest + 1  # above anything recordable: the first value replaces it
        self._max = 0
        self._clamped = 0

    # --- recording ------------------------------------------------------------

    def record(self, value: int, count: int = 1) -> None:
        """Count `value` (`count` times).

        Args:
            value: a non-negative integer; above `highest` it is recorded as
                `highest` and counted in `clamped`.
            count: how many times, >= 1.

        Raises:
            ValueError: value negative or count below 1.
        """
        if value > self._highest or value < 0 or count < 1:
            value = self._check_and_clamp(value, count)
        # Inlined index computation (see the module docstring): this is the
        # load generator's per-request path.
        b = (value | self._mask).bit_length() - self._magnitude
        self._counts[(b << self._half_magnitude) + (value >> b)] += count
        self._total += count
        self._sum += value * count
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def _check_and_clamp(self, value: int, count: int) -> int:
        if value < 0:
            raise ValueError(f"histogram values must be >= 0, got {value}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if value > self._highest:
            self._clamped += count
            return self._highest
        return value

    def record_corrected(self, value: int, expected_interval: int) -> None:
        """Record `value`, and the samples a stalled sender failed to send.

        Coordinated-omission correction as HdrHistogram's
        recordValueWithExpectedInterval: when a response took longer than the
        interval at which requests were meant to go out, the requests that
        should have been sent meanwhile would have waited too; so
        `value - k * expected_interval` is recorded for every k >= 1 while it is
        >= expected_interval. The work is bounded by the number of buckets
        spanned, not by value / expected_interval.

        Args:
            value: the measured value, >= 0 (clamped like `record`'s).
            expected_interval: the intended interval between samples, >= 1.

        Raises:
            ValueError: value negative or expected_interval below 1.
        """
        if expected_interval < 1:
            raise ValueError(
                f"expected_interval must be >= 1, got {expected_interval};"
                " use record() for samples without an expected interval"
            )
        self.record(value)
        missing = (value - expected_interval) // expected_interval  # terms k=1..missing
        if missing < 1:
            return
        # The terms, smallest first: expected_interval + r, + 2 * interval, ...
        # up to value - expected_interval, where r = value % expected_interval.
        first = value - missing * expected_interval
        # Terms above highest (k <= (value - highest - 1) // interval) are clamped.
        above = min(missing, max(0, (value - self._highest - 1) // expected_interval))
        if above:
            missing -= above
            self._record_at(self._highest, above)
            self._clamped += above
        if missing > 0:
            self._record_progression(first, expected_interval, missing)

    def _record_progression(self, first: int, step: int, n: int) -> None:
        """Record first, first + step, ..., n terms, all within 0..highest: one add per bucket."""
        value = first
        last = first + (n - 1) * step
        while value <= last:
            top = min(self.highest_equivalent(value), last)
            here = (top - value) // step + 1
            self._counts[self._index(value)] += here
            self._sum += here * value + step * here * (here - 1) // 2
            value += here * step
        self._total += n
        self._min = min(self._min, first)
        self._max = max(self._max, last)

    def _record_at(self, value: int, count: int) -> None:
        self._counts[self._index(value)] += count
        self._total += count
        self._sum += value * count
        self._min = min(self._min, value)
        self._max = max(self._max, value)

    def merge(self, other: Histogram) -> None:
        """Add all of `other`'s counts to this histogram.

        Args:
            other: a histogram with the same digits and highest.

        Raises:
            ValueError: digits or highest differ.
        """
        if (other._digits, other._highest) != (self._digits, self._highest):
            raise ValueError(
                f"cannot merge a histogram of digits={other._digits}, highest={other._highest}"
                f" into one of digits={self._digits}, highest={self._highest}:"
                " create both with the same parameters"
            )
        counts = self._counts
        for i, c in enumerate(other._counts):
            if c:
                counts[i] += c
        self._total += other._total
        self._sum += other._sum
        self._clamped += other._clamped
        if other._total:
            self._min = min(self._min, other._min)
            self._max = max(self._max, other._max)

    # --- the bucket scheme ----------------------------------------------------

    def _index(self, value: int) -> int:
        b = (value | self._mask).bit_length() - self._magnitude
        return (b << self._half_magnitude) + (value >> b)

    def _lowest_at(self, index: int) -> int:
        bucket = (index >> self._half_magnitude) - 1
        sub = (index & (self._half_count - 1)) + self._half_count
        if bucket < 0:
            return index
        return sub << bucket

    def _width_at(self, index: int) -> int:
        return 1 << max(0, (index >> self._half_magnitude) - 1)

    def lowest_equivalent(self, value: int) -> int:
        """The smallest value counted in the same slot as `value` (value >= 0)."""
        return self._lowest_at(self._index(value))

    def highest_equivalent(self, value: int) -> int:
        """The largest value counted in the same slot as `value` (value >= 0)."""
        index = self._index(value)
        return self._lowest_at(index) + self._width_at(index) - 1

    # --- reading --------------------------------------------------------------

    @property
    def digits(self) -> int:
        return self._digits

    @property
    def highest(self) -> int:
        return self._highest

    @property
    def total(self) -> int:
        """How many values were recorded."""
        return self._total

    @property
    def clamped(self) -> int:
        """How many of them were above `highest` and recorded as `highest`."""
        return self._clamped

    @property
    def min(self) -> int:
        """The smallest value recorded, exactly; 0 when empty."""
        return self._min if self._total else 0

    @property
    def max(self) -> int:
        """The largest value recorded (after clamping), exactly; 0 when empty."""
        return self._max

    @property
    def mean(self) -> float:
        """The exact mean of the recorded (clamped) values; 0.0 when empty."""
        return self._sum / self._total if self._total else 0.0

    def _rank(self, p: float) -> int:
        """The 1-based nearest rank of percentile p: ceil(p / 100 * total), at least 1."""
        if not 0.0 <= p <= 100.0:  # also rejects NaN
            raise ValueError(f"percentile must be within [0, 100], got {p}")
        target = p * self._total / 100.0
        nearest = round(target)
        if abs(target - nearest) <= _RANK_TOLERANCE * target:
            return max(1, nearest)
        return max(1, math.ceil(target))

    def _reported(self, index: int) -> int:
        # The slot's highest equivalent value, never above the exact max (so
        # p100 is the max), and never below the order statistic it stands for.
        return min(self._lowest_at(index) + self._width_at(index) - 1, self._max)

    def percentile(self, p: float) -> int:
        """The value at percentile p, by nearest rank.

        It is the highest value equivalent to the order statistic of rank
        ceil(p / 100 * total) (at most the exact max): no smaller than that
        sample and within a relative 10**-digits of it. percentile(0) is the
        exact min.

        Args:
            p: the percentile, within [0, 100].

        Returns:
            The value; 0 when the histogram is empty.

        Raises:
            ValueError: p outside [0, 100] or NaN.
        """
        return self.percentiles((p,))[p]

    def percentiles(self, ps: Sequence[float]) -> dict[float, int]:
        """Several percentiles in one pass over the counts.

        Args:
            ps: percentiles, each within [0, 100], in any order.

        Returns:
            {p: percentile(p)} for each p.

        Raises:
            ValueError: a p outside [0, 100] or NaN.
        """
        wanted = sorted((self._rank(p), p) for p in ps)
        out: dict[float, int] = {}
        if not self._total:
            return dict.fromkeys(ps, 0)
        j = 0
        running = 0
        for index, c in enumerate(self._counts):
            if not c:
                continue
            running += c
            while j < len(wanted) and wanted[j][0] <= running:
                p = wanted[j][1]
                out[p] = self._min if p == 0 else self._reported(index)
                j += 1
            if j == len(wanted):
                break
        return out

    def count_at_least(self, value: int) -> int:
        """How many samples were recorded in `value`'s slot or above.

        Within the histogram's precision: it may include samples below
        `value` by less than a relative 10**-digits (its slot's lower part),
        never miss one at or above it (a value above `highest` counts the
        samples clamped to `highest`).
        """
        if value <= 0:
            return self._total
        return sum(self._counts[self._index(min(value, self._highest)):])

    def cdf(self) -> list[tuple[int, float]]:
        """(value, fraction of samples <= value) for each non-empty slot, ascending.

        The value is the slot's reported value (as `percentile` reports it), so
        the last point is (max, 1.0). Empty when nothing was recorded.
        """
        out: list[tuple[int, float]] = []
        running = 0
        total = self._total
        for index, c in enumerate(self._counts):
            if c:
                running += c
                out.append((self._reported(index), running / total))
        return out

    # --- serialisation --------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able, sparse form: only non-empty slots, as [lowest value, count]."""
        return {
            "digits": self._digits,
            "highest": self._highest,
            "total": self._total,
            "min": self.min,
            "max": self.max,
            "sum": self._sum,
            "clamped": self._clamped,
            "buckets": [[self._lowest_at(i), c] for i, c in enumerate(self._counts) if c],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        """The histogram `to_dict` described, exactly.

        Args:
            d: a mapping as `to_dict` returns it (e.g. read back from JSON).

        Returns:
            A new histogram.

        Raises:
            ValueError: a field is missing, a bucket is not a slot's lowest
                value or has a count below 1, or the counts don't add up.
        """
        try:
            h = cls(digits=int(d["digits"]), highest=int(d["highest"]))
            total, sum_, clamped = int(d["total"]), int(d["sum"]), int(d["clamped"])
            lo, hi = int(d["min"]), int(d["max"])
            buckets = [(int(v), int(c)) for v, c in d["buckets"]]
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a histogram dict ({e!r}): expected to_dict()'s fields") from e
        for value, count in buckets:
            if not 0 <= value <= h._highest or h.lowest_equivalent(value) != value or count < 1:
                raise ValueError(
                    f"bad bucket [{value}, {count}]: a bucket is [a slot's lowest value"
                    f" within 0..{h._highest}, a count >= 1]"
                )
            h._counts[h._index(value)] += count
        if sum(c for _, c in buckets) != total or not 0 <= clamped <= total:
            raise ValueError(f"bucket counts don't add up to total={total} (clamped={clamped})")
        if total and not lo <= hi <= h._highest:
            raise ValueError(f"min={lo}, max={hi} are not within 0..{h._highest}")
        h._total, h._sum, h._clamped = total, sum_, clamped
        if total:
            h._min, h._max = lo, hi
        return h

    def __repr__(self) -> str:
        return (
            f"Histogram(digits={self._digits}, highest={self._highest}, total={self._total},"
            f" min={self.min}, max={self.max})"
        )
