"""Affinity routing: a route key goes to the instance that last served it."""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import pytest
import trio

import fastfaas
from tests.integration.test_runtime import GATED, open_gate

# Per-instance state keyed by route key: what affinity is for.
CACHE = """
import os
SEEN = {}
def handler(event, context):
    key = event["key"]
    SEEN[key] = SEEN.get(key, 0) + 1
    if event.get("crash"):
        os._exit(3)
    return {"pid": os.getpid(), "seen": SEEN[key]}
"""


async def keyed(rt: fastfaas.Runtime, name: str, key: str, **event: object
                ) -> fastfaas.InvocationResult:
    return await rt.invoke(name, {"key": key, **event}, route_key=key)


async def test_a_key_returns_to_its_instance_and_its_state(runtime, make_function) -> None:
    await runtime.deploy("c", source=make_function(app=CACHE), handler="app.handler")
    first = await keyed(runtime, "c", "alice")
    assert first.affinity == "miss"
    # Other keys and keyless calls meanwhile, concurrently: more instances appear.
    async with trio.open_nursery() as nursery:
        for i in range(6):
            nursery.start_soon(keyed, runtime, "c", f"k{i}")
    again = [await keyed(runtime, "c", "alice") for _ in range(3)]
    assert {r.affinity for r in again} == {"hit"}
    assert {r.instance_id for r in again} == {first.instance_id}
    assert [r.value()["seen"] for r in again] == [2, 3, 4]  # its cache is still there
    stats = runtime.statistics()["functions"]["c"]
    assert stats["route_keys"] == 7


async def test_a_busy_instance_is_waited_for_or_left(runtime, make_function,
                                                     tmp_path: Path) -> None:
    await runtime.deploy("g", source=make_function(app=GATED), handler="app.handler")
    async with open_gate(tmp_path) as gate:
        async with trio.open_nursery() as nursery:
            holder: list[fastfaas.InvocationResult] = []
            waiter: list[fastfaas.InvocationResult] = []

            async def call(out: list[fastfaas.InvocationResult], **kw: object) -> None:
                out.append(await runtime.invoke("g", {"gate": gate.path}, route_key="K",
                                                **kw))  # type: ignore[arg-type]

            nursery.start_soon(call, holder)
            await gate.wait_arrivals(1)
            # Busy: a call that will not wait is served elsewhere at once...
            leaver: list[fastfaas.InvocationResult] = []
            nursery.start_soon(functools.partial(call, leaver, route_wait=False))
            await gate.wait_arrivals(2)
            # ...one that waits is queued behind the holder's call.
            nursery.start_soon(call, waiter)
            await wait_waiting(runtime, "g", 1)
            await gate.release()  # the holder and the leaver finish...
            await gate.wait_arrivals(1)  # ...and the waiter runs, on the holder's instance
            await gate.release()
        assert all(r[0].ok for r in (holder, leaver, waiter))
        assert holder[0].affinity == "miss"
        assert leaver[0].affinity == "fallback"
        assert leaver[0].instance_id != holder[0].instance_id
        assert waiter[0].affinity == "hit"
        assert waiter[0].instance_id == holder[0].instance_id  # the leaver took no key


async def wait_waiting(rt: fastfaas.Runtime, name: str, n: int) -> None:
    """Until `n` calls wait for a busy instance by key (the runtime's own state)."""
    fv = rt._functions[name]
    with trio.fail_after(10):
        while sum(len(i.waiters) for i in fv.instances.values()) < n:
            await rt.wait_changed()


async def test_a_wait_is_bounded(tmp_path: Path, make_function, cgroups_mode) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                affinity_wait_s=0.2) as rt:
        await rt.deploy("g", source=make_function(app=GATED), handler="app.handler")
        async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
            held: list[fastfaas.InvocationResult] = []

            async def hold() -> None:
                held.append(await rt.invoke("g", {"gate": gate.path}, route_key="K"))

            nursery.start_soon(hold)
            await gate.wait_arrivals(1)
            late: list[fastfaas.InvocationResult] = []

            async def wait_then_fall_back() -> None:
                late.append(await rt.invoke("g", {"gate": gate.path}, route_key="K"))

            nursery.start_soon(wait_then_fall_back)
            await gate.wait_arrivals(2)  # it arrived at a handler: not its key's instance
            await gate.release()
        assert late[0].affinity == "fallback"
        assert late[0].instance_id != held[0].instance_id


async def test_a_dead_instance_gives_its_keys_up(runtime, make_function) -> None:
    await runtime.deploy("c", source=make_function(app=CACHE), handler="app.handler")
    first = await keyed(runtime, "c", "bob")
    crashed = await keyed(runtime, "c", "bob", crash=True)
    assert crashed.affinity == "hit" and crashed.error is not None
    after = await keyed(runtime, "c", "bob")
    assert after.affinity == "fallback" and after.instance_id != first.instance_id
    assert after.value()["seen"] == 1  # a new instance: a fresh cache
    again = await keyed(runtime, "c", "bob")
    assert again.affinity == "hit" and again.instance_id == after.instance_id


async def test_keys_are_scoped_per_function(runtime, make_function) -> None:
    code = make_function(app=CACHE)
    await runtime.deploy("a", source=code, handler="app.handler")
    await runtime.deploy("b", source=code, handler="app.handler")
    ra = await keyed(runtime, "a", "same")
    rb = await keyed(runtime, "b", "same")
    assert ra.affinity == rb.affinity == "miss"
    assert ra.instance_id != rb.instance_id


@pytest.mark.parametrize(("headers", "words"), [
    ({"x-fastfaas-route-key": "k" * 257}, "1-256 bytes"),
    ({"x-fastfaas-route-key": "k", "x-fastfaas-route-busy": "maybe"}, "'fallback'"),
])
def test_bad_route_headers_are_400(start_server, headers: dict[str, str], words: str,
                                   make_function) -> None:
    from fastfaas.runtime.code import zip_directory

    server = start_server()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.put("/v1/functions/c", params={"handler": "app.handler"},
                  content=zip_directory(make_function(app=CACHE)),
                  headers={"content-type": "application/zip"})
        assert r.status_code == 201
        ok = c.post("/v1/functions/c/invoke", json={"key": "k"},
                    headers={"x-fastfaas-route-key": "k"})
        assert ok.status_code == 200 and ok.headers["x-fastfaas-affinity"] == "miss"
        hit = c.post("/v1/functions/c/invoke", json={"key": "k"},
                     headers={"x-fastfaas-route-key": "k"})
        assert hit.headers["x-fastfaas-affinity"] == "hit"
        assert hit.headers["x-fastfaas-instance"] == ok.headers["x-fastfaas-instance"]
        r = c.post("/v1/functions/c/invoke", json={"key": "k"}, headers=headers)
        assert r.status_code == 400 and words in r.json()["message"]
