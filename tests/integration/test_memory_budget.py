"""The memory budget with real processes and their measured memory: idle instances
of other functions are evicted (least recently used first), then a start is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import fastfaas
from fastfaas.errors import TooManyRequestsError
from tests.integration.test_runtime import GATED, idle_instances, open_gate

TRIVIAL = "import os\ndef handler(e, c):\n    return os.getpid()\n"


async def measure_settled(rt: fastfaas.Runtime) -> int:
    """The measured total once two measurements in a row agree within 1 MB (the
    processes just started are counted)."""
    with trio.fail_after(20):
        last = await rt.wait_memory_measured()
        while True:
            used = await rt.wait_memory_measured()
            if used > 0 and abs(used - last) < 1 << 20:
                return used
            last = used


async def test_idle_instances_of_others_are_evicted_lru_first_then_starts_refused(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                spares=0) as rt:
        await rt.deploy("old", source=make_function(app=GATED), handler="app.handler")
        await idle_instances(rt, "old", 3, tmp_path)
        old = rt._functions["old"]
        assert rt.statistics()["functions"]["old"]["instances"]["warm"] == 3
        lru = min(old.instances.values(), key=lambda i: i.idle_since)
        await rt.deploy("new", source=make_function(app=TRIVIAL), handler="app.handler")
        assert await rt.warm("new") is None  # its zygote, before the budget is set
        used = await measure_settled(rt)
        # Full but for a byte: the new instance needs one eviction to fit.
        rt.memory_budget = used + rt._functions["new"].instance_memory - 1
        first = await rt.invoke("new")
        assert first.ok and first.start in ("forked", "prewarmed")
        counters = rt.statistics()["counters"]
        assert counters["evicted_instances"] >= 1
        assert lru.dead  # the least recently used went first
        # With no room to make, a start is refused with the reason.
        await rt.deploy("third", source=make_function(app=TRIVIAL), handler="app.handler")
        rt.memory_budget = 1
        with pytest.raises(TooManyRequestsError, match="memory budget is full"):
            await rt.invoke("third")
        assert rt.statistics()["counters"]["memory_refusals"] == 1
        warm = await rt.invoke("new")  # a warm start needs no room
        assert warm.ok and warm.start == "warm"


async def test_the_instance_cap_from_rlimit_nofile_evicts_then_refuses(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                spares=0) as rt:
        assert rt.statistics()["instances"]["max"] >= 16
        rt._max_instances = 2  # as if RLIMIT_NOFILE allowed two instances
        await rt.deploy("a", source=make_function(app=TRIVIAL), handler="app.handler")
        await rt.deploy("b", source=make_function(app=GATED), handler="app.handler")
        first_a = await rt.invoke("a")
        await rt.invoke("b", {"gate": "/nonexistent"})  # fails fast, leaves b's instance
        # Two live instances: a third start evicts a's idle one...
        async with open_gate(tmp_path) as gate, trio.open_nursery() as nursery:
            nursery.start_soon(rt.invoke, "b", {"gate": gate.path})
            nursery.start_soon(rt.invoke, "b", {"gate": gate.path})
            await gate.wait_arrivals(2)
            assert rt.statistics()["counters"]["evicted_for_descriptors"] == 1
            assert rt._functions["a"].instances == {}
            # ...and with both busy, nothing can make room.
            with pytest.raises(TooManyRequestsError, match="RLIMIT_NOFILE"):
                await rt.invoke("a")
            await gate.release()
        assert first_a.ok


async def test_instances_the_reaper_has_not_stopped_yet_make_room_first(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    # The reaper takes expired instances out of service in one look and stops them
    # one at a time over the next second; meanwhile they still count, and a start
    # that needs room stops them at once rather than being refused.
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                spares=0) as rt:
        await rt.deploy("old", source=make_function(app=GATED), handler="app.handler",
                        idle_timeout_s=4)  # the reaper looks once a second
        await rt.deploy("new", source=make_function(app=GATED), handler="app.handler",
                        timeout_s=60)  # held through old's expiry
        await idle_instances(rt, "old", 6, tmp_path)
        (tmp_path / "held").mkdir()  # a gate of its own (the last one's socket file stays)
        async with open_gate(tmp_path / "held") as gate, trio.open_nursery() as nursery:
            nursery.start_soon(rt.invoke, "new", {"gate": gate.path})
            await gate.wait_arrivals(1)  # new's only instance busy
            rt._max_instances = 2  # as if RLIMIT_NOFILE allowed two instances
            with trio.fail_after(30):
                while rt.statistics()["functions"]["old"]["instances"]["draining"] < 2:
                    await rt.wait_changed()
            # Two or more of old's are waiting to be stopped, 62 ms apart: a start of
            # new needs room for one more instance.
            second = await rt.invoke("new", {"gate": "/nonexistent"})
            assert second.start in ("forked", "prewarmed")
            assert rt.statistics()["counters"]["evicted_for_descriptors"] >= 1
            await gate.release()
