"""The HTTP front end's fast path, end to end: a warm invocation handed to an
idle instance and answered by the server's pump without a task
(`Runtime.invoke_nowait`, `HttpServer(fast=...)`), and every way such a call
can end that needs more than that: a crash, a timeout, processes left behind,
an out-of-memory run again larger, a client that hangs up. Each test makes a
first call (a new instance, through `invoke`) and then looks at warm calls,
counted by `fastfaas_nowait_calls_total`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, invoke, module_server, zip_of

HTTP_TIMEOUT = 30.0
WAIT_S = 15.0

VARIOUS = """
import os, subprocess, time

def handler(event, context):
    what = event.get("do")
    if what == "die":
        os._exit(3)
    if what == "raise":
        raise ValueError("asked to raise")
    if what == "sleep":
        time.sleep(event["s"])
    if what == "leave":
        return {"pid": subprocess.Popen(["sleep", "1000"]).pid}
    if what == "alloc":
        block = bytearray(event["mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return len(block)
    if what == "mark":
        time.sleep(event["s"])
        with open(event["path"], "a") as f:
            f.write(event["line"] + "\\n")
    return {"pid": os.getpid(), "event": event}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from module_server(tmp_path_factory, "fast-path")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as c:
        yield c


def deploy(client: httpx.Client, name: str, **config: Any) -> None:
    params = {"handler": "app.handler", **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                           for k, v in config.items()}}
    r = client.put(f"/v1/functions/{name}", params=params, content=zip_of(app=VARIOUS),
                   headers={"content-type": "application/zip"})
    assert r.status_code == 201, r.text
    first = invoke(client, name)  # a new instance, through invoke: then it is warm
    assert first.status_code == 200 and first.headers["x-fastfaas-start"] in (
        "claimed", "cold"), first.text


def nowait_calls(client: httpx.Client) -> int:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("fastfaas_nowait_calls_total "):
            return int(line.split()[1])
    raise AssertionError("no fastfaas_nowait_calls_total in /metrics")


def lane_calls(client: httpx.Client) -> dict[str, int]:
    """fastfaas_lane_calls_total by end: finished in the compiled lane, or left it."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("fastfaas_lane_calls_total{"):
            out[line.split('"')[1]] = int(line.split()[1])
    assert set(out) == {"finished", "left"}, out
    return out


def left_lane(client: httpx.Client, before: dict[str, int]) -> int:
    """Calls that left the lane since `before`; none finished in it meanwhile."""
    now = lane_calls(client)
    assert now["finished"] == before["finished"], (before, now)
    return now["left"] - before["left"]


def test_warm_calls_take_the_fast_path_and_answer_as_ever(client: httpx.Client) -> None:
    deploy(client, "fp-plain")
    before = nowait_calls(client)
    lane = lane_calls(client)
    pids = set()
    for i in range(5):
        r = invoke(client, "fp-plain", {"i": i})
        assert r.status_code == 200, r.text
        assert r.json()["event"] == {"i": i}
        pids.add(r.json()["pid"])
        assert r.headers["x-fastfaas-start"] == "warm"
        assert r.headers["x-fastfaas-route"] == "direct"
        assert uuid.UUID(r.headers["x-fastfaas-request-id"]).version == 4
        assert int(r.headers["x-fastfaas-server-us"]) >= int(r.headers["x-fastfaas-duration-us"])
        assert "x-fastfaas-function-error" not in r.headers
    assert len(pids) == 1  # one warm instance served them all
    assert nowait_calls(client) - before == 5
    assert lane_calls(client) == {"finished": lane["finished"] + 5, "left": lane["left"]}
    logs = client.get("/v1/functions/fp-plain/logs").json()["entries"]
    assert [e["start"] for e in logs[-5:]] == ["warm"] * 5


def test_what_the_fast_path_does_not_take_goes_the_usual_way(client: httpx.Client) -> None:
    deploy(client, "fp-other")
    before = nowait_calls(client)
    bad = client.post("/v1/functions/fp-other/invoke", content=b"{not json",
                      headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["message"]
    keyed = invoke(client, "fp-other", headers={"x-fastfaas-route-key": "k1"})
    assert keyed.status_code == 200 and keyed.headers["x-fastfaas-affinity"] == "miss"
    queued = invoke(client, "fp-other", headers={"x-fastfaas-invocation-type": "Event"})
    assert queued.status_code == 202
    missing = invoke(client, "fp-missing")
    assert missing.status_code == 404
    assert nowait_calls(client) == before
    assert invoke(client, "fp-other").headers["x-fastfaas-start"] == "warm"
    assert nowait_calls(client) == before + 1


def test_a_warm_instance_that_dies_answers_crashed_and_the_next_call_works(
        client: httpx.Client) -> None:
    deploy(client, "fp-dies")
    before = nowait_calls(client)
    lane = lane_calls(client)
    r = invoke(client, "fp-dies", {"do": "die"})
    assert r.status_code == 200
    assert r.headers["x-fastfaas-function-error"] == "Crashed"
    assert left_lane(client, lane) == 1  # no reply: the Python path finds out why
    assert "exit status 3" in r.json()["errorMessage"]
    again = invoke(client, "fp-dies")
    assert again.status_code == 200 and "x-fastfaas-function-error" not in again.headers
    assert again.headers["x-fastfaas-start"] in ("prewarmed", "forked")
    assert nowait_calls(client) - before >= 1  # the crashed call was handed over without a task


def test_a_warm_call_that_raises_is_unhandled(client: httpx.Client) -> None:
    deploy(client, "fp-raises")
    lane = lane_calls(client)
    r = invoke(client, "fp-raises", {"do": "raise"})
    assert r.status_code == 200 and r.headers["x-fastfaas-function-error"] == "Unhandled"
    assert left_lane(client, lane) == 1
    assert r.json()["errorType"] == "ValueError"
    assert r.json()["errorMessage"] == "asked to raise"


def test_a_warm_call_past_its_timeout_is_a_timeout(client: httpx.Client) -> None:
    deploy(client, "fp-slow", timeout_s=1)
    t0 = time.monotonic()
    lane = lane_calls(client)
    r = invoke(client, "fp-slow", {"do": "sleep", "s": 30})
    assert r.status_code == 200 and r.headers["x-fastfaas-function-error"] == "Timeout"
    assert left_lane(client, lane) == 1
    assert time.monotonic() - t0 < 10
    assert invoke(client, "fp-slow").status_code == 200


@pytest.mark.cgroups
def test_processes_a_warm_call_leaves_behind_are_killed(client: httpx.Client) -> None:
    deploy(client, "fp-leaves")
    lane = lane_calls(client)
    r = invoke(client, "fp-leaves", {"do": "leave"})
    assert r.status_code == 200 and r.headers["x-fastfaas-start"] == "warm", r.text
    assert left_lane(client, lane) == 1  # its cgroup has more than one task: killed first
    pid = r.json()["pid"]
    deadline = time.monotonic() + WAIT_S
    while True:  # killed before the answer; reaped by the instance's subreaper soon after
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        assert time.monotonic() < deadline, f"process {pid} left behind is still {state}"
        time.sleep(0.02)
    assert invoke(client, "fp-leaves").status_code == 200


@pytest.mark.cgroups
def test_a_warm_call_out_of_memory_is_run_again_larger(client: httpx.Client) -> None:
    deploy(client, "fp-oom", memory_mb=128, escalate_on_oom=True)
    lane = lane_calls(client)
    r = invoke(client, "fp-oom", {"do": "alloc", "mb": 180})
    assert r.status_code == 200, r.text
    assert left_lane(client, lane) == 1
    assert r.headers.get("x-fastfaas-escalated") == "256", r.headers
    assert "x-fastfaas-function-error" not in r.headers
    assert r.json() == 180 * 1024 * 1024


def test_a_warm_call_whose_client_hangs_up_runs_to_its_end(
        client: httpx.Client, server: ServerProcess, tmp_path: Path) -> None:
    deploy(client, "fp-mark")
    out = tmp_path / "lines"
    os.chmod(tmp_path, 0o777)  # a sandboxed instance may run as another user
    event = json.dumps({"do": "mark", "s": 0.3, "path": str(out), "line": "first"}).encode()
    before = nowait_calls(client)
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(b"POST /v1/functions/fp-mark/invoke HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(event), event))
    deadline = time.monotonic() + WAIT_S
    while not out.exists() or not out.read_text():
        assert time.monotonic() < deadline, "the abandoned invocation never finished"
        time.sleep(0.02)
    assert out.read_text() == "first\n"
    assert nowait_calls(client) == before + 1
    r = invoke(client, "fp-mark")
    assert r.status_code == 200 and r.headers["x-fastfaas-start"] == "warm"
    entries = client.get("/v1/functions/fp-mark/logs").json()["entries"]
    assert [e["error"] for e in entries] == [None, None, None]
