"""Stats merging and the summary, on synthetic responses (no server)."""

from __future__ import annotations

import json

import pytest

from fastfaas.loadgen import report
from fastfaas.loadgen.client import Response, build_request
from fastfaas.loadgen.engine import Plan, Target
from fastfaas.loadgen.stats import Stats


def response(start: str, status: int = 200, error: str = "", server_us: int = 50,
             duration_us: int = 5) -> Response:
    r = Response()
    r.status, r.start, r.function_error = status, start, error
    r.server_us, r.duration_us, r.complete = server_us, duration_us, True
    return r


def filled(latencies: dict[str, list[int]], end_s: float = 0.5) -> Stats:
    s = Stats()
    s.note_send(0.0)
    for kind, values in latencies.items():
        for v in values:
            s.record(response(kind), v, end_s)
    s.window_s = 2.0
    return s


def worker_like(answers: dict[str, list[tuple[int, float]]], failures: list[tuple[str, float]],
                lags: list[int], first_send_s: float) -> Stats:
    """What one worker might record: answers (latency, end), failures (kind, end), send lags."""
    s = Stats()
    s.mode, s.window_s, s.backlog_limit = "open", 2.0, 40
    s.note_send(first_send_s)
    for kind, samples in answers.items():
        for latency, end in samples:
            s.record(response(kind), latency, end)
            s.sent += 1
    for kind, end in failures:
        s.record_failure(kind, None if kind == "overload" else 1_500_000, end)
        s.sent += 1
    for lag in lags:
        s.send_lag.record(lag)
    s.connect_errors, s.reconnects = 2, 1
    return s


def test_merge_is_the_same_as_recording_everything_once() -> None:
    a_answers = {"warm": [(100, 0.2), (200, 0.7), (300, 1.1)], "forked": [(1500, 1.9)]}
    b_answers = {"warm": [(400, 0.4)], "claimed": [(9000, 2.3), (9500, 0.9)]}
    a = worker_like(a_answers, [("timeout", 1.6), ("overload", 0.3)], [10, 20, 1800], 0.01)
    b = worker_like(b_answers, [("unsent", 3.0), ("connection_closed", 0.8)], [15], 0.002)
    both = worker_like({k: a_answers.get(k, []) + b_answers.get(k, [])
                        for k in {*a_answers, *b_answers}},
                       [("timeout", 1.6), ("overload", 0.3), ("unsent", 3.0),
                        ("connection_closed", 0.8)], [10, 20, 1800, 15], 0.002)
    both.connect_errors, both.reconnects, both.backlog_limit = 4, 2, 80
    a.merge(b)
    assert a.to_dict() == both.to_dict()  # every field, histograms bucket by bucket
    assert a.errors == both.errors == {"timeout": 1, "overload": 1, "unsent": 1,
                                       "connection_closed": 1}
    assert a.sent == both.sent == 11
    assert a.send_lag.to_dict() == both.send_lag.to_dict() and a.send_lag.total == 4
    assert [h.to_dict() for h in a.timeline_latency] == [
        h.to_dict() for h in both.timeline_latency]
    assert a.timeline_count == [4, 2, 1, 0] and a.timeline_failed == [2, 1, 0, 1]
    assert a.first_send_s == 0.002 and a.last_end_s == 3.0
    assert a.ok == 7 and a.answered == 7 and a.failed == 4 and a.completed == 11


def test_to_dict_from_dict_round_trip_through_json() -> None:
    s = worker_like({"warm": [(100, 0.2), (250, 2.4)]}, [("timeout", 1.0), ("overload", 0.1)],
                    [5, 2500], 0.001)
    again = Stats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again.to_dict() == s.to_dict()
    assert report.summary(again) == report.summary(s)


def test_errors_are_counted_by_kind_and_not_as_ok() -> None:
    s = Stats()
    s.record(response("warm"), 100, 0.1)
    s.record(response("warm", error="Unhandled"), 100, 0.1)
    s.record(response("", status=429), 100, 0.1)
    s.record_failure("connection_closed", 2000, 0.1)
    s.record_failure("overload", None, 0.1)
    assert s.ok == 1
    assert dict(s.errors) == {"function_Unhandled": 1, "http_429": 1, "connection_closed": 1,
                              "overload": 1}
    assert s.answered == 3 and s.failed == 2 and s.completed == 5
    assert s.timeline_count == [3] and s.timeline_failed == [2]
    assert s.failed_latency.total == 1  # an overload has no latency: it was never sent
    assert s.timeline_latency[0].total == 4


def test_timeline_is_by_completion_time_with_late_buckets() -> None:
    s = Stats()
    s.note_send(0.001)
    s.record(response("warm"), 900_000, 0.9)
    s.record(response("warm"), 3_000_000, 4.2)  # sent in the window, completed late
    s.record_failure("timeout", 60_000_000, 2.5)
    assert s.timeline_count == [1, 0, 0, 0, 1]
    assert s.timeline_failed == [0, 0, 1, 0, 0]
    assert s.span_s == pytest.approx(4.199)
    assert s.throughput == pytest.approx(2 / 4.199)


def test_summary_orders_start_kinds_and_has_the_percentiles() -> None:
    s = filled({"cold": [40_000], "warm": list(range(100, 1100)), "prewarmed": [300, 400]},
               end_s=2.0)
    summ = report.summary(s)
    assert list(summ["latency_ms"]) == ["warm", "prewarmed", "cold", "all"]
    warm = summ["latency_ms"]["warm"]
    assert warm["count"] == 1000
    assert warm["p50"] == pytest.approx(0.599, abs=0.002)  # the 500th of 100..1099 us
    assert warm["max"] == pytest.approx(1.099, abs=0.002)
    assert summ["latency_ms"]["all"]["count"] == 1003
    assert summ["throughput_rps"] == pytest.approx(1003 / 2.0)  # over first send..last end
    assert summ["server_ms"]["count"] == 1003
    assert "offered_rps" not in summ and "send_lag_ms" not in summ  # a closed loop's
    text = report.table(summ, "t")
    assert "prewarmed" in text and "p99.9" in text and "server p50" in text
    assert "WARNING" not in text


def test_open_loop_summary_reports_offered_and_achieved_rates() -> None:
    s = worker_like({"warm": [(100, t / 100) for t in range(1, 150)]}, [], [10] * 149, 0.0)
    s.sent = 200  # 51 arrivals more than answers: e.g. failures recorded elsewhere
    summ = report.summary(s)
    assert summ["offered_rps"] == pytest.approx(100.0)
    assert summ["throughput_rps"] == pytest.approx(149 / 1.49)
    assert summ["generator_behind"] is False
    text = report.table(summ)
    assert "offered 100.0/s" in text and "achieved 100.0/s" in text
    assert "send lag" in text and "WARNING" not in text


def test_table_warns_when_the_generator_fell_behind_and_explains_overload() -> None:
    s = worker_like({"warm": [(100, 0.5)] * 50}, [("overload", 0.6)] * 7, [2500] * 10, 0.0)
    summ = report.summary(s)
    assert summ["generator_behind"] is True
    text = report.table(summ)
    assert "WARNING: the generator fell behind" in text
    assert "overload: 7 arrivals found 40 already waiting" in text
    assert "connect errors: 2" in text and "reconnects: 1" in text


def test_no_throughput_without_sends() -> None:
    s = Stats()  # e.g. the cold scenario: one call at a time, no load
    s.latency["warm"] = filled({"warm": [100, 200]}).latency["warm"]
    summ = report.summary(s)
    assert summ["throughput_rps"] is None and summ["ok_rps"] is None
    assert "throughput" not in report.table(summ)


def test_plan_checks_refuse_nonsense() -> None:
    target = Target(port=1)
    for bad in ({"functions": []}, {"mode": "sideways"}, {"mode": "open", "rate": 0},
                {"connections": 1, "workers": 2}, {"duration_s": 0}, {"workers": 0},
                {"request_timeout_s": 0}, {"request_timeout_s": -1}, {"warmup_s": -1},
                {"zipf_s": -1.0}, {"mode": "open", "rate": 10, "rate_end": -1},
                {"duration_s": float("nan")}):
        kwargs = {"functions": ["f"], **bad}
        with pytest.raises(ValueError):
            Plan(target=target, **kwargs).check()


def test_plan_check_names_fields_as_asked() -> None:
    plan = Plan(target=Target(port=1), functions=["f"], request_timeout_s=0)
    with pytest.raises(ValueError, match=r"^--request-timeout must be > 0, got 0"):
        plan.check({"request_timeout_s": "--request-timeout"})
    with pytest.raises(ValueError, match=r"^request_timeout_s must be > 0"):
        plan.check()


def test_request_bytes() -> None:
    data = build_request("127.0.0.1", 8080, "POST", "/v1/functions/f/invoke", b"{}",
                         {"Authorization": "Bearer t"})
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"{}"
    assert head.startswith(b"POST /v1/functions/f/invoke HTTP/1.1\r\n")
    assert b"Content-Length: 2" in head and b"Authorization: Bearer t" in head
    assert Target(port=1, token="t").headers() == {"Authorization": "Bearer t"}
    assert Target(port=1).headers() == {}
