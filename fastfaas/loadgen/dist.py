"""Seeded traffic distributions: Zipf popularity and Poisson arrival times.

Every draw comes from a `random.Random` the caller passes in, so a run with
the same seed sends the same requests to the same functions at the same
intended times.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterator


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1 / (k + 1)**s.

    Args:
        n: how many ranks, >= 1.
        s: the exponent, finite and >= 0 (0 is uniform; about 1 is typical of
            function popularity in production traces).
        rng: where the randomness comes from.

    Raises:
        ValueError: n below 1, or s negative or not finite.
    """

    def __init__(self, n: int, s: float, rng: random.Random) -> None:
        if n < 1:
            raise ValueError(f"Zipf needs n >= 1 ranks, got n={n}")
        if not (math.isfinite(s) and s >= 0):
            raise ValueError(f"Zipf's exponent s must be finite and >= 0, got s={s}")
        self.n = n
        self.s = s
        self._rng = rng
        self._weights = [math.pow(k + 1, -s) for k in range(n)]
        # Unnormalised, so the last entry is exactly the total that u is scaled by.
        self._cumulative = list(itertools.accumulate(self._weights))
        self._total = self._cumulative[-1]

    def sample(self) -> int:
        """A rank, drawn in O(log n) by bisecting the cumulative weights."""
        k = bisect.bisect_right(self._cumulative, self._rng.random() * self._total)
        # u * total can round up to total itself; that draw belongs to the last rank.
        return k if k < self.n else self.n - 1

    def pmf(self, k: int) -> float:
        """P(rank k).

        Raises:
            ValueError: k outside 0..n-1.
        """
        if not 0 <= k < self.n:
            raise ValueError(f"rank {k} is outside 0..{self.n - 1}")
        return self._weights[k] / self._total


def poisson_arrivals(rate: float, rng: random.Random, start: float = 0.0) -> Iterator[float]:
    """The intended send times of a Poisson process, endlessly.

    Times are `start` plus cumulative exponential gaps of mean 1 / rate, in
    the unit of 1 / rate (seconds for a rate per second). They are strictly
    increasing: a gap that would not move the float forward (a zero draw, or
    a tiny gap far from zero) moves it by one ulp.

    Args:
        rate: events per unit of time, finite and > 0.
        rng: where the randomness comes from.
        start: the time the process starts at; the first event is after it.

    Returns:
        An endless iterator of times.

    Raises:
        ValueError: rate not finite and > 0 (raised here, not at the first next()).
    """
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"the arrival rate must be finite and > 0, got {rate}")
    if not math.isfinite(start):
        raise ValueError(f"start must be finite, got {start}")
    return _arrivals(rate, rng, start)


def _arrivals(rate: float, rng: random.Random, t: float) -> Iterator[float]:
    while True:
        later = t + rng.expovariate(rate)
        t = later if later > t else math.nextafter(t, math.inf)
        yield t


def ramp_arrivals(rate_start: float, rate_end: float, ramp_s: float, rng: random.Random,
                  start: float = 0.0) -> Iterator[float]:
    """A Poisson process whose rate goes linearly from rate_start to rate_end over
    ramp_s, then stays at rate_end (thinning: candidates at the larger rate, each
    kept with probability rate(t) / that rate).

    Raises:
        ValueError: a rate not finite and >= 0 with one of them > 0, or ramp_s <= 0.
    """
    for r in (rate_start, rate_end):
        if not (math.isfinite(r) and r >= 0):
            raise ValueError(f"rates must be finite and >= 0, got {r}")
    top = max(rate_start, rate_end)
    if top <= 0:
        raise ValueError("at least one of the rates must be > 0")
    if not (math.isfinite(ramp_s) and ramp_s > 0):
        raise ValueError(f"ramp_s must be finite and > 0, got {ramp_s}")
    return _thinned(rate_start, rate_end, ramp_s, top, rng, start)


def _thinned(r0: float, r1: float, ramp_s: float, top: float, rng: random.Random,
             start: float) -> Iterator[float]:
    for t in _arrivals(top, rng, start):
        frac = min(1.0, (t - start) / ramp_s)
        if rng.random() * top < r0 + (r1 - r0) * frac:
            yield t
