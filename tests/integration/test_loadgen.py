"""The load generator end to end: short runs against a real `fastfaas serve` (no
timing assertions: counts and the report's fields)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fastfaas.loadgen import report
from fastfaas.loadgen.cold import cold_starts
from fastfaas.loadgen.engine import Plan, Stats, Target, run, run_in_process
from fastfaas.loadgen.scenarios import Api, deploy_population
from fastfaas.runtime.results import START_KINDS
from tests.conftest import ServerProcess


@pytest.fixture
def served(start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, list[str]]:
    server = start_server()
    api = Api(server.url)
    try:
        names = deploy_population(api, "lg", 3, memory_mb=256, mode="sleep", ms=0,
                                  result_bytes=16)
    finally:
        api.close()
    return server, names


def _check(stats: Stats, plan: Plan) -> None:
    summ = report.summary(stats)
    assert stats.completed > 0
    assert set(stats.latency) <= set(START_KINDS)
    assert sum(h.total for h in stats.latency.values()) == stats.completed
    assert stats.ok == stats.completed and not stats.errors  # every call answered 200
    assert stats.sent == stats.completed
    assert stats.server.total == stats.completed  # X-Fastfaas-Server-Us on each answer
    assert stats.duration.total == stats.completed
    # By completion time: the last bucket is the last answer's second (late ones included).
    assert stats.last_end_s is not None and stats.first_send_s is not None
    assert len(stats.timeline_count) == int(stats.last_end_s) + 1
    assert sum(stats.timeline_count) == stats.completed and not any(stats.timeline_failed)
    assert summ["throughput_rps"] == round(stats.completed / stats.span_s, 1)
    assert stats.connect_errors == 0
    assert summ["requests"] == stats.completed
    assert summ["latency_ms"]["all"]["count"] == stats.completed
    row = summ["latency_ms"]["all"]
    assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["p99.9"] <= row["max"]
    again = Stats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert report.summary(again) == summ


def test_closed_loop_reports_every_request_by_start_kind(served) -> None:
    server, names = served
    plan = Plan(target=Target(port=server.port), functions=names, connections=4,
                duration_s=1.5, warmup_s=0, payload=b'{"k": 1}')
    stats = run_in_process(plan)
    _check(stats, plan)
    assert "claimed" in stats.latency or "cold" in stats.latency  # first calls, no warm-up


def test_open_loop_and_two_workers_merge(served) -> None:
    server, names = served
    plan = Plan(target=Target(port=server.port), functions=names, mode="open", rate=200,
                connections=8, duration_s=1.5, warmup_s=0.5, workers=2)
    seen: list[int] = []
    stats = run(plan, lambda done, elapsed: seen.append(done))
    _check(stats, plan)
    assert seen and seen == sorted(seen)  # progress only grows
    assert stats.mode == "open" and stats.send_lag.total == stats.sent
    assert report.summary(stats)["offered_rps"] == round(stats.sent / plan.duration_s, 1)


def test_cli_run_writes_the_json_report(served, tmp_path: Path) -> None:
    server, _ = served
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fastfaas", "bench", "run", "--url", server.url, "--functions",
         "2", "--duration", "1", "--warmup", "0", "--connections", "2", "--out", str(out),
         "--no-progress"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "throughput" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "population"
    run_ = doc["runs"]["fastfaas"]
    assert run_["plan"]["functions"] == ["bench-000", "bench-001"]
    assert run_["summary"]["requests"] == sum(
        h["total"] for h in run_["raw"]["latency"].values())
    for hist in run_["raw"]["latency"].values():  # HdrHistogram-style buckets, not samples
        assert sum(count for _, count in hist["buckets"]) == hist["total"]
    png = out.with_suffix(".png")
    assert png.exists() == ("wrote" in proc.stdout and png.name in proc.stdout)


def test_cli_against_a_dead_server_fails_clearly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastfaas", "bench", "run", "--url", "http://127.0.0.1:9",
         "--duration", "1", "--out", str(tmp_path / "x.json"), "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "cannot reach the server at http://127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_checks_the_plan_before_touching_the_server(tmp_path: Path) -> None:
    """Nothing listens on port 9: a message naming the flag (exit 1), not "cannot
    reach the server" (exit 2), shows that nothing was tried first."""
    for args, message in ((["run", "--duration", "0"], "--duration must be > 0, got 0"),
                          (["run", "--request-timeout", "0"],
                           "--request-timeout must be > 0, got 0"),
                          (["run", "--workers", "4", "--connections", "2"],
                           "--workers 4 need at least as many --connections (got 2): raise"
                           " --connections or lower --workers"),
                          (["run", "--functions", "0"], "--functions must be >= 1, got 0"),
                          (["cold", "--rounds", "0"], "--rounds must be >= 1, got 0")):
        proc = subprocess.run(
            [sys.executable, "-m", "fastfaas", "bench", *args, "--url", "http://127.0.0.1:9",
             "--out", str(tmp_path / "x.json"), "--no-progress"],
            capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (args, proc.stderr)
        assert proc.stderr.strip() == f"fastfaas bench: {message}", args
    assert not (tmp_path / "x.json").exists()


async def test_cold_scenario_sends_the_token_and_reports_wanted_and_got(
        start_server: Callable[..., ServerProcess]) -> None:
    """One sample of each kind wanted, against a server that requires a token: no
    401 (nor any other error); each phase tried; latencies only under start kinds."""
    server = start_server("--token", "s3cret")
    api = Api(server.url, "s3cret")
    try:
        cold = await cold_starts(api, Target(port=server.port, token="s3cret"), 1)
        assert api.client.get("/v1/functions").json()["functions"] == []  # all deleted
    finally:
        api.close()
    stats = cold.stats
    assert not stats.errors and stats.connect_errors == 0
    assert set(stats.latency) <= set(START_KINDS)
    assert stats.ok == stats.answered == sum(p.got.get(k, 0) for p in cold.phases
                                             for k in p.wanted)
    assert [p.name for p in cold.phases] == ["warm", "burst after reap", "new deployment",
                                             "after zygote reap", "pool drained"]
    assert all(p.tries >= 1 and set(p.got) <= set(p.wanted) for p in cold.phases)
    counts = cold.wanted_vs_got()
    assert {k: c["wanted"] for k, c in counts.items() if c["wanted"]} == {
        "warm": 1, "prewarmed": 1, "forked": 1, "claimed": 2, "cold": 1}
    assert counts["warm"]["got"] == 1  # a warm function called in sequence stays warm
    assert report.summary(stats)["throughput_rps"] is None  # one call at a time: no load
