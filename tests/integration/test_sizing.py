"""Sizing from observed usage, with real cgroups: known allocations and known CPU burns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

import fastfaas
from tests.integration.test_http_api import zip_of

pytestmark = pytest.mark.cgroups

# Allocates, then waits: not CPU-bound (touching the pages alone can be, at a
# fraction of a CPU).
ALLOCATES = """
import time
def handler(event, context):
    block = bytearray(event["mb"] * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(0.2)
    return len(block)
"""

BURNS = """
import time
def handler(event, context):
    end = time.process_time() + event["cpu_s"]
    n = 0
    while time.process_time() < end:
        n += 1
    return n
"""


async def test_recommendations_converge_to_the_measured_size(
        tmp_path: Path, make_function: Any, cgroups_mode: str) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode) as rt:
        await rt.deploy("alloc", source=make_function(app=ALLOCATES), handler="app.handler",
                        memory_mb=1024)
        await rt.deploy("burn", source=make_function(app=BURNS), handler="app.handler",
                        memory_mb=256, timeout_s=10)
        assert rt.sizing_for("alloc").change == "insufficient data"
        for _ in range(6):
            assert (await rt.invoke("alloc", {"mb": 80})).ok
            assert (await rt.invoke("burn", {"cpu_s": 0.15})).ok
        alloc = rt.sizing_for("alloc")
        # 80 MB of heap on top of the interpreter: measured peak within bounds, and the
        # size is that peak with 30% headroom in 64 MB steps: far below 1024.
        assert alloc.change == "smaller", alloc
        assert 80 <= alloc.evidence["peak_p99_mb"] <= 130, alloc
        assert alloc.memory_mb == -(-int(alloc.evidence["peak_p99_mb"] * 1.3) // 64) * 64 or (
            alloc.memory_mb - alloc.evidence["peak_p99_mb"] * 1.3 < 64), alloc
        burn = rt.sizing_for("burn")
        assert burn.change == "larger" and "CPU-bound" in burn.reason, burn
        assert burn.memory_mb == 1792 and burn.faster_by > 6, burn  # 1 vCPU / 0.145
        assert len(rt.usage("alloc")) == 6


def test_sizing_over_http_the_cli_metrics_and_a_restart(start_server: Any,
                                                          tmp_path: Path) -> None:
    data = tmp_path / "kept"
    server = start_server(data_dir=data)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        r = client.put("/v1/functions/alloc", params={"handler": "app.handler",
                                                       "memory_mb": "1024"},
                       content=zip_of(app=ALLOCATES),
                       headers={"content-type": "application/zip"})
        assert r.status_code == 201, r.text
        for _ in range(6):
            assert client.post("/v1/functions/alloc/invoke", json={"mb": 40}).status_code == 200
        rec = client.get("/v1/functions/alloc/sizing").json()
        assert rec["change"] == "smaller" and rec["memory_mb"] < 1024, rec
        assert rec["evidence"]["samples"] == 6
        r = client.put("/v1/functions/esc", params={"handler": "app.handler",
                                                     "memory_mb": "128",
                                                     "escalate_on_oom": "true"},
                       content=zip_of(app=ALLOCATES),
                       headers={"content-type": "application/zip"})
        assert r.status_code == 201, r.text
        escalated = client.post("/v1/functions/esc/invoke", json={"mb": 180})
        assert escalated.headers.get("x-fastfaas-escalated") == "256", escalated.text
        assert "x-fastfaas-function-error" not in escalated.headers
        metrics = client.get("/metrics").text
        assert (f'fastfaas_recommended_memory_mb{{function="alloc",change="smaller"}}'
                f' {rec["memory_mb"]}') in metrics
    cli = subprocess.run([sys.executable, "-m", "fastfaas", "sizing", "alloc", "--url",
                          server.url], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert f"smaller: 1024 MB -> {rec['memory_mb']} MB" in cli.stdout
    server.stop()  # the last samples go to SQLite at the stop
    again = start_server(data_dir=data)
    with httpx.Client(base_url=again.url, timeout=60) as client:
        kept = client.get("/v1/functions/alloc/sizing").json()
    assert kept["evidence"]["samples"] == 6 and kept["memory_mb"] == rec["memory_mb"], kept
    assert json.dumps(kept["evidence"]) == json.dumps(rec["evidence"])


async def test_an_out_of_memory_is_escalated_once_in_the_same_request(
        tmp_path: Path, make_function: Any, cgroups_mode: str) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode) as rt:
        code = make_function(app=ALLOCATES)
        await rt.deploy("plain", source=code, handler="app.handler", memory_mb=128)
        await rt.deploy("esc", source=code, handler="app.handler", memory_mb=128,
                        escalate_on_oom=True)
        await rt.deploy("capped", source=code, handler="app.handler", memory_mb=128,
                        escalate_on_oom=True, max_memory_mb=128)
        event = {"mb": 180}
        plain = await rt.invoke("plain", event)
        assert plain.error is not None and plain.error.kind == "OutOfMemory"
        assert plain.escalated_mb == 0
        esc = await rt.invoke("esc", event)
        assert esc.ok and esc.value() == 180 * 1024 * 1024, esc.payload
        assert esc.escalated_mb == 256
        assert esc.usage.max_memory_bytes > 180 * 1024 * 1024
        # The OutOfMemory at 128 MB is in the record: the sizing asks for more.
        outcomes = [s.outcome for s in rt.usage("esc")]
        assert outcomes == ["OutOfMemory", "success"]
        assert rt.sizing_for("esc").memory_mb >= 256 or len(outcomes) < 5
        capped = await rt.invoke("capped", event)  # no size up to try: the error stands
        assert capped.error is not None and capped.error.kind == "OutOfMemory"
        # The function's own instances keep its size afterwards.
        small = await rt.invoke("esc", {"mb": 10})
        assert small.ok and small.escalated_mb == 0
