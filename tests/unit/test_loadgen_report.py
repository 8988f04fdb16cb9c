"""Stats merging and the summary, on synthetic responses (no server)."""

from __future__ import annotations

import pytest

from fastfaas.loadgen import report
from fastfaas.loadgen.client import Response, build_request
from fastfaas.loadgen.engine import Plan, Stats, Target


def response(start: str, status: int = 200, error: str = "", server_us: int = 50,
             duration_us: int = 5) -> Response:
    r = Response()
    r.status, r.start, r.function_error = status, start, error
    r.server_us, r.duration_us, r.complete = server_us, duration_us, True
    return r


def filled(latencies: dict[str, list[int]], second: int = 0) -> Stats:
    s = Stats()
    for kind, values in latencies.items():
        for v in values:
            s.record(response(kind), v, second)
    s.elapsed_s = 2.0
    return s


def test_merge_is_the_same_as_recording_everything_once() -> None:
    a = filled({"warm": [100, 200, 300], "forked": [1500]}, second=0)
    b = filled({"warm": [400], "claimed": [9000, 9500]}, second=1)
    both = filled({"warm": [100, 200, 300], "forked": [1500]}, second=0)
    for kind, values in {"warm": [400], "claimed": [9000, 9500]}.items():
        for v in values:
            both.record(response(kind), v, 1)
    a.merge(b)
    assert a.to_dict()["latency"] == both.to_dict()["latency"]
    assert a.timeline_count == both.timeline_count == [4, 3]
    assert a.ok == 7 and a.completed == 7


def test_errors_are_counted_by_kind_and_not_as_ok() -> None:
    s = Stats()
    s.record(response("warm"), 100, 0)
    s.record(response("warm", error="Unhandled"), 100, 0)
    s.record(response("", status=429), 100, 0)
    s.record_error("connection_closed", 0, 0)
    assert s.ok == 1
    assert dict(s.errors) == {"function_Unhandled": 1, "http_429": 1, "connection_closed": 1}
    assert s.completed == 4 and s.transport_errors == 1


def test_summary_orders_start_kinds_and_has_the_percentiles() -> None:
    s = filled({"cold": [40_000], "warm": list(range(100, 1100)), "prewarmed": [300, 400]})
    summ = report.summary(s)
    assert list(summ["latency_ms"]) == ["warm", "prewarmed", "cold", "all"]
    warm = summ["latency_ms"]["warm"]
    assert warm["count"] == 1000
    assert warm["p50"] == pytest.approx(0.599, abs=0.002)  # the 500th of 100..1099 us
    assert warm["max"] == pytest.approx(1.099, abs=0.002)
    assert summ["latency_ms"]["all"]["count"] == 1003
    assert summ["throughput_rps"] == pytest.approx(1003 / 2.0)
    assert summ["server_ms"]["count"] == 1003
    text = report.table(summ, "t")
    assert "prewarmed" in text and "p99.9" in text and "server p50" in text


def test_plan_checks_refuse_nonsense() -> None:
    target = Target(port=1)
    for bad in ({"functions": []}, {"mode": "sideways"}, {"mode": "open", "rate": 0},
                {"connections": 1, "workers": 2}, {"duration_s": 0}):
        kwargs = {"functions": ["f"], **bad}
        with pytest.raises(ValueError):
            Plan(target=target, **kwargs).check()


def test_request_bytes() -> None:
    data = build_request("127.0.0.1", 8080, "POST", "/v1/functions/f/invoke", b"{}",
                         {"Authorization": "Bearer t"})
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"{}"
    assert head.startswith(b"POST /v1/functions/f/invoke HTTP/1.1\r\n")
    assert b"Content-Length: 2" in head and b"Authorization: Bearer t" in head
