"""The Runtime over real processes: reuse, concurrency, start kinds, isolation, lifecycle."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import fastfaas
from fastfaas.errors import FunctionNotFoundError

COUNTER = """
import os
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    return {"count": COUNT, "pid": os.getpid(), "event": event}
"""

# Blocks until the test releases it through a Unix socket: concurrency without sleeps.
GATED = """
import os, socket
def handler(event, context):
    s = socket.socket(socket.AF_UNIX)
    s.connect(event["gate"])
    s.sendall(b"in")
    s.recv(1)
    s.close()
    return {"pid": os.getpid(), "tag": TAG}
TAG = "v1"
"""


class Gate:
    """Holds handler calls until `release()`; `wait_arrivals(n)` waits for n of them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = trio.socket.socket(socket.AF_UNIX)
        self.conns: list[trio.socket.SocketType] = []
        self.arrived = trio.Condition()

    async def bind(self) -> None:
        await self.listener.bind(self.path)
        self.listener.listen(64)

    async def serve(self) -> None:
        while True:
            conn, _ = await self.listener.accept()
            await conn.recv(2)
            async with self.arrived:
                self.conns.append(conn)
                self.arrived.notify_all()

    async def wait_arrivals(self, n: int) -> None:
        async with self.arrived:
            while len(self.conns) < n:
                await self.arrived.wait()

    async def release(self) -> None:
        for conn in self.conns:
            await conn.send(b"x")
            conn.close()
        self.conns.clear()


@asynccontextmanager
async def open_gate(tmp_path: Path) -> AsyncIterator[Gate]:
    gate = Gate(str(tmp_path / "gate.sock"))
    await gate.bind()  # before any handler can try to connect
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gate.serve)
        yield gate
        nursery.cancel_scope.cancel()
    gate.listener.close()


async def idle_instances(rt: fastfaas.Runtime, name: str, n: int, tmp_path: Path) -> None:
    """`n` instances of GATED function `name`: all held busy at once, then idle."""
    async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(rt.invoke, name, {"gate": gate.path})
        await gate.wait_arrivals(n)
        await gate.release()


async def wait_exit(pid: int) -> None:
    """Until process `pid` has exited (pidfd readable), at most 10 s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(10):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def start_invoke(nursery: trio.Nursery, rt: fastfaas.Runtime, name: str,
                 event: object) -> list[fastfaas.InvocationResult]:
    """Start an invocation in `nursery`; its result lands in the returned list."""
    out: list[fastfaas.InvocationResult] = []

    async def call() -> None:
        out.append(await rt.invoke(name, event))

    nursery.start_soon(call)
    return out


async def wait_spare(rt: fastfaas.Runtime, name: str) -> None:
    """Until the function's zygote has its spare ready (the spare task's own completion)."""
    fv = rt._functions[name]
    while fv.spare_task:
        await trio.sleep(0)  # a checkpoint, not a timed wait: the spare task runs meanwhile
    assert rt.statistics()["functions"][name]["instances"]["spare"] >= 1


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_sequential_invocations_reuse_one_instance(runtime, make_function) -> None:
    await runtime.deploy("counter", source=make_function(app=COUNTER), handler="app.handler")
    results = [await runtime.invoke("counter", {"n": i}) for i in range(5)]
    assert [r.value()["count"] for r in results] == [1, 2, 3, 4, 5]
    assert len({r.instance_id for r in results}) == 1
    assert results[0].start in ("claimed", "cold")
    assert [r.start for r in results[1:]] == ["warm"] * 4
    assert results[3].value()["event"] == {"n": 3}


async def test_concurrent_invocations_get_distinct_instances(
    runtime, make_function, tmp_path
) -> None:
    await runtime.deploy("gated", source=make_function(app=GATED), handler="app.handler")
    async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
        first_done = trio.Event()

        async def first() -> None:
            await runtime.invoke("gated", {"gate": gate.path})
            first_done.set()

        nursery.start_soon(first)
        await gate.wait_arrivals(1)
        await gate.release()
        await first_done.wait()  # now: one warm instance and (soon) one spare
        await wait_spare(runtime, "gated")
        calls = [start_invoke(nursery, runtime, "gated", {"gate": gate.path}) for _ in range(4)]
        await gate.wait_arrivals(4)
        state = runtime.statistics()["functions"]["gated"]
        # A forked instance runs its call before the server has its socket: spawning.
        # Spares taken are replaced at once, so spawning may also count a new spare.
        assert state["in_flight"] == 4
        spare_forks = state["spawning_spares"]
        assert state["instances"]["busy"] + state["instances"]["spawning"] - spare_forks == 4
        await gate.release()
    results = [r for call in calls for r in call]
    assert all(r.ok for r in results)
    assert len({r.instance_id for r in results}) == 4
    assert len({r.value()["pid"] for r in results}) == 4
    starts = [r.start for r in results]
    # One warm, the spare, then forks; a spare taken is replaced at once, so a
    # later call may find the replacement ready (prewarmed) instead of forking.
    assert starts.count("warm") == 1 and starts.count("prewarmed") >= 1
    assert starts.count("prewarmed") + starts.count("forked") == 3


async def test_start_kinds_without_pools(tmp_path, make_function, cgroups_mode) -> None:
    code = make_function(app=GATED)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                warm_pool_size=0, spares=0) as rt:
        await rt.deploy("g", source=code, handler="app.handler")
        async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
            first = start_invoke(nursery, rt, "g", {"gate": gate.path})
            await gate.wait_arrivals(1)
            second = start_invoke(nursery, rt, "g", {"gate": gate.path})
            await gate.wait_arrivals(2)
            await gate.release()
        assert first[0].start == "cold"  # no warming pool: the template forked on demand
        assert second[0].start == "forked"  # no spare: forked on the request path
        assert rt.statistics()["functions"]["g"]["instances"]["spare"] == 0


# The handler's time is the workload here (a slow function), not a wait for anything.
NAPPER = """
import time
def handler(event, context):
    time.sleep(event["s"])
    return {"slept": event["s"]}
"""


async def test_the_server_polls_for_a_reply_only_after_a_quick_handler(
        tmp_path, make_function, cgroups_mode) -> None:
    """A lone call to a warm instance is polled for (spin_us) only while its
    function's last warm call returned within the window: waiting on a slow one
    costs the server no CPU. The poll is a busy loop, so it shows in the
    process's CPU time."""
    code = make_function(app=NAPPER)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                spin_us=100_000) as rt:
        while rt.statistics()["warming_pool"]["ready"] < 1:  # so the first start is a claim
            await rt.wait_changed()
        await rt.deploy("n", source=code, handler="app.handler")
        assert (await rt.invoke("n", {"s": 0.2})).start == "claimed"  # a new instance: polled for
        assert (await rt.invoke("n", {"s": 0.2})).start == "warm"  # polled for; now known slow
        cpu0 = time.process_time()
        for _ in range(3):
            assert (await rt.invoke("n", {"s": 0.2})).payload == b'{"slept":0.2}'
        after_slow = time.process_time() - cpu0
        cpu0 = time.process_time()
        for _ in range(3):
            await rt.invoke("n", {"s": 0})  # quick: the next call is polled for...
            await rt.invoke("n", {"s": 0.2})  # ...for the whole 100 ms, in vain
        after_quick = time.process_time() - cpu0
        # Three polls of 100 ms each against three plain waits (a few ms of
        # the server's own work): far apart whatever the machine's speed.
        assert after_quick > 2 * after_slow, (after_quick, after_slow)


# Quick unless told to sleep (a slow function: the workload, not a wait for
# anything) or to wait at the gate.
QUICK_OR_GATED = """
import socket, time
def handler(event, context):
    time.sleep(event.get("s", 0))
    if "gate" in event:
        s = socket.socket(socket.AF_UNIX)
        s.connect(event["gate"])
        s.sendall(b"in")
        s.recv(1)
        s.close()
    return 1
"""


async def test_a_taken_spare_of_a_quick_handler_is_replaced_once_it_answers(
        tmp_path, make_function, cgroups_mode) -> None:
    """The replacement's fork would run beside the call that took the spare; for a
    handler that answers within the poll window it waits for the answer. A slow
    handler's spare is replaced at once."""
    code = make_function(app=QUICK_OR_GATED)
    # A window of 20 ms: "quick" must not hang on a preemption inside a call of
    # microseconds (a lone call is polled for that long at the most).
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                warm_pool_size=0, spares=1, spin_us=20_000) as rt:
        await rt.deploy("q", source=code, handler="app.handler")

        def state() -> dict:
            return rt.statistics()["functions"]["q"]

        async def until(ready: Callable[[], bool]) -> None:
            with trio.fail_after(30):
                while not ready():
                    await rt.wait_changed()

        def settled() -> bool:  # spares forked (as many as the adaptive target asks)
            return state()["spawning_spares"] == 0 and state()["instances"]["spare"] >= 1

        assert (await rt.invoke("q", {})).start == "cold"
        # Warm, so that the handler's own time is what is judged quick (a new
        # instance's first call also takes its copy-on-write faults).
        assert (await rt.invoke("q", {})).start == "warm"
        await until(settled)
        spares = state()["instances"]["spare"]
        async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
            held = start_invoke(nursery, rt, "q", {"gate": gate.path})  # the warm one
            await gate.wait_arrivals(1)
            took = start_invoke(nursery, rt, "q", {"gate": gate.path})  # a spare
            await gate.wait_arrivals(2)
            # The spare's call is in its handler: its replacement has not been asked for.
            assert state()["instances"]["spare"] == spares - 1
            assert state()["spawning_spares"] == 0
            await gate.release()
        assert held[0].start == "warm" and took[0].start == "prewarmed"
        await until(lambda: settled() and state()["instances"]["spare"] >= spares)
        # A slow call (longer than the window): the next spare taken is replaced
        # while its call is still in the handler.
        assert (await rt.invoke("q", {"s": 0.05})).start == "warm"
        spares = state()["instances"]["spare"]
        (tmp_path / "again").mkdir()
        async with open_gate(tmp_path / "again") as gate, trio.open_nursery() as nursery:
            warm = [start_invoke(nursery, rt, "q", {"gate": gate.path}) for _ in range(2)]
            await gate.wait_arrivals(2)
            took = start_invoke(nursery, rt, "q", {"gate": gate.path})
            await gate.wait_arrivals(3)
            await until(lambda: state()["instances"]["spare"] >= spares)
            await gate.release()
        assert [w[0].start for w in warm] == ["warm", "warm"]
        assert took[0].start == "prewarmed"


async def test_a_spare_taken_before_any_warm_call_is_replaced_at_once(
        tmp_path, make_function, cgroups_mode) -> None:
    """A function with no warm call yet is not known to be quick: the spare its
    first call takes is replaced while that call runs (bench/capacity.py's rising
    scenario: its three first calls came 24 and 16 ms apart, and the second and
    third were forked while the first call's replacement waited for its answer)."""
    code = make_function(app=QUICK_OR_GATED)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                warm_pool_size=0, spares=1, spin_us=20_000) as rt:
        await rt.deploy("q", source=code, handler="app.handler")
        assert await rt.warm("q") is None

        def spares() -> int:
            return int(rt.statistics()["functions"]["q"]["instances"]["spare"])

        with trio.fail_after(30):
            while spares() < 1:
                await rt.wait_changed()
        async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
            took = start_invoke(nursery, rt, "q", {"gate": gate.path})
            await gate.wait_arrivals(1)  # in its handler, on the spare
            with trio.fail_after(30):
                while spares() < 1:
                    await rt.wait_changed()
            assert not took  # replaced while the call that took it is in its handler
            await gate.release()
        assert took[0].start == "prewarmed"


async def test_functions_never_share_a_zygote_or_an_instance(runtime, make_function) -> None:
    code = make_function(app=COUNTER)
    await runtime.deploy("a", source=code, handler="app.handler")
    await runtime.deploy("b", source=code, handler="app.handler")
    ra = [await runtime.invoke("a") for _ in range(2)]
    rb = [await runtime.invoke("b") for _ in range(2)]
    assert {r.instance_id for r in ra}.isdisjoint(r.instance_id for r in rb)
    assert {r.value()["pid"] for r in ra}.isdisjoint(r.value()["pid"] for r in rb)
    assert rb[1].value()["count"] == 2  # b's module state is b's own
    za = runtime.describe("a")["state"]["zygote"]
    zb = runtime.describe("b")["state"]["zygote"]
    assert za["id"] != zb["id"] and za["pid"] != zb["pid"]


async def test_instances_never_import_the_server(runtime, make_function) -> None:
    code = make_function(app="""
        import sys
        def handler(event, context):
            return sorted(m for m in sys.modules
                          if m.split(".")[0] in ("trio", "httpx", "httptools", "fastfaas"))
    """)
    await runtime.deploy("mods", source=code, handler="app.handler")
    modules = (await runtime.invoke("mods")).value()
    assert not [m for m in modules if not m.startswith(("fastfaas.worker", "fastfaas._native",
                                                         "fastfaas.wire", "fastfaas.errors"))
                and m != "fastfaas"], modules
    assert "fastfaas.worker.instance" in modules


async def test_context_environment_and_one_argument_handlers(runtime, make_function) -> None:
    code = make_function(app="""
        import os
        def handler(event, context):
            return {
                "name": context.function_name, "version": context.function_version,
                "memory": context.memory_limit_in_mb, "request": context.aws_request_id,
                "remaining": context.get_remaining_time_in_millis(),
                "env": {k: os.environ.get(k) for k in ("GREETING", "AWS_LAMBDA_FUNCTION_NAME",
                        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "LAMBDA_TASK_ROOT", "HOME", "SECRET")},
                "cwd": os.getcwd(),
            }
        def one(event):
            return event * 2
    """)
    os.environ["SECRET"] = "server-only"
    try:
        await runtime.deploy("ctx", source=code, handler="app.handler", memory_mb=256,
                             timeout_s=5, env={"GREETING": "hi"})
        await runtime.deploy("one", source=code, handler="app.one")
        result = await runtime.invoke("ctx", {})
    finally:
        del os.environ["SECRET"]
    v = result.value()
    assert (v["name"], v["version"], v["memory"]) == ("ctx", "$LATEST", 256)
    assert v["request"] == result.request_id
    assert 0 < v["remaining"] <= 5000
    code_dir = v["env"]["LAMBDA_TASK_ROOT"]
    assert v["env"] == {"GREETING": "hi", "AWS_LAMBDA_FUNCTION_NAME": "ctx",
                        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256", "LAMBDA_TASK_ROOT": code_dir,
                        "HOME": None, "SECRET": None}
    assert v["cwd"] == code_dir
    assert (await runtime.invoke("one", 21)).value() == 42


async def test_leaving_the_runtime_stops_every_process_and_removes_its_cgroups(
    tmp_path, make_function, cgroups_mode
) -> None:
    code = make_function(app=COUNTER)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode) as rt:
        await rt.deploy("a", source=code, handler="app.handler")
        await rt.deploy("b", source=code, handler="app.handler")
        for name in ("a", "b", "a"):
            await rt.invoke(name)
        pids = rt.pids()
        roots = list(rt.cgroups.roots.values())
        assert len(pids) >= 6  # template, pool zygotes, 2 function zygotes, instances, spares
        assert all(alive(p) for p in pids)
    for pid in pids:
        await wait_exit(pid)
    assert not [p for p in pids if alive(p)]
    assert not [r for r in roots if r.exists()]


async def test_idle_instances_and_zygotes_are_reaped(runtime, make_function) -> None:
    await runtime.deploy("brief", source=make_function(app=COUNTER), handler="app.handler",
                         idle_timeout_s=0.2, zygote_idle_timeout_s=0.6)
    first = await runtime.invoke("brief")
    zygote_pid = runtime.describe("brief")["state"]["zygote"]["pid"]
    await wait_exit(first.value()["pid"])  # the idle instance was reaped
    second = await runtime.invoke("brief")
    assert second.start in ("prewarmed", "forked")
    assert second.value()["count"] == 1  # a fresh instance of the same zygote
    await wait_exit(zygote_pid)  # then the zygote
    third = await runtime.invoke("brief")
    assert third.start == "claimed"


async def test_a_mass_expiry_stops_its_instances_one_at_a_time(
    runtime, make_function, tmp_path
) -> None:
    # Six idle instances expire at once: all are taken out of service (DRAINING) in one
    # look of the reaper, then stopped one at a time over its tick, not all in one go.
    await runtime.deploy("mass", source=make_function(app=GATED), handler="app.handler")
    await idle_instances(runtime, "mass", 6, tmp_path)
    counts = runtime.describe("mass")["state"]["instances"]
    assert counts["warm"] == 6 and counts["draining"] == 0
    reaped = runtime.statistics()["counters"].get("instances_reaped", 0)
    # All six idle for longer than the timeout set next, so that the look it wakes
    # finds them all expired (a look between their expiries would split them). The
    # look then stops one and sleeps; this task, woken by it, runs before the
    # reaper's next step at the earliest, so it sees at least 4 still DRAINING.
    await trio.sleep(0.1)
    await runtime.update_config("mass", idle_timeout_s=0.01)
    most_draining = 0
    with trio.fail_after(20):
        while counts["warm"] or counts["draining"]:
            await runtime.wait_changed()
            counts = runtime.describe("mass")["state"]["instances"]
            most_draining = max(most_draining, counts["draining"])
    assert runtime.statistics()["counters"]["instances_reaped"] - reaped == 6
    assert most_draining >= 4  # 5 wait while the first is stopped


async def test_redeploy_drains_the_old_zygote_while_new_calls_use_the_new_code(
    runtime, make_function, tmp_path
) -> None:
    await runtime.deploy("v", source=make_function(app=GATED), handler="app.handler")
    async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
        old = start_invoke(nursery, runtime, "v", {"gate": gate.path})
        await gate.wait_arrivals(1)
        old_zygote = runtime.describe("v")["state"]["zygote"]["pid"]
        await runtime.deploy("v", source=make_function(app=GATED.replace('"v1"', '"v2"')),
                             handler="app.handler")
        new = start_invoke(nursery, runtime, "v", {"gate": gate.path})
        await gate.wait_arrivals(2)
        assert alive(old_zygote)  # the in-flight call still holds it
        await gate.release()
    assert old[0].value()["tag"] == "v1"
    assert new[0].value()["tag"] == "v2"
    await wait_exit(old_zygote)
    assert runtime.statistics()["draining"] == []


async def test_delete_stops_the_function(runtime, make_function) -> None:
    await runtime.deploy("gone", source=make_function(app=COUNTER), handler="app.handler")
    pid = (await runtime.invoke("gone")).value()["pid"]
    await runtime.delete("gone")
    with pytest.raises(FunctionNotFoundError, match="gone"):
        await runtime.invoke("gone")
    await wait_exit(pid)
    assert runtime.functions() == []


async def test_deploy_from_a_zip_file(runtime, make_function, tmp_path) -> None:
    import zipfile

    zpath = tmp_path / "bundle.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/mod.py", "def handler(event, context):\n    return 'zipped'\n")
    info = await runtime.deploy("zipped", source=zpath, handler="pkg.mod.handler")
    assert len(info["code_sha256"]) == 64
    assert (await runtime.invoke("zipped")).value() == "zipped"


def test_blocking_runtime_from_a_plain_thread(tmp_path, make_function: Callable[..., Path],
                                              cgroups_mode: str) -> None:
    code = make_function(app=COUNTER)
    seen: list[int] = []
    with fastfaas.BlockingRuntime(data_dir=tmp_path / "d", cgroups=cgroups_mode) as rt:
        rt.deploy("counter", source=code, handler="app.handler")

        def worker() -> None:
            seen.append(rt.invoke("counter", {"x": 1}).value()["count"])

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert rt.statistics()["functions"]["counter"]["in_flight"] == 0
        pids = rt.runtime.pids()
    assert sorted(seen)[0] == 1 and len(seen) == 3
    assert not [p for p in pids if alive(p)]


async def test_an_idle_instance_killed_from_outside_is_never_handed_out(
    runtime, make_function
) -> None:
    await runtime.deploy("victim", source=make_function(app=COUNTER), handler="app.handler")
    first = await runtime.invoke("victim")
    await wait_spare(runtime, "victim")
    fv = runtime._functions["victim"]
    warm = next(i for i in fv.instances.values() if i.instance_id == first.instance_id)
    assert warm.proc is not None
    os.kill(first.value()["pid"], 9)
    await warm.proc.exited.wait()  # the zygote reported the exit
    second = await runtime.invoke("victim")
    assert second.ok, second.error
    assert second.start == "prewarmed" and second.instance_id != first.instance_id
    await wait_spare(runtime, "victim")  # and the spare taken is replaced


async def test_a_cancelled_caller_leaves_its_invocation_to_finish(
    runtime, make_function, tmp_path
) -> None:
    await runtime.deploy("gated", source=make_function(app=GATED), handler="app.handler")
    async with open_gate(tmp_path) as gate:
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime.invoke, "gated", {"gate": gate.path})
                await gate.wait_arrivals(1)
                scope.cancel()
        assert scope.cancelled_caught
        assert runtime.statistics()["functions"]["gated"]["in_flight"] == 0  # the caller left
        await gate.release()
        while runtime.counters["abandoned"] == 0:
            await trio.sleep(0)  # a checkpoint: the background finisher runs
        async with trio.open_nursery() as nursery:
            nursery_results = start_invoke(nursery, runtime, "gated", {"gate": gate.path})
            await gate.wait_arrivals(1)
            await gate.release()
    (result,) = nursery_results
    assert result.ok and result.start == "warm"  # the abandoned call's instance, reused


async def test_update_config_starts_a_new_zygote_only_when_it_must(runtime, make_function) -> None:
    await runtime.deploy("cfg", source=make_function(app=COUNTER), handler="app.handler")
    first = await runtime.invoke("cfg")
    zygote = runtime.describe("cfg")["state"]["zygote"]
    info = await runtime.update_config("cfg", description="same code, same zygote")
    assert info["config"]["description"] == "same code, same zygote"
    assert info["state"]["generation"] == 1
    assert (await runtime.invoke("cfg")).value()["count"] == 2  # same warm instance
    info = await runtime.update_config("cfg", memory_mb=256, env={"A": "1"})
    assert info["state"]["generation"] > 1 and info["config"]["memory_mb"] == 256
    after = await runtime.invoke("cfg")
    assert after.start == "claimed" and after.value()["count"] == 1
    assert runtime.describe("cfg")["state"]["zygote"]["pid"] != zygote["pid"]
    await wait_exit(first.value()["pid"])  # the old version drained
    with pytest.raises(fastfaas.errors.InvalidRequestError, match="memory_mb"):
        await runtime.update_config("cfg", memory_mb=1)
    assert runtime.describe("cfg")["config"]["memory_mb"] == 256


async def test_a_dead_template_is_replaced_and_functions_keep_working(
    runtime, make_function
) -> None:
    await runtime.deploy("survivor", source=make_function(app=COUNTER), handler="app.handler")
    before = await runtime.invoke("survivor")
    assert before.ok
    # Settled: the spare forked after that call has reported its pid (an instance
    # still alive when the call below reaches it would take its event and then die).
    fv = runtime._functions["survivor"]
    while (runtime.statistics()["functions"]["survivor"]["instances"]["spare"] < 1
           or any(i.proc is None for i in fv.instances.values())):
        await runtime.wait_changed()
    old_template, old = runtime.template.pid, runtime.pids()
    os.kill(old_template, 9)
    for pid in old:  # its zygotes and instances go with it
        await wait_exit(pid)
    # The runtime may not have heard yet: the dead ones it finds are retired and retried.
    after = await runtime.invoke("survivor")  # waits for the new template if need be
    assert after.ok, after.error
    assert after.start in ("claimed", "cold")
    assert runtime.template.pid != old_template
    assert runtime.counters["template_restarts"] == 1


async def test_the_warming_pool_grows_with_a_burst_of_claims(tmp_path, make_function,
                                                             cgroups_mode) -> None:
    code = make_function(app="def handler(e, c):\n    return 1\n")
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                warm_pool_size=1, warm_pool_max=4) as rt:
        assert rt.statistics()["warming_pool"]["target"] == 1
        for i in range(6):  # six claims within the window: more than twice the target
            await rt.deploy(f"f{i}", source=code, handler="app.handler")
            assert (await rt.invoke(f"f{i}")).start in ("claimed", "cold")
        pool = rt.statistics()["warming_pool"]
        assert pool["recent_claims"] == 6
        assert 2 <= pool["target"] <= 4


# --- invoke_nowait: the HTTP front end's fast path ----------------------------------------


def _instance_of(rt: fastfaas.Runtime, name: str, instance_id: str) -> Any:
    return next(i for i in rt._functions[name].instances.values()
                 if i.instance_id == instance_id)


async def test_invoke_nowait_polls_a_lone_quick_call_and_answers_at_the_first_step(
        tmp_path, make_function, cgroups_mode) -> None:
    code = make_function(app=COUNTER)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                spin_us=100_000) as rt:
        await rt.deploy("q", source=code, handler="app.handler")
        assert (await rt.invoke("q")).value()["count"] == 1
        assert (await rt.invoke("q")).start == "warm"  # a warm call: now known quick
        assert rt.invoke_nowait("q", b"{not json") is None  # invoke says why, not this
        assert rt.invoke_nowait("nope", b"{}") is None
        call = rt.invoke_nowait("q", b'{"k": 1}')
        assert call is not None
        result = call.step()  # polled for within the 100 ms window: no wait on its fd
        assert isinstance(result, fastfaas.InvocationResult), result
        assert result.value() == {"count": 3, "pid": result.value()["pid"], "event": {"k": 1}}
        assert result.start == "warm" and result.request_id
        assert rt.counters["nowait_calls"] == 1
        assert rt.limits.in_flight("q") == 0  # released, as invoke does
        assert [e.request_id for e in rt.logs("q")][-1] == result.request_id


async def test_invoke_nowait_to_an_instance_that_died_unnoticed_is_retried_elsewhere(
        runtime, make_function) -> None:
    await runtime.deploy("dead", source=make_function(app=COUNTER), handler="app.handler")
    first = await runtime.invoke("dead")
    inst = _instance_of(runtime, "dead", first.instance_id)
    await inst.spawned.wait()  # its zygote's report of the pid may come after the answer
    os.kill(inst.proc.pid, 9)  # its pid on the host (the handler sees its namespace's)
    # Wait, without letting the runtime run (it would retire the idle instance), until
    # the instance's end of the channel is closed: the send will then fail.
    poller = select.poll()
    poller.register(inst.chan.fd, select.POLLHUP)
    assert poller.poll(5000), "the killed instance's channel never hung up"
    call = runtime.invoke_nowait("dead", b'{"again": true}')
    assert call is not None
    rest = call.step()
    assert callable(rest) and not isinstance(rest, fastfaas.InvocationResult)
    result = await rest()
    assert result.error is None and result.value()["event"] == {"again": True}
    assert result.value()["count"] == 1 and result.start in ("prewarmed", "forked")
    assert runtime.counters["retries"] == 1
    assert _settled_counts(runtime, "dead") == (0, 0, 0)


def _settled_counts(rt: fastfaas.Runtime, name: str) -> tuple[int, int, int]:
    """(calls running in the runtime, the function's calls in flight, its concurrency held)."""
    return rt._running, rt._functions[name].in_flight, rt.limits.in_flight(name)


DIES_OR_NAPS = """
import os, time
def handler(event, context):
    if event.get("die"):
        os._exit(3)
    time.sleep(event.get("s", 0))
    return {"size": len(event.get("pad", ""))}
"""


async def test_invoke_nowait_crash_abandon_and_large_events_leave_nothing_counted(
        runtime, make_function) -> None:
    await runtime.deploy("nw2", source=make_function(app=DIES_OR_NAPS), handler="app.handler")
    assert (await runtime.invoke("nw2", {})).ok

    # The instance dies mid-call: the rest is awaited (a Crashed result), counts undone.
    call = runtime.invoke_nowait("nw2", b'{"die": true}')
    assert call is not None
    while (out := call.step()) is None:
        await trio.lowlevel.wait_readable(call.fd)
    assert not isinstance(out, fastfaas.InvocationResult)
    crashed = await out()
    assert crashed.error is not None and crashed.error.kind == "Crashed"
    assert _settled_counts(runtime, "nw2") == (0, 0, 0)

    # Nobody steps it any more (its HTTP connection went with the server): the runtime
    # runs it to its end in its own nursery, logs it, and counts it out.
    assert (await runtime.invoke("nw2", {})).ok  # a warm instance again
    call = runtime.invoke_nowait("nw2", b'{"s": 0.2}')
    assert call is not None and call.step() is None
    call.abandon()
    while _settled_counts(runtime, "nw2") != (0, 0, 0):
        await runtime.wait_changed()
    assert runtime.logs("nw2")[-1].request_id == call.request_id

    # An event too large to go inline is sent by invoke's own path, not without a wait.
    before = runtime.counters["nowait_calls"]
    pad = "x" * 100_000
    call = runtime.invoke_nowait("nw2", b'{"pad": "%s"}' % pad.encode())
    assert call is not None
    rest = call.step()
    assert callable(rest) and not isinstance(rest, fastfaas.InvocationResult)
    assert (await rest()).value() == {"size": 100_000}
    assert runtime.counters["nowait_calls"] == before
    assert _settled_counts(runtime, "nw2") == (0, 0, 0)


async def test_a_large_event_beside_calls_in_flight_is_not_left_waiting_for_a_reply(
        runtime, make_function) -> None:
    """With other calls in flight a call's reply is not expected at once (the caller
    waits for its descriptor before the first step), unless nothing was sent: an event
    too large to go inline is sent by the step's rest, and waiting first would hang."""
    await runtime.deploy("nw3", source=make_function(app=DIES_OR_NAPS), handler="app.handler")
    async with trio.open_nursery() as nursery:  # two instances, both warm and idle after
        for _ in range(2):
            nursery.start_soon(runtime.invoke, "nw3", {"s": 0.2})
    napping = runtime.invoke_nowait("nw3", b'{"s": 0.3}')
    assert napping is not None and napping.waits_first is False  # alone: polled at first
    big = runtime.invoke_nowait("nw3", b'{"pad": "%s"}' % (b"x" * 100_000))
    assert big is not None and big.waits_first is False
    rest = big.step()
    assert callable(rest) and not isinstance(rest, fastfaas.InvocationResult)
    assert (await rest()).value() == {"size": 100_000}
    small = runtime.invoke_nowait("nw3", b"{}")  # beside `napping`: waits for its reply
    assert small is not None and small.waits_first is True
    await trio.lowlevel.wait_readable(small.fd)
    out = small.step()  # the first step, once the reply is in, reads it
    assert isinstance(out, fastfaas.InvocationResult) and out.ok
    while (out := napping.step()) is None:
        await trio.lowlevel.wait_readable(napping.fd)
    assert isinstance(out, fastfaas.InvocationResult) and out.ok
    assert _settled_counts(runtime, "nw3") == (0, 0, 0)


async def test_what_the_runtime_keeps_per_call_is_not_walked_by_the_collector(
        runtime, make_function) -> None:
    """Log entries and usage samples are kept for many calls and dropped oldest first:
    tracked by the cyclic collector, each would outlive a young collection and die
    later, growing the young generation between collections (issue #5's pauses)."""
    import gc

    await runtime.deploy("kept", source=make_function(app=COUNTER), handler="app.handler")
    for _ in range(3):
        assert (await runtime.invoke("kept")).ok
    entries, samples = runtime.logs("kept"), runtime.usage("kept")
    assert len(entries) == 3 and len(samples) == 3
    assert not any(gc.is_tracked(x) for x in [*entries, *samples])
