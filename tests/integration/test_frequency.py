"""Frequency routing with real processes: the long tail starts through a queue,
keeps no spares, and a burst promotes a function at once."""

from __future__ import annotations

from pathlib import Path

import trio

import fastfaas

SLEEPY = "import time\ndef handler(e, c):\n    time.sleep(e.get('s', 0))\n    return 1\n"


async def wait_class(rt: fastfaas.Runtime, name: str, klass: str) -> dict:
    """Until the function is of `klass` (its state, read the way /v1/functions does)."""
    with trio.fail_after(20):
        while True:
            state = rt.statistics()["functions"][name]
            if state["class"] == klass:
                return state
            await rt.wait_changed()


async def test_a_quiet_function_turns_infrequent_and_starts_queued(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                frequency_window_s=0.4, infrequent_starts=1) as rt:
        await rt.deploy("tail", source=make_function(app=SLEEPY), handler="app.handler",
                        idle_timeout_s=0.2)
        first = await rt.invoke("tail", {})
        assert first.route == "direct"  # just deployed: frequent until a quiet window
        state = await wait_class(rt, "tail", "infrequent")
        with trio.fail_after(20):  # the reaper drops its spares and its idle instance
            while state["instances"]["spare"] or state["instances"]["warm"]:
                await rt.wait_changed()
                state = rt.statistics()["functions"]["tail"]
        assert state["spare_target"] == 0
        again = await rt.invoke("tail", {})
        assert again.ok and again.route == "queued" and again.start == "forked"
        assert rt.statistics()["counters"]["queued_starts"] == 1
        # A burst promotes it at once: its calls go direct, its spares come back.
        async with trio.open_nursery() as nursery:
            results: list[fastfaas.InvocationResult] = []

            async def call() -> None:
                results.append(await rt.invoke("tail", {"s": 0.2}))

            for _ in range(3):
                nursery.start_soon(call)
        assert all(r.ok for r in results)
        assert rt.statistics()["functions"]["tail"]["class"] == "frequent"
        assert [r.route for r in results].count("direct") >= 2  # from the second on


async def test_starts_of_infrequent_functions_are_bounded(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    code = make_function(app=SLEEPY)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups=cgroups_mode,
                                frequency_window_s=0.3, infrequent_starts=1) as rt:
        names = [f"t{i}" for i in range(3)]
        for name in names:
            await rt.deploy(name, source=code, handler="app.handler", idle_timeout_s=0.2)
            await rt.warm(name)
        for name in names:
            await wait_class(rt, name, "infrequent")
        order: list[str] = []

        async def call(name: str) -> None:
            r = await rt.invoke(name, {})
            assert r.ok and r.route == "queued"
            order.append(name)

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(call, name)
        assert sorted(order) == names  # all served, one start at a time
        assert rt.statistics()["counters"]["queued_starts"] == 3
