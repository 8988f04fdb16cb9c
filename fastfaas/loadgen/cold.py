"""The cold-start scenario: each start kind forced on purpose, and measured.

Phases, each until it has the samples it wants (or runs out of tries):
sequential calls (warm), bursts after the instances were reaped (prewarmed,
forked), first calls after new deployments and after a zygote was reaped
(claimed), and more new deployments at once than the warming pool holds
(cold). A call goes over a new connection; the server says which start it
made (X-Fastfaas-Start).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import msgspec
import trio

from fastfaas.loadgen.client import Connection, ConnectionClosed, Response, build_request
from fastfaas.loadgen.engine import Target
from fastfaas.loadgen.hist import Histogram
from fastfaas.loadgen.scenarios import Api, function_env
from fastfaas.loadgen.stats import Stats

T = TypeVar("T")

# The burst function's handler sleeps this long, so that a burst's calls overlap.
BURST_HANDLER_MS: Final = 100.0


class ColdPhase(msgspec.Struct):
    """One phase of the cold scenario: which start kinds it forces, how."""

    name: str
    how: str
    wanted: dict[str, int]  # start kind -> samples wanted
    got: dict[str, int] = {}  # start kind -> samples recorded (wanted kinds only)
    # Other start kinds met, not recorded: e.g. the claims of a burst meant to drain
    # the pool, measured under contention, are not what that phase forces.
    also: dict[str, int] = {}
    tries: int = 0
    errors: int = 0


class ColdReport:
    """What `cold_starts` recorded.

    `stats.latency` holds, per start kind, the client latency of each call
    (a new connection per call) minus the handler's own time
    (X-Fastfaas-Duration-Us), so a handler that sleeps to make a burst
    overlap does not count (`stats.server`, the server's time, is without it
    too). Only the kinds a phase forces are recorded from it (the others it
    met are counted in its `also`); non-200 answers and function errors are
    in `stats.errors`, not in the latencies.
    """

    def __init__(self) -> None:
        self.stats = Stats()
        self.phases: list[ColdPhase] = []

    def wanted_vs_got(self) -> dict[str, dict[str, int]]:
        """Per start kind: samples wanted (by the phases that force it) and recorded."""
        out: dict[str, dict[str, int]] = {}
        for phase in self.phases:
            for kind, n in phase.wanted.items():
                out.setdefault(kind, {"wanted": 0, "got": 0})["wanted"] += n
        for kind, hist in self.stats.latency.items():
            out.setdefault(kind, {"wanted": 0, "got": 0})["got"] = hist.total
        return out


async def _timed(target: Target, function: str, payload: bytes) -> tuple[Response, int]:
    """One request on a new connection: the response and the client latency (us).

    Raises:
        OSError: connecting failed.
        ConnectionClosed: the server closed the connection before answering.
    """
    conn = await Connection.open(target.host, target.port)
    try:
        data = build_request(target.host, target.port, "POST", target.path(function), payload,
                             target.headers())
        t0 = time.perf_counter_ns()
        r = await conn.request(data)
        return r, (time.perf_counter_ns() - t0) // 1000
    finally:
        conn.close()


class _ColdRun:
    """The state of one cold_starts run: the report, and the functions deployed
    (deleted at the end, whatever happens)."""

    def __init__(self, api: Api, target: Target, rounds: int, memory_mb: int,
                 prefix: str) -> None:
        self.api = api
        self.target = target
        self.rounds = rounds
        self.memory_mb = memory_mb
        self.prefix = prefix
        self.report = ColdReport()
        self.deployed: set[str] = set()
        self.max_tries = 3 * rounds + 5

    def deploy(self, name: str, handler_ms: float = 0, **config: Any) -> None:
        self.deployed.add(name)
        self.api.deploy(name, memory_mb=self.memory_mb,
                        env=function_env("sleep", handler_ms, 0), **config)

    def delete(self, name: str) -> None:
        self.api.delete(name)
        self.deployed.discard(name)

    def phase(self, name: str, how: str, *kinds: str) -> ColdPhase:
        phase = ColdPhase(name, how, dict.fromkeys(kinds, self.rounds), {}, {})
        self.report.phases.append(phase)
        return phase

    def short(self, phase: ColdPhase) -> bool:
        """Whether a phase still lacks samples of a kind it wants and has tries
        left; if so, one more try is counted."""
        lacking = any(phase.got.get(k, 0) < n for k, n in phase.wanted.items())
        if not lacking or phase.tries >= self.max_tries:
            return False
        phase.tries += 1
        return True

    async def call(self, phase: ColdPhase | None, name: str) -> None:
        """Call `name` once and record the outcome in the phase (None: a set-up
        call, not recorded)."""
        if phase is None:
            await _timed(self.target, name, b"{}")
            return
        stats = self.report.stats
        stats.sent += 1
        try:
            r, us = await _timed(self.target, name, b"{}")
        except OSError:
            stats.connect_errors += 1
            phase.errors += 1
            return
        except ConnectionClosed:
            stats.errors["connection_closed"] += 1
            phase.errors += 1
            return
        if r.status != 200 or r.function_error:
            key = f"http_{r.status}" if r.status != 200 else f"function_{r.function_error}"
            stats.errors[key] += 1
            phase.errors += 1
            return
        kind = r.start or "-"
        if kind not in phase.wanted:
            phase.also[kind] = phase.also.get(kind, 0) + 1
            return
        stats.latency.setdefault(kind, Histogram()).record(max(0, us - max(0, r.duration_us)))
        if r.duration_us >= 0:
            stats.duration.record(r.duration_us)
        if r.server_us >= 0:  # also without the handler's time, as the client latency
            stats.server.record(max(0, r.server_us - max(0, r.duration_us)))
        stats.ok += 1
        phase.got[kind] = phase.got.get(kind, 0) + 1

    async def call_all(self, phase: ColdPhase, names: Sequence[str]) -> None:
        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(self.call, phase, name)


async def cold_starts(api: Api, target: Target, rounds: int, *, memory_mb: int = 128,
                      burst: int = 4, prefix: str = "cold") -> ColdReport:
    """Force each start kind until it has `rounds` samples (or 3 * rounds + 5 tries
    per phase); what was wanted and got is in the report.

    - warm: sequential calls to a function that has served;
    - prewarmed, forked: after the instances of a new function were reaped
      (idle_timeout_s 0.5 s) and its spares are ready, a burst of (spares +
      burst - 1) concurrent calls, each sleeping BURST_HANDLER_MS so that they
      overlap: the spares are taken (prewarmed), the rest fork;
    - claimed: the first call after a new deployment, the warming pool full;
    - claimed after a zygote reap: a function whose zygote was stopped by a
      1 s zygote_idle_timeout_s claims a generic zygote again;
    - cold: more new deployments than the warming pool's target, deployed
      first and then invoked all at once, so the pool runs dry.

    Every function deployed is deleted at the end, also on an error or Ctrl-C.
    """
    run = _ColdRun(api, target, rounds, memory_mb, prefix)
    try:
        await _warm_phase(run)
        await _burst_phase(run, burst)
        await _claim_phase(run)
        await _zygote_reap_phase(run)
        await _cold_phase(run)
    finally:
        for name in list(run.deployed):
            with contextlib.suppress(Exception):
                run.delete(name)
    return run.report


async def _warm_phase(run: _ColdRun) -> None:
    phase = run.phase("warm", "sequential calls to a function that has served", "warm")
    name = f"{run.prefix}-warm"
    run.deploy(name)
    run.api.warm(name)
    await run.call(None, name)
    while run.short(phase):
        await run.call(phase, name)
    run.delete(name)


async def _burst_phase(run: _ColdRun, burst: int) -> None:
    phase = run.phase(
        "burst after reap",
        f"a new function's instances reaped (idle_timeout_s 0.5 s), then spares + {burst - 1}"
        f" concurrent calls of a handler sleeping {BURST_HANDLER_MS:g} ms", "prewarmed",
        "forked")
    i = 0
    while run.short(phase):
        # A new function each time: a function's spares follow its recent demand
        # for new instances and are kept, so bursts on one function would find
        # ever more spares and fork less and less.
        name = f"{run.prefix}-burst-{i:03d}"
        i += 1
        run.deploy(name, BURST_HANDLER_MS, idle_timeout_s=0.5)
        run.api.warm(name)
        spares = await _wait_for_reaped(run.api, name)
        await run.call_all(phase, [name] * (spares + burst - 1))
        run.delete(name)


async def _claim_phase(run: _ColdRun) -> None:
    phase = run.phase("new deployment", "the first call after a new deployment, the warming"
                      " pool full", "claimed")
    i = 0
    while run.short(phase):
        await _wait_for_pool(run.api)
        fresh = f"{run.prefix}-claim-{i:03d}"
        i += 1
        run.deploy(fresh)
        await run.call(phase, fresh)
        run.delete(fresh)


async def _zygote_reap_phase(run: _ColdRun) -> None:
    phase = run.phase("after zygote reap", "the next call after the function's zygote was"
                      " stopped (zygote_idle_timeout_s 1 s), the warming pool full", "claimed")
    name = f"{run.prefix}-reap"
    run.deploy(name, idle_timeout_s=0.5, zygote_idle_timeout_s=1)
    await run.call(None, name)  # its first claim, after the deployment: not this phase's
    while run.short(phase):
        await _wait_for_zygote_gone(run.api, name)
        await _wait_for_pool(run.api)
        await run.call(phase, name)
    run.delete(name)


async def _cold_phase(run: _ColdRun) -> None:
    phase = run.phase("pool drained", "more new deployments than the warming pool's target,"
                      " deployed first, then invoked all at once", "cold")
    batch = 0
    while run.short(phase):
        target = await _wait_for_pool(run.api)
        wanted = run.rounds - phase.got.get("cold", 0)
        # The pool refills while the batch runs: some of the extra calls still
        # claim; more extra calls than cold samples missing make up for it.
        names = [f"{run.prefix}-cold-{batch}-{j}" for j in range(target + min(6, max(2, wanted)))]
        batch += 1
        for n in names:
            run.deploy(n)
        await run.call_all(phase, names)
        for n in names:
            run.delete(n)


def _state(api: Api, name: str) -> dict[str, Any]:
    r = api.client.get(f"/v1/functions/{name}")
    r.raise_for_status()
    state: dict[str, Any] = r.json()["state"]
    return state


async def _poll(what: str, ready: Callable[[], T | None], timeout_s: float = 30) -> T:
    """ready() until it returns something other than None, 50 ms apart, for at most
    timeout_s (polling a remote server's state is the only way to see it).

    Raises:
        RuntimeError: timeout_s passed.
    """
    deadline = trio.current_time() + timeout_s
    while trio.current_time() < deadline:
        got = ready()
        if got is not None:
            return got
        await trio.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {timeout_s:g} s")


async def _wait_for_reaped(api: Api, name: str) -> int:
    """Wait until `name` has no warm, busy, spawning or draining instance and at
    least one spare; how many spares."""
    def reaped() -> int | None:
        inst = _state(api, name)["instances"]
        if inst["warm"] or inst["busy"] or inst["spawning"] or inst["draining"]:
            return None
        return int(inst["spare"]) or None

    return await _poll(f"{name}'s instances reaped with a spare ready", reaped)


async def _wait_for_zygote_gone(api: Api, name: str) -> None:
    await _poll(f"{name}'s zygote stopped",
                lambda: True if _state(api, name)["zygote"] is None else None)


async def _wait_for_pool(api: Api) -> int:
    """Wait until the warming pool holds its target (/healthz); that target."""
    def full() -> int | None:
        health = api.health()
        if "warming_pool_target" not in health:
            raise RuntimeError("the server's /healthz has no warming_pool_target: is it an"
                               " older fastfaas?")
        target = int(health["warming_pool_target"])
        return target if int(health["warming_pool"]) >= target else None

    return await _poll("the warming pool refill", full)
