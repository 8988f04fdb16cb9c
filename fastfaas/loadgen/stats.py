"""What a load run recorded: histograms and counts, mergeable across worker processes."""

from __future__ import annotations

import collections
from typing import Any, Final

from fastfaas.loadgen.client import Response
from fastfaas.loadgen.hist import Histogram

# Kinds of failure without an answer. timeout: no answer within the request
# timeout, or still in flight at the run's final deadline; connection_closed:
# the server closed or reset the connection before answering; unsent: an
# open-loop arrival still waiting for a connection at the final deadline;
# overload: an open-loop arrival that found the backlog full (never queued).
FAILURES: Final = ("timeout", "connection_closed", "unsent", "overload")


class Stats:
    """What a run recorded.

    Every request of the measured window ends once: answered (its latency in
    `latency` by start kind; an HTTP or function error is also counted in
    `errors` as `http_<status>` or `function_<kind>`), or failed without an
    answer (`errors` by the kinds of FAILURES, the latency of all but
    overload in `failed_latency`: lower bounds, the client stopped waiting).
    In the open loop `sent` counts the arrivals of the window, whatever became
    of them; in the closed loop the requests sent.

    Latencies are in microseconds; times (`*_s`) are seconds from the start of
    measurement. The timeline is bucketed by completion time, one bucket a
    second, with buckets after the window for late completions.
    Connection failures are not requests: `connect_errors` counts failed
    connects, `reconnects` the requests retried on a new connection after the
    server closed a kept-alive one.
    """

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.duration = Histogram()  # X-Fastfaas-Duration-Us: the handler's time
        self.server = Histogram()  # X-Fastfaas-Server-Us: the server's whole time
        self.failed_latency = Histogram()
        self.send_lag = Histogram()  # open loop: the generator's own lateness in sending
        self.errors: collections.Counter[str] = collections.Counter()
        self.ok = 0
        self.sent = 0
        self.connect_errors = 0
        self.reconnects = 0
        self.mode = ""  # "closed" or "open"; "" when not from a load plan
        self.window_s = 0.0  # the measured window's planned length
        self.backlog_limit = 0  # open loop: arrivals allowed to wait (all workers)
        self.first_send_s: float | None = None
        self.last_end_s: float | None = None
        self.timeline_count: list[int] = []  # answers per second
        self.timeline_failed: list[int] = []  # failures without an answer per second
        self.timeline_latency: list[Histogram] = []  # answers' and failures' latency

    # --- recording ------------------------------------------------------------

    def record(self, response: Response, latency_us: int, end_s: float) -> None:
        """An answer that came `end_s` after the start of measurement."""
        kind = response.start or "-"
        hist = self.latency.get(kind)
        if hist is None:
            hist = self.latency[kind] = Histogram()
        hist.record(latency_us)
        if response.duration_us >= 0:
            self.duration.record(response.duration_us)
        if response.server_us >= 0:
            self.server.record(response.server_us)
        if response.status >= 400:
            self.errors[f"http_{response.status}"] += 1
        elif response.function_error:
            self.errors[f"function_{response.function_error}"] += 1
        else:
            self.ok += 1
        second = self._ended(end_s)
        self.timeline_count[second] += 1
        self.timeline_latency[second].record(latency_us)

    def record_failure(self, kind: str, latency_us: int | None, end_s: float) -> None:
        """A request that ended without an answer (`kind` one of FAILURES); no
        latency for an overload, which was never queued."""
        self.errors[kind] += 1
        second = self._ended(end_s)
        self.timeline_failed[second] += 1
        if latency_us is not None:
            self.failed_latency.record(latency_us)
            self.timeline_latency[second].record(latency_us)

    def note_send(self, at_s: float) -> None:
        """A measured request went out `at_s` after the start of measurement."""
        if self.first_send_s is None or at_s < self.first_send_s:
            self.first_send_s = at_s

    def _ended(self, end_s: float) -> int:
        if self.last_end_s is None or end_s > self.last_end_s:
            self.last_end_s = end_s
        second = max(0, int(end_s))
        self._grow(second + 1)
        return second

    def _grow(self, seconds: int) -> None:
        while len(self.timeline_count) < seconds:
            self.timeline_count.append(0)
            self.timeline_failed.append(0)
            self.timeline_latency.append(Histogram(digits=2))

    # --- reading --------------------------------------------------------------

    @property
    def answered(self) -> int:
        """Requests that got an answer, whatever its status."""
        return sum(h.total for h in self.latency.values())

    @property
    def failed(self) -> int:
        """Requests that ended without an answer."""
        return sum(self.errors[k] for k in FAILURES)

    @property
    def completed(self) -> int:
        """Every request that ended: answered + failed."""
        return self.answered + self.failed

    @property
    def span_s(self) -> float:
        """From the first measured send to the last completion; 0.0 without either."""
        if self.first_send_s is None or self.last_end_s is None:
            return 0.0
        return max(0.0, self.last_end_s - self.first_send_s)

    @property
    def throughput(self) -> float | None:
        """Answers per second over `span_s`; None when nothing was sent and answered."""
        span = self.span_s
        return self.answered / span if span > 0 and self.answered else None

    def all_latency(self) -> Histogram:
        total = Histogram()
        for hist in self.latency.values():
            total.merge(hist)
        return total

    # --- merging and serialisation --------------------------------------------

    def merge(self, other: Stats) -> None:
        """Add another worker's statistics (same mode and window)."""
        for kind, hist in other.latency.items():
            self.latency.setdefault(kind, Histogram()).merge(hist)
        self.duration.merge(other.duration)
        self.server.merge(other.server)
        self.failed_latency.merge(other.failed_latency)
        self.send_lag.merge(other.send_lag)
        self.errors.update(other.errors)
        self.ok += other.ok
        self.sent += other.sent
        self.connect_errors += other.connect_errors
        self.reconnects += other.reconnects
        self.mode = self.mode or other.mode
        self.window_s = max(self.window_s, other.window_s)
        self.backlog_limit += other.backlog_limit
        if other.first_send_s is not None:
            self.note_send(other.first_send_s)
        if other.last_end_s is not None and (
                self.last_end_s is None or other.last_end_s > self.last_end_s):
            self.last_end_s = other.last_end_s
        self._grow(len(other.timeline_count))
        for second, count in enumerate(other.timeline_count):
            self.timeline_count[second] += count
            self.timeline_failed[second] += other.timeline_failed[second]
            self.timeline_latency[second].merge(other.timeline_latency[second])

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency": {k: h.to_dict() for k, h in self.latency.items()},
            "duration": self.duration.to_dict(),
            "server": self.server.to_dict(),
            "failed_latency": self.failed_latency.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "errors": dict(self.errors),
            "ok": self.ok,
            "sent": self.sent,
            "connect_errors": self.connect_errors,
            "reconnects": self.reconnects,
            "mode": self.mode,
            "window_s": self.window_s,
            "backlog_limit": self.backlog_limit,
            "first_send_s": self.first_send_s,
            "last_end_s": self.last_end_s,
            "timeline_count": self.timeline_count,
            "timeline_failed": self.timeline_failed,
            "timeline_latency": [h.to_dict() for h in self.timeline_latency],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        """The Stats `to_dict` described.

        Raises:
            KeyError: a field is missing (e.g. a report from an older version).
            ValueError: a histogram is malformed.
        """
        s = cls()
        s.latency = {k: Histogram.from_dict(h) for k, h in d["latency"].items()}
        s.duration = Histogram.from_dict(d["duration"])
        s.server = Histogram.from_dict(d["server"])
        s.failed_latency = Histogram.from_dict(d["failed_latency"])
        s.send_lag = Histogram.from_dict(d["send_lag"])
        s.errors = collections.Counter(d["errors"])
        s.ok, s.sent = d["ok"], d["sent"]
        s.connect_errors, s.reconnects = d["connect_errors"], d["reconnects"]
        s.mode, s.window_s, s.backlog_limit = d["mode"], d["window_s"], d["backlog_limit"]
        s.first_send_s, s.last_end_s = d["first_send_s"], d["last_end_s"]
        s.timeline_count = list(d["timeline_count"])
        s.timeline_failed = list(d["timeline_failed"])
        s.timeline_latency = [Histogram.from_dict(h) for h in d["timeline_latency"]]
        return s
