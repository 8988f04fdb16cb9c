"""Capacity over real HTTP: concurrency limits (429), a burst of 200, prewarm at deploy."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from tests.conftest import ServerProcess, zip_of

GATED = """
import os, time
def handler(event, context):
    # Holds its instance until the test creates the gate file (bounded: 30 s).
    deadline = time.monotonic() + 30
    while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
        time.sleep(0.002)
    return {"pid": os.getpid()}
"""


def deploy(client: httpx.Client, name: str, source: str, **config: object) -> httpx.Response:
    params = {"handler": "app.handler", **{k: str(v) for k, v in config.items()}}
    return client.put(f"/v1/functions/{name}", params=params, content=zip_of(app=source),
                      headers={"content-type": "application/zip"})


async def wait_busy(client: httpx.AsyncClient, name: str, busy: int) -> None:
    """The server's own state, polled (bounded) until `busy` calls are in flight:
    across HTTP there is no event to wait on."""
    with trio.fail_after(30):
        while True:
            r = await client.get(f"/v1/functions/{name}")
            if r.json()["concurrency"]["in_flight"] >= busy:
                return
            await trio.sleep(0.01)


async def test_over_max_concurrency_is_429_with_retry_after(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    gate = tmp_path / "gate"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert deploy(c, "capped", GATED, max_concurrency=2).status_code == 201
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        results: list[httpx.Response] = []

        async def call() -> None:
            results.append(await client.post("/v1/functions/capped/invoke",
                                             json={"gate": str(gate)}))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            nursery.start_soon(call)
            await wait_busy(client, "capped", 2)
            refused = await client.post("/v1/functions/capped/invoke",
                                        json={"gate": str(gate)})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            body = refused.json()
            assert body["error"] == "TooManyRequests" and "max_concurrency (2)" in body["message"]
            gate.touch()
        assert [r.status_code for r in results] == [200, 200]
        again = await client.post("/v1/functions/capped/invoke", json={"gate": str(gate)})
        assert again.status_code == 200  # the limit frees with the calls
        state = (await client.get("/v1/functions/capped")).json()
        assert state["state"]["throttled"] == 1
        metrics = (await client.get("/metrics")).text
        assert 'function="capped",start="none",outcome="TooManyRequests"} 1' in metrics


async def test_reserved_concurrency_is_held_against_the_server_limit(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server("--concurrency-limit", "3")
    gate = tmp_path / "gate"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert deploy(c, "vip", GATED, reserved_concurrency=2).status_code == 201
        assert deploy(c, "other", GATED).status_code == 201
        too_much = deploy(c, "greedy", GATED, reserved_concurrency=2)
        assert too_much.status_code == 400
        assert "limit is 3" in too_much.json()["message"]
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        done: list[int] = []

        async def call(name: str) -> None:
            r = await client.post(f"/v1/functions/{name}/invoke", json={"gate": str(gate)})
            done.append(r.status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "other")
            await wait_busy(client, "other", 1)
            # The one unreserved execution is taken: "other" is refused...
            r = await client.post("/v1/functions/other/invoke", json={"gate": str(gate)})
            assert r.status_code == 429 and "concurrency limit" in r.json()["message"]
            # ...while vip still has its two.
            nursery.start_soon(call, "vip")
            nursery.start_soon(call, "vip")
            await wait_busy(client, "vip", 2)
            r = await client.post("/v1/functions/vip/invoke", json={"gate": str(gate)})
            assert r.status_code == 429 and "reserved_concurrency (2)" in r.json()["message"]
            gate.touch()
        assert done == [200, 200, 200]


async def test_a_burst_of_200_is_served_each_by_its_own_instance(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    gate = tmp_path / "gate"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert deploy(c, "burst", GATED).status_code == 201
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as client:
        results: list[httpx.Response] = []

        async def call() -> None:
            results.append(await client.post("/v1/functions/burst/invoke",
                                             json={"gate": str(gate)}))

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(call)
            await wait_busy(client, "burst", 200)  # all 200 at once, none queued
            gate.touch()
    assert Counter(r.status_code for r in results) == {200: 200}
    assert len({r.headers["x-fastfaas-instance"] for r in results}) == 200
    assert len({r.json()["pid"] for r in results}) == 200
    assert set(Counter(r.headers["x-fastfaas-start"] for r in results)) <= {
        "claimed", "cold", "prewarmed", "forked"}


async def test_prewarm_instances_are_ready_from_deployment_on(
    start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server()
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        r = await client.put("/v1/functions/ready", params={"handler": "app.handler",
                                                            "prewarm": "3"},
                             content=zip_of(app="def handler(e, c):\n    return 1\n"),
                             headers={"content-type": "application/zip"})
        assert r.status_code == 201
        with trio.fail_after(30):
            while True:  # no invocation yet: the server prepares them on its own
                state = (await client.get("/v1/functions/ready")).json()["state"]
                if state["instances"]["spare"] >= 3:
                    break
                await trio.sleep(0.02)
        assert state["zygote"] is not None and state["zygote"]["alive"]
        first = await client.post("/v1/functions/ready/invoke", json={})
        assert first.headers["x-fastfaas-start"] == "prewarmed"


async def test_one_zygote_holds_hundreds_of_idle_instances(tmp_path: Path, make_function,
                                                           cgroups_mode: str) -> None:
    """The kernel memory of each fork is charged to the zygote's memory cgroup: with
    no room made for it, a zygote died at ~490 instances (128 MB function)."""
    import fastfaas

    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode) as rt:
        await rt.deploy("many", source=make_function(app="def handler(e, c):\n    return 1\n"),
                        handler="app.handler", prewarm=600)
        with trio.fail_after(120):
            while rt.statistics()["functions"]["many"]["instances"]["spare"] < 600:
                await rt.wait_changed()
        state = rt.statistics()["functions"]["many"]
        assert state["zygote"]["alive"]
        assert (await rt.invoke("many")).start == "prewarmed"
