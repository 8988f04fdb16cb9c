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
    assert len(stats.timeline_count) <= round(plan.duration_s)
    assert sum(stats.timeline_count) == stats.completed
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
