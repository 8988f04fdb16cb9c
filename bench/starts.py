#!/usr/bin/env python3
"""Start latency through `Runtime.invoke`, per start kind, against baselines.

    .venv/bin/python bench/starts.py [--quick] [--out PATH]

Prints one JSON document (see bench/README.md for every figure): for a
trivial handler and for one that imports a mid-size part of the standard
library at module level, the invoke -> result latency of each start kind
(warm, prewarmed, forked, claimed, cold); how late a Timeout error arrives
after its deadline; and, in the same run, three baselines: a fresh python per
invocation, a multiprocessing forkserver Process per invocation, and a bare
trio <-> blocking-child round trip (the IPC floor). Targets are reported as
booleans, not asserted.

How each start kind is forced (the runtime's own code decides the kind; every
sample's `result.start` is checked and samples of another kind are discarded
and counted):

- warm: back-to-back invocations; the instance that served the previous one
  is idle and is taken again. Measured in 4 blocks spread over the run
  (each next to a block of the IPC floor), so one noisy spell does not
  decide the figure.
- prewarmed: before each sample the warm idle instances are retired (the
  runtime's own retire path) and the runtime is left to settle with its spare
  ready, so the next invocation finds no warm instance but a spare.
- forked: spares are off for the series (`spares=0`), and before each sample
  every idle instance is retired (`Runtime._drain_idle`) and the runtime
  settles, so the next invocation forks from the function zygote.
- claimed: before each sample the function is redeployed (a new function
  version, so a new zygote is needed) and the warming pool is left to refill.
- cold: as claimed, in a second Runtime with warm_pool_size=0; claimed and
  cold samples alternate.

"Settle" means: no reclaim or spare-forking task running, the warming pool
and the cgroup pool full, no retired version or dying zygote being cleaned
up. Each non-warm sample starts from that quiet state. Figures compared
with each other are taken alternately (round robin), not one after another.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import math
import multiprocessing
import multiprocessing.forkserver
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import _common
import trio
from _common import BenchError, log, ms, nearest_rank, summary

from fastfaas import _native, errors
from fastfaas.runtime import policy
from fastfaas.runtime.runtime import Runtime  # the runtime code is loaded now, not mid-run

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
FUNCTIONS = BENCH / "functions"
BASELINES = BENCH / "baselines"

MEMORY_MB = 1769  # one full vCPU under the CPU-quota rule (CPU ∝ memory, 1769 MB = 1 vCPU)
MIDSIZE_IMPORTS = ["json", "decimal", "email.parser", "http.client", "xml.etree.ElementTree"]
HANDLERS = {
    # name: (code directory, module); both handlers return {"echo": event}
    "trivial": (FUNCTIONS / "trivial", "trivial_fn"),
    "midsize": (FUNCTIONS / "midsize", "midsize_fn"),
}
SLEEPER = (FUNCTIONS / "sleeper", "sleeper_fn")
START_KINDS = ("warm", "prewarmed", "forked", "claimed", "cold")
EVENT = {"id": 1, "body": "x" * 64}
EVENT_BYTES = json.dumps(EVENT).encode()
EXPECTED = {"echo": EVENT}
TIMEOUT_S = 1
IPC_MESSAGE = b"m" * 100
IPC_WARMUP = 100
WARM_BLOCKS = 4
IDLE_PAUSE_S = 0.005
DIAGNOSTICS_ABOUT = {
    "warm_after_idle_pause": "warm starts, each after a 5 ms pause: what a warm start costs "
                             "once the instance (and its CPU) went idle; compare with "
                             "prewarmed, whose samples also start after a quiet spell",
    "prewarmed_back_to_back": "prewarmed starts measured as warm ones are, back to back "
                              "with no quiet spell between: n spares forked ahead (prewarm), "
                              "replacement stubbed, each used instance set aside (alive) so "
                              "that the next call takes a spare",
    "prewarmed_without_replacement": "prewarmed starts with the runtime's replacement of the "
                                     "taken spare deferred until the result is in (the "
                                     "benchmark stubs Runtime._want_spares for the call): "
                                     "the share of a prewarmed start spent competing with "
                                     "the fork of the next spare",
    "ipc_floor_after_idle_pause": "the direct IPC floor with a 5 ms pause before each round "
                                  "trip: this machine's cost of waking idle processes and "
                                  "CPUs, which every non-warm sample here also pays",
    "claimed_without_pool_refill": "claimed starts with the warming pool's refill deferred "
                                   "until the result is in (the benchmark sets "
                                   "Runtime.warm_pool_size to 0 for the call): the share of "
                                   "a claimed start spent competing with the template's "
                                   "fork of the next generic zygote",
}
SETTLE_POLL_S = 0.0005
SETTLE_LIMIT_S = 30.0
TRANSIENT_TASKS = ("Runtime._reclaim", "Runtime._keep_spares")

# Samples per figure. Claimed and cold starts cost a zygote (an import and a
# generic-zygote refill) each, so they get fewer samples to keep the run short.
FULL = {
    "warm": 2000, "prewarmed": 1000, "forked": 1000, "claimed": 200, "cold": 200,
    "spawn_trivial": 1000, "spawn_midsize": 200, "forkserver": 1000,
    "ipc_floor": 8000, "timeout": 20, "warmup": 20, "warmup_slow": 3,
    "spawn_no_site": 200, "diagnostic": 300, "diagnostic_slow": 100,
}
QUICK = {
    "warm": 100, "prewarmed": 30, "forked": 30, "claimed": 5, "cold": 5,
    "spawn_trivial": 20, "spawn_midsize": 10, "forkserver": 30,
    "ipc_floor": 800, "timeout": 2, "warmup": 5, "warmup_slow": 1,
    "spawn_no_site": 10, "diagnostic": 20, "diagnostic_slow": 3,
}

TARGETS_MS = {"warm_p50": 0.1, "prewarmed_p50": 0.1, "forked_p50": 1.5, "forked_p99": 4.0}
FORKED_VS_SPAWN_MIN = 10.0
TIMEOUT_LATE_MAX_MS = 100.0

def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


# --- baselines outside the runtime ----------------------------------------------------

SPAWN_CODE = """\
import json, sys
sys.path.insert(0, {directory!r})
from {module} import handler
sys.stdout.write(json.dumps(handler(json.loads(sys.stdin.buffer.read()), None)))
"""


def bench_spawn(kind: str, n: int, warmup: int, flags: tuple[str, ...] = ()) -> dict[str, Any]:
    """A fresh `python -c` per invocation: event on stdin, result on stdout."""
    directory, module = HANDLERS[kind]
    code = SPAWN_CODE.format(directory=str(directory), module=module)
    argv = [sys.executable, *flags, "-c", code]
    samples: list[int] = []
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        proc = subprocess.run(argv, input=EVENT_BYTES, capture_output=True, check=False)
        t1 = time.perf_counter_ns()
        if proc.returncode != 0 or json.loads(proc.stdout) != EXPECTED:
            raise BenchError(f"spawn baseline failed: {proc.returncode} {proc.stderr[-500:]!r}")
        if i >= warmup:
            samples.append(t1 - t0)
    return summary(samples) | {"warmup": warmup, "argv": [*argv[:-1], "<SPAWN_CODE>"]}


@contextlib.contextmanager
def _main_without_file() -> Iterator[None]:
    """Keep multiprocessing from re-running this script in every forkserver child.

    A child started through the forkserver re-imports the parent's __main__
    from its path (spawn.prepare) unless the forkserver already holds it, and
    CPython 3.11's forkserver never does: its '__main__' preload looks for a
    `main_path` key that get_preparation_data does not produce. Hiding
    __main__.__file__ gives the baseline its best case: children run only
    what the forkserver preloaded.
    """
    main = sys.modules["__main__"]
    saved = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if saved is not None:
            main.__file__ = saved


def bench_forkserver(kind: str, n: int, warmup: int) -> dict[str, Any]:
    """A multiprocessing Process per invocation from a forkserver; result over a Pipe."""
    directory, module = HANDLERS[kind]
    if str(BASELINES) not in sys.path:
        sys.path.insert(0, str(BASELINES))
    import forkserver_child  # bench/baselines/forkserver_child.py

    server: Any = multiprocessing.forkserver._forkserver
    server._stop()  # one forkserver per handler: it preloads once, at start
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["forkserver_child", module])
    # The 3.11 forkserver ignores the parent's sys.path: PYTHONPATH it is.
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(BASELINES), str(directory)])
    try:
        server.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    samples: list[int] = []
    try:
        with _main_without_file():
            for i in range(warmup + n):
                t0 = time.perf_counter_ns()
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=forkserver_child.run, args=(w, module, EVENT_BYTES))
                p.start()
                w.close()
                data = r.recv_bytes()
                t1 = time.perf_counter_ns()
                p.join()
                p.close()
                r.close()
                got = json.loads(data)
                if got["result"] != EXPECTED or not got["preloaded"]:
                    raise BenchError(f"forkserver baseline: unexpected {got!r}")
                if i >= warmup:
                    samples.append(t1 - t0)
    finally:
        server._stop()
    return summary(samples) | {"warmup": warmup, "preload": ["forkserver_child", module]}


class IpcFloor:
    """100-byte round trips between this trio process and one blocking echo child.

    direct=False: trio's socket API (`await sock.send`, `await sock.recv`),
    whose successful send still passes through the scheduler. direct=True:
    the non-blocking send goes out at once and trio only waits for the reply
    (`wait_readable`, then recv), as fastfaas's AsyncChannel does. Measured
    in blocks spread over the run, next to the warm blocks.
    """

    def __init__(self, direct: bool) -> None:
        self.direct = direct
        self.parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            [sys.executable, str(BASELINES / "echo_child.py"), str(child.fileno())],
            pass_fds=[child.fileno()],
        )
        child.close()
        self.parent.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(self.parent)
        self.samples: list[int] = []
        self.blocks_p50: list[float] = []

    async def block(self, n: int, warmup: int, pause: float = 0.0) -> None:
        block: list[int] = []
        for i in range(warmup + n):
            if pause:
                await trio.sleep(pause)
            t0 = time.perf_counter_ns()
            if self.direct:
                self.parent.send(IPC_MESSAGE)
                await trio.lowlevel.wait_readable(self.parent)
                data = self.parent.recv(4096)
            else:
                await self.sock.send(IPC_MESSAGE)
                data = await self.sock.recv(4096)
            t1 = time.perf_counter_ns()
            if data != IPC_MESSAGE:
                raise BenchError(f"echo child sent {data!r}")
            if i >= warmup:
                block.append(t1 - t0)
        self.samples += block
        self.blocks_p50.append(ms(nearest_rank(sorted(block), 50)))

    async def close(self) -> None:
        self.sock.close()
        await trio.to_thread.run_sync(self.proc.wait)

    def result(self) -> dict[str, Any]:
        return summary(self.samples) | {
            "blocks_p50_ms": self.blocks_p50,
            "message_bytes": len(IPC_MESSAGE),
            "socket": "AF_UNIX SOCK_SEQPACKET socketpair, child started once",
            "parent": "send, then wait_readable + recv" if self.direct
            else "trio.socket send/recv",
        }


# --- fastfaas ---------------------------------------------------------------------------


def _quiet(rt: Runtime) -> bool:
    """No background work in flight: what a start finds on an otherwise idle server."""
    nursery = rt._nursery
    assert nursery is not None
    if any(t.name.endswith(TRANSIENT_TASKS) for t in nursery.child_tasks):
        return False
    if len(rt._pool) < rt.warm_pool_size or rt._pool_forking:
        return False
    if rt._draining or any(z.dead for z in rt._all_zygotes):
        return False
    return not (rt.cgroups.enabled and len(rt._cg_free) < rt.cgroup_pool_size)


async def settle(rt: Runtime, name: str | None = None, spares: int = 0) -> None:
    with trio.fail_after(SETTLE_LIMIT_S):
        while True:
            ready = True
            if spares and name is not None:
                fv = rt._functions[name]
                ready = rt.table.idle(fv.slot, _native.KIND_SPARE) >= spares
            if ready and _quiet(rt):
                return
            await trio.sleep(SETTLE_POLL_S)


async def deploy(rt: Runtime, name: str, kind: str) -> None:
    directory, module = HANDLERS[kind]
    await rt.deploy(name, source=directory, handler=f"{module}.handler", memory_mb=MEMORY_MB)


class Series:
    """Samples of invoke -> result for one start kind; samples of another kind are discarded.

    `prepare` runs before each invocation (outside the timing) to bring the
    runtime to the state that gives this kind; `after` right after it.
    """

    def __init__(self, rt: Runtime, name: str, kind: str, n: int, warmup: int,
                 prepare: Callable[[], Awaitable[None]] | None = None,
                 after: Callable[[], None] | None = None) -> None:
        self.rt, self.name, self.kind, self.n, self.warmup = rt, name, kind, n, warmup
        self.prepare, self.after = prepare, after
        self.samples: list[int] = []
        self.handler_us: list[int] = []
        self.discarded: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        self.calls = 0
        self.block_ends: list[int] = []

    @property
    def done(self) -> bool:
        return len(self.samples) >= self.n

    async def step(self) -> None:
        if self.prepare is not None:
            await self.prepare()
        before = collections.Counter(self.rt.counters)
        t0 = time.perf_counter_ns()
        result = await self.rt.invoke(self.name, EVENT)
        t1 = time.perf_counter_ns()
        if self.after is not None:
            self.after()
        self.counters += collections.Counter(self.rt.counters) - before
        if result.error is not None:
            raise BenchError(f"{self.name}: {result.error}")
        if result.value() != EXPECTED:
            raise BenchError(f"{self.name}: unexpected result {result.payload!r}")
        self.calls += 1
        if self.calls <= self.warmup:
            return
        if result.start != self.kind:
            self.discarded[result.start] += 1
            if sum(self.discarded.values()) > max(10, self.n // 2):
                raise BenchError(f"{self.name}: wanted {self.kind} starts, "
                                 f"got {dict(self.discarded)}")
            return
        self.samples.append(t1 - t0)
        self.handler_us.append(result.duration_us)

    async def block(self, n: int) -> None:
        """n more samples, after `warmup` unmeasured calls again."""
        self.n = len(self.samples) + n
        self.calls = 0
        await measure(self)
        self.block_ends.append(len(self.samples))

    def result(self) -> dict[str, Any]:
        blocks = {}
        if len(self.block_ends) > 1:
            bounds = zip([0, *self.block_ends], self.block_ends, strict=False)
            blocks["blocks_p50_ms"] = [ms(nearest_rank(sorted(self.samples[a:b]), 50))
                                       for a, b in bounds]
        return summary(self.samples) | blocks | {
            "warmup": self.warmup,
            "discarded": sum(self.discarded.values()),
            "discarded_by_start": dict(self.discarded),
            "handler_duration_p50_us": nearest_rank(sorted(self.handler_us), 50),
            "runtime_counters": dict(self.counters),
        }


async def measure(*series: Series) -> list[dict[str, Any]]:
    """Run the series round-robin, one invocation each in turn, until each has its n.

    Interleaving keeps figures that are compared with each other under the
    same machine conditions (this machine's speed drifts over minutes).
    """
    while not all(s.done for s in series):
        for s in series:
            if not s.done:
                await s.step()
    return [s.result() for s in series]


async def prewarmed_back_to_back(rt: Runtime, kind: str, n: int, warmup: int) -> dict[str, Any]:
    """Prewarmed starts measured as warm ones are: back to back, no quiet spell between.

    A second function keeps n + warmup spares (`prewarm`), forked before the
    series starts; the replacement of taken spares is stubbed out, and after
    each call the instance that served it is set aside (DRAINING in the table,
    left alive, so nothing runs in the background) so that the next call finds
    no warm instance and takes a spare.
    """
    name = f"bench-{kind}-spares"
    directory, module = HANDLERS[kind]
    await rt.deploy(name, source=directory, handler=f"{module}.handler",
                    memory_mb=MEMORY_MB, prewarm=n + warmup + 1)
    first = await rt.invoke(name, EVENT)  # claims the zygote, which forks the spares
    if first.error is not None:
        raise BenchError(f"{name}: {first.error}")
    fv = rt._functions[name]
    with trio.fail_after(SETTLE_LIMIT_S * 4):
        while rt.table.idle(fv.slot, _native.KIND_SPARE) < n + warmup or fv.spare_task:
            await trio.sleep(SETTLE_POLL_S)
    await settle(rt)
    set_aside: list[int] = []

    async def take_away_warm() -> None:
        while (tid := rt.table.pop_expired(fv.slot, _native.KIND_WARM, math.inf)) is not None:
            set_aside.append(tid)

    rt._want_spares = lambda fv: None  # type: ignore[method-assign]
    try:
        series = Series(rt, name, "prewarmed", n, warmup, take_away_warm)
        while not series.done:
            await series.step()
    finally:
        del rt._want_spares
    await take_away_warm()
    for tid in set_aside:
        rt._retire(fv.instances[tid])
    await rt.delete(name)
    await settle(rt)
    return series.result()


def _retire_warm(rt: Runtime, name: str) -> None:
    fv = rt._functions[name]
    while (tid := rt.table.pop_expired(fv.slot, _native.KIND_WARM, math.inf)) is not None:
        rt._retire(fv.instances[tid])


def _zygote_rss_kb(rt: Runtime, name: str) -> int | None:
    z = rt.describe(name)["state"]["zygote"]
    if z is None:
        return None
    try:
        for line in Path(f"/proc/{z['pid']}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


async def bench_handler(rt: Runtime, cold_rt: Runtime, kind: str, counts: dict[str, int],
                        floors: list[IpcFloor]) -> dict[str, Any]:
    """Every start kind for one handler: cold in cold_rt, the others in rt.

    Warm starts (and the IPC floors) are measured in WARM_BLOCKS blocks, one
    between each of the other phases, so that a noisy spell of this machine
    does not decide the figure; each block's p50 is reported.
    """
    name = f"bench-{kind}"
    out: dict[str, Any] = {}
    diag: dict[str, Any] = {}
    warmup, warmup_slow = counts["warmup"], counts["warmup_slow"]
    await deploy(rt, name, kind)
    await settle(rt)
    first = await rt.invoke(name, EVENT)
    if first.error is not None:
        raise BenchError(f"{name}: {first.error}")

    # warm: back to back, nothing in between, in blocks.
    warm = Series(rt, name, "warm", 0, warmup)
    per_block = counts["warm"] // WARM_BLOCKS
    ipc_per_block = counts["ipc_floor"] // (WARM_BLOCKS * len(HANDLERS))

    async def warm_block() -> None:
        await settle(rt)
        for floor in floors:
            await floor.block(ipc_per_block, IPC_WARMUP)
        await warm.block(per_block)

    await warm_block()

    # prewarmed, interleaved with its two diagnostics.
    async def to_prewarmed() -> None:
        _retire_warm(rt, name)
        await settle(rt, name, spares=1)

    async def to_prewarmed_alone() -> None:
        await to_prewarmed()
        rt._want_spares = lambda fv: None  # type: ignore[method-assign]

    def replace_spare_now() -> None:
        del rt._want_spares
        rt._want_spares(rt._functions[name])

    async def idle_pause() -> None:
        await settle(rt)
        await trio.sleep(IDLE_PAUSE_S)

    (out["prewarmed"], diag["prewarmed_without_replacement"],
     diag["warm_after_idle_pause"]) = await measure(
        Series(rt, name, "prewarmed", counts["prewarmed"], warmup, to_prewarmed),
        Series(rt, name, "prewarmed", counts["diagnostic"], warmup, to_prewarmed_alone,
               replace_spare_now),
        Series(rt, name, "warm", counts["diagnostic"], warmup, idle_pause),
    )
    log(f"{kind} prewarmed: {_brief(out['prewarmed'])}")
    log(f"{kind} prewarmed, no replacement: {_brief(diag['prewarmed_without_replacement'])}")
    log(f"{kind} warm after a pause: {_brief(diag['warm_after_idle_pause'])}")
    diag["prewarmed_back_to_back"] = await prewarmed_back_to_back(
        rt, kind, counts["prewarmed"], warmup)
    log(f"{kind} prewarmed, back to back: {_brief(diag['prewarmed_back_to_back'])}")
    zygote_rss = _zygote_rss_kb(rt, name)
    await warm_block()

    # forked. Spares are off for the series: the adaptive spare target grows with
    # every instance that had to be forked (one more per new instance needed in
    # the last 5 s), so with them on each sample would follow the fork and the
    # kill of ~15 spares, whose teardown (reaping, cgroup offlining, freed
    # memory) is still running in the kernel when the next fork starts: ~1 ms
    # more per sample here, a cost of this benchmark's method, not of a start.
    async def to_forked() -> None:
        await settle(rt)  # a spare being forked now would be idle after the drain
        rt._drain_idle(rt._functions[name])
        await settle(rt)

    spares, rt.spares = rt.spares, 0
    try:
        [out["forked"]] = await measure(
            Series(rt, name, "forked", counts["forked"], warmup, to_forked))
    finally:
        rt.spares = spares
        # Forget the series' forks: the adaptive target would fork ~15 spares at
        # the next start, whose teardown would overlap the claimed samples.
        rt._functions[name].sizer = policy.SpareSizer()
    log(f"{kind} forked: {_brief(out['forked'])}")
    await warm_block()

    # claimed and cold, interleaved, with the claimed diagnostic.
    cold_name = f"bench-cold-{kind}"
    pool_target = rt.warm_pool_size

    async def to_claimed() -> None:
        await deploy(rt, name, kind)
        await settle(rt)

    async def to_claimed_alone() -> None:
        await to_claimed()
        rt.warm_pool_size = 0  # the refill of the warming pool waits for the result

    def refill_now() -> None:
        rt.warm_pool_size = pool_target

    async def to_cold() -> None:
        await deploy(cold_rt, cold_name, kind)
        await settle(cold_rt)

    out["claimed"], out["cold"], diag["claimed_without_pool_refill"] = await measure(
        Series(rt, name, "claimed", counts["claimed"], warmup_slow, to_claimed),
        Series(cold_rt, cold_name, "cold", counts["cold"], warmup_slow, to_cold),
        Series(rt, name, "claimed", counts["diagnostic_slow"], warmup_slow, to_claimed_alone,
               refill_now),
    )
    log(f"{kind} claimed: {_brief(out['claimed'])}")
    log(f"{kind} cold: {_brief(out['cold'])}")
    log(f"{kind} claimed, no pool refill: {_brief(diag['claimed_without_pool_refill'])}")
    await warm_block()
    out["warm"] = warm.result()
    log(f"{kind} warm: {_brief(out['warm'])} blocks p50 {out['warm']['blocks_p50_ms']}")
    await rt.delete(name)
    await cold_rt.delete(cold_name)
    return out | {"zygote_rss_kb": zygote_rss, "diagnostics": diag}


async def bench_timeout(rt: Runtime, runs: int) -> dict[str, Any]:
    """(time the Timeout result arrives) - (invoke start + timeout_s), per run."""
    directory, module = SLEEPER
    name = "bench-timeout"
    await rt.deploy(name, source=directory, handler=f"{module}.handler",
                    memory_mb=MEMORY_MB, timeout_s=TIMEOUT_S)
    await rt.invoke(name, EVENT)  # the claim, outside the figures
    late: list[int] = []
    starts: collections.Counter[str] = collections.Counter()
    for _ in range(runs):
        await settle(rt, name, spares=1)
        t0 = time.perf_counter_ns()
        result = await rt.invoke(name, EVENT)
        t1 = time.perf_counter_ns()
        if result.error is None or result.error.kind != errors.TIMEOUT:
            raise BenchError(f"{name}: expected a Timeout, got {result.error!r}")
        late.append(t1 - (t0 + TIMEOUT_S * 1_000_000_000))
        starts[result.start] += 1
    await rt.delete(name)
    return summary(late) | {"timeout_s": TIMEOUT_S, "starts": dict(starts)}


def _brief(s: dict[str, Any]) -> str:
    return f"n={s['n']} p50={s['p50_ms']} ms p99={s['p99_ms']} ms"


async def bench_fastfaas(counts: dict[str, int], data_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"starts": {}, "runtimes": {}}
    floors = [IpcFloor(direct=False), IpcFloor(direct=True)]

    main_cfg = {"warm_pool_size": 2, "spares": 1, "cgroups": "auto"}
    cold_cfg = {"warm_pool_size": 0, "warm_pool_max": 0, "spares": 1, "cgroups": "auto"}
    out["runtimes"] = {"warm/prewarmed/forked/claimed/timeout": main_cfg, "cold": cold_cfg,
                       "forked_series": "spares=0 while it runs (see bench/README.md)"}
    async with (
        Runtime(data_dir=data_dir / "main", **main_cfg) as rt,  # type: ignore[arg-type]
        Runtime(data_dir=data_dir / "cold", **cold_cfg) as cold_rt,  # type: ignore[arg-type]
    ):
        out["cgroups"] = rt.statistics()["cgroups"]
        for kind in HANDLERS:
            out["starts"][kind] = await bench_handler(rt, cold_rt, kind, counts, floors)
        out["timeout"] = await bench_timeout(rt, counts["timeout"])
        log(f"timeout lateness: {_brief(out['timeout'])}")
        out["counters"] = {"main": dict(rt.counters), "cold": dict(cold_rt.counters)}
    paused = IpcFloor(direct=True)
    await paused.block(counts["diagnostic"], IPC_WARMUP // 10, pause=IDLE_PAUSE_S)
    await paused.close()
    out["ipc_floor_after_idle_pause"] = paused.result() | {"pause_s": IDLE_PAUSE_S}
    log(f"ipc floor after a pause: {_brief(out['ipc_floor_after_idle_pause'])}")

    for key, floor in zip(("ipc_floor", "ipc_floor_direct"), floors, strict=True):
        await floor.close()
        out[key] = floor.result()
        log(f"{key}: {_brief(out[key])} blocks p50 {out[key]['blocks_p50_ms']}")
    return out


# --- the report ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {**_common.machine_info(),
            "env": {k: os.environ[k] for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")
                    if k in os.environ}}


def targets(starts: dict[str, Any], baselines: dict[str, Any],
            timeout: dict[str, Any]) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []

    def check(name: str, handler: str | None, value: float, limit: float, ok: bool) -> None:
        checks.append({"target": name, "handler": handler, "value": value, "limit": limit,
                       "pass": ok})

    for kind, s in starts.items():
        for key, limit in TARGETS_MS.items():
            start, stat = key.split("_")
            value = s[start][f"{stat}_ms"]
            check(f"{start} {stat} <= {limit} ms", kind, value, limit, value <= limit)
        speedup = baselines["spawn_per_invocation"][kind]["p50_ms"] / s["forked"]["p50_ms"]
        check(f"forked >= {FORKED_VS_SPAWN_MIN:g}x faster than spawn per invocation (p50)",
              kind, round(speedup, 2), FORKED_VS_SPAWN_MIN, speedup >= FORKED_VS_SPAWN_MIN)
    check(f"timeout reported within {TIMEOUT_LATE_MAX_MS:g} ms of the deadline (max of runs)",
          None, timeout["max_ms"], TIMEOUT_LATE_MAX_MS, timeout["max_ms"] <= TIMEOUT_LATE_MAX_MS)
    headline = {
        "warm_p50_le_0.1ms": starts["trivial"]["warm"]["p50_ms"] <= 0.1,
        "prewarmed_p50_le_0.1ms": starts["trivial"]["prewarmed"]["p50_ms"] <= 0.1,
        "forked_p50_le_1.5ms": starts["trivial"]["forked"]["p50_ms"] <= 1.5,
        "forked_p99_le_4ms": starts["trivial"]["forked"]["p99_ms"] <= 4.0,
        "forked_10x_faster_than_spawn": next(c for c in checks if c["handler"] == "trivial"
                                         and c["target"].startswith("forked >="))["pass"],
        "timeout_within_100ms": timeout["max_ms"] <= TIMEOUT_LATE_MAX_MS,
    }
    return {
        "trivial_handler": headline,
        "all_pass_trivial": all(headline.values()),
        "all_pass_both_handlers": all(c["pass"] for c in checks),
        "checks": checks,
    }


def ratios(starts: dict[str, Any], baselines: dict[str, Any],
           diagnostics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    paused_floor = diagnostics["ipc_floor_after_idle_pause"]["p50_ms"]
    floor = baselines["ipc_floor"]["p50_ms"]
    floor_direct = baselines["ipc_floor_direct"]["p50_ms"]
    for kind, s in starts.items():
        spawn = baselines["spawn_per_invocation"][kind]["p50_ms"]
        fs = baselines["forkserver"][kind]["p50_ms"]
        out[kind] = {
            "spawn_per_invocation_p50/forked_p50": ratio(spawn, s["forked"]["p50_ms"]),
            "spawn_per_invocation_no_site_p50/forked_p50": ratio(
                baselines["spawn_per_invocation_no_site"][kind]["p50_ms"], s["forked"]["p50_ms"]),
            "forkserver_p50/forked_p50": ratio(fs, s["forked"]["p50_ms"]),
            "warm_p50/ipc_floor_p50": ratio(s["warm"]["p50_ms"], floor),
            "warm_p50/ipc_floor_direct_p50": ratio(s["warm"]["p50_ms"], floor_direct),
            "prewarmed_p50/ipc_floor_p50": ratio(s["prewarmed"]["p50_ms"], floor),
            "prewarmed_p50/ipc_floor_after_idle_pause_p50": ratio(
                s["prewarmed"]["p50_ms"], paused_floor),
            "spawn_per_invocation_p50/warm_p50": ratio(spawn, s["warm"]["p50_ms"]),
            "spawn_per_invocation_p50/claimed_p50": ratio(spawn, s["claimed"]["p50_ms"]),
            "forkserver_p50/prewarmed_p50": ratio(fs, s["prewarmed"]["p50_ms"]),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    args = _common.quick_out_args(__doc__, argv)
    counts = QUICK if args.quick else FULL
    began = datetime.datetime.now(datetime.UTC)
    machine = machine_info()

    baselines: dict[str, Any] = {"spawn_per_invocation": {}, "spawn_per_invocation_no_site": {},
                                 "forkserver": {}}
    for kind in HANDLERS:
        n = counts["spawn_trivial"] if kind == "trivial" else counts["spawn_midsize"]
        baselines["spawn_per_invocation"][kind] = bench_spawn(kind, n, counts["warmup_slow"])
        log(f"{kind} spawn per invocation: {_brief(baselines['spawn_per_invocation'][kind])}")
    for kind in HANDLERS:
        baselines["spawn_per_invocation_no_site"][kind] = bench_spawn(
            kind, counts["spawn_no_site"], counts["warmup_slow"], ("-S",))
        log(f"{kind} spawn per invocation, -S: "
            f"{_brief(baselines['spawn_per_invocation_no_site'][kind])}")
    for kind in HANDLERS:
        baselines["forkserver"][kind] = bench_forkserver(kind, counts["forkserver"],
                                                         counts["warmup"])
        log(f"{kind} forkserver: {_brief(baselines['forkserver'][kind])}")

    with tempfile.TemporaryDirectory(prefix="fastfaas-bench-") as tmp:
        ff = trio.run(bench_fastfaas, counts, Path(tmp))
    for key in ("ipc_floor", "ipc_floor_direct"):
        baselines[key] = ff[key]
    machine["cgroups"] = ff["cgroups"]
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    starts = ff["starts"]
    zygote_rss = {kind: s.pop("zygote_rss_kb") for kind, s in starts.items()}
    diagnostics = {kind: s.pop("diagnostics") for kind, s in starts.items()}
    diagnostics["ipc_floor_after_idle_pause"] = ff["ipc_floor_after_idle_pause"]
    starts = {kind: {k: s[k] for k in START_KINDS} for kind, s in starts.items()}

    report = {
        "benchmark": "bench/starts.py",
        "date_utc": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "elapsed_s": None,
        "machine": machine,
        "config": {
            "memory_mb": MEMORY_MB,
            "memory_mb_why": "1769 MB = one full vCPU under the CPU-quota rule, so the "
                             "instance cgroup's CPU quota does not throttle the benchmark",
            "handlers": {
                "trivial": {"handler": "trivial_fn.handler", "imports": [],
                            "code": "bench/functions/trivial/trivial_fn.py"},
                "midsize": {"handler": "midsize_fn.handler", "imports": MIDSIZE_IMPORTS,
                            "code": "bench/functions/midsize/midsize_fn.py",
                            "note": "imported at module level, so in the function zygote"},
            },
            "zygote_rss_kb": zygote_rss,
            "event": EVENT,
            "result": "{'echo': event}",
            "latency": "time.perf_counter_ns() around `await Runtime.invoke(name, event)`, "
                       "in the process that owns the Runtime",
            "percentiles": "nearest rank over the sorted samples",
            "samples": counts,
            "runtimes": ff["runtimes"],
            "claimed_and_cold_samples_note": "fewer samples than the other kinds: each "
                                             "costs a zygote import and a pool refill",
        },
        "starts": starts,
        "timeout": ff["timeout"],
        "baselines": baselines,
        "diagnostics": diagnostics | {"about": DIAGNOSTICS_ABOUT},
        "ratios": ratios(starts, baselines, diagnostics),
        "targets": targets(starts, baselines, ff["timeout"]),
        "runtime_counters": ff["counters"],
    }
    report["elapsed_s"] = _common.elapsed_s()
    return _common.emit(report, args.out, indent=2)


if __name__ == "__main__":
    sys.exit(main())
