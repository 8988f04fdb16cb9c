"""The compiled warm lane (fastfaas._lane) in process, over a real Runtime: a call it
finishes is counted and logged as the Python path counts it, and a call whose end
fails leaves nothing counted, as the Python path leaves it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httptools
import pytest
import trio

import fastfaas
from fastfaas.http.native import NativeApi
from fastfaas.http.protocol import Request
from fastfaas.http.server import Response
from fastfaas.runtime.store import Store

ECHO = """
import os
def handler(event, context):
    return {"pid": os.getpid(), "event": event}
"""


def invoke_request(name: str, body: bytes = b"{}") -> Request:
    return Request(b"POST", f"/v1/functions/{name}/invoke".encode(),
                   {b"content-type": b"application/json"}, body, True)


async def finish(call: Any) -> Any:
    """Step a lane call (the HTTP server's Pending) until it answers."""
    with trio.fail_after(10):
        while (out := call.step()) is None:
            await trio.lowlevel.wait_readable(call.fd)
    return out


def settled(rt: fastfaas.Runtime, name: str) -> tuple[int, int, int, int]:
    """(calls running, the function's calls in flight, its concurrency held, live deadlines)."""
    return rt._running, rt._functions[name].in_flight, rt.limits.in_flight(name), len(rt._deadlines)


class Parsed:
    def __init__(self, data: bytes) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._parser.feed_data(data)
        self.status = self._parser.get_status_code()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_message_complete(self) -> None:
        self.keep_alive = self._parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body


async def warm_api(tmp_path: Path, rt: fastfaas.Runtime,
                   make_function: Callable[..., Path]) -> NativeApi:
    api = NativeApi(rt, Store(tmp_path / "registry.db"), lambda: None)
    await rt.deploy("f", source=make_function(app=ECHO), handler="app.handler")
    assert (await rt.invoke("f")).ok  # a new instance: now warm
    return api


async def test_a_warm_success_in_the_lane_is_counted_as_the_python_path_counts_it(
        tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path]) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        api = await warm_api(tmp_path, rt, make_function)
        before = dict(rt.counters)
        call = api.lane.start(invoke_request("f", b'{"k": 1}'))
        assert type(call).__name__ == "LaneCall", call
        out = await finish(call)
        assert isinstance(out, bytes), out  # encoded in the lane
        response = Parsed(out)
        assert (response.status, response.keep_alive) == (200, True)
        assert response.headers[b"x-fastfaas-start"] == b"warm"
        request_id = response.headers[b"x-fastfaas-request-id"].decode()
        assert rt.logs("f")[-1].request_id == request_id
        assert rt.usage("f")[-1].start == "warm"
        assert settled(rt, "f") == (0, 0, 0, 0)
        for key, more in (("warm", 1), ("nowait_calls", 1), ("lane_finished", 1)):
            assert rt.counters[key] == before.get(key, 0) + more, key
        assert rt.counters["lane_left"] == before.get("lane_left", 0)
        assert api.metrics.invocations["f", "warm", "success"] == 1
        # And again on the same instance: it was put back idle.
        again = Parsed(await finish(api.lane.start(invoke_request("f"))))
        assert again.headers[b"x-fastfaas-instance"] == response.headers[b"x-fastfaas-instance"]


@pytest.mark.cgroups
async def test_a_cgroup_read_that_fails_at_the_end_is_a_500_and_leaves_nothing_counted(
        tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path]) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        api = await warm_api(tmp_path, rt, make_function)
        cgroups = [inst.cgroup for inst in rt._functions["f"].instances.values()]
        assert all(cg is not None for cg in cgroups)
        # Every instance's memory peak file swapped for one that takes the reset at the
        # start and cannot be read at the end.
        bad = os.open(tmp_path / "peak", os.O_WRONLY | os.O_CREAT, 0o600)
        saved = [cg.peak_fd for cg in cgroups]
        try:
            for cg in cgroups:
                cg.peak_fd = bad
            call = api.lane.start(invoke_request("f"))
            assert type(call).__name__ == "LaneCall", call
            out = await finish(call)
        finally:
            for cg, fd in zip(cgroups, saved, strict=True):
                cg.peak_fd = fd
            os.close(bad)
        assert isinstance(out, Response) and out.status == 500, out
        assert b"Bad file descriptor" in out.body
        assert settled(rt, "f") == (0, 0, 0, 0)
        assert rt.counters["lane_left"] == 1


ALLOCATE = """
def handler(event, context):
    mb = event.get("allocate_mb", 0)
    if mb:
        block = b"x" * (mb << 20)  # written: every page in use
        print("allocated", len(block) >> 20, "MB")
    return {"ok": True}
"""


@pytest.mark.cgroups
async def test_the_lane_measures_each_call_on_its_own_and_keeps_its_output(
        tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path]) -> None:
    """Calls finished in the lane, back to back on one instance: each call's memory
    peak is its own (the peak is reset at the end of the call before, the next
    call's cgroup begin being done there), and its output is in its log entry."""
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        api = NativeApi(rt, Store(tmp_path / "registry.db"), lambda: None)
        await rt.deploy("m", source=make_function(app=ALLOCATE), handler="app.handler",
                        memory_mb=512)
        assert (await rt.invoke("m", {})).ok  # a new instance: now warm
        finished = rt.counters["lane_finished"]
        big = Parsed(await finish(api.lane.start(invoke_request("m", b'{"allocate_mb": 64}'))))
        small = Parsed(await finish(api.lane.start(invoke_request("m"))))
        assert big.status == small.status == 200
        assert big.headers[b"x-fastfaas-instance"] == small.headers[b"x-fastfaas-instance"]
        assert rt.counters["lane_finished"] == finished + 2
        assert rt.counters["lane_left"] == 0
        big_usage, small_usage = rt.usage("m")[-2:]
        assert big_usage.peak_bytes >= 64 << 20
        assert small_usage.peak_bytes < big_usage.peak_bytes - (32 << 20)
        big_log, small_log = rt.logs("m")[-2:]
        assert big_log.request_id == big.headers[b"x-fastfaas-request-id"].decode()
        assert b"allocated 64 MB" in big_log.log
        assert b"allocated" not in small_log.log
        assert settled(rt, "m") == (0, 0, 0, 0)
