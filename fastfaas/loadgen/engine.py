"""The load engine: closed and open loops over keep-alive connections, in one or
several worker processes, recording latencies into histograms per start kind.

Closed loop: C connections, each sending as soon as its previous answer
arrived; latency runs from the send. Open loop: Poisson arrivals at a target
rate; latency runs from the *intended* send time, so a slow server cannot
hide its queue by slowing the generator down (no coordinated omission).
"""

from __future__ import annotations

import collections
import io
import random
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from fastfaas.loadgen.client import Connection, ConnectionClosed, Response, build_request
from fastfaas.loadgen.dist import Zipf, poisson_arrivals, ramp_arrivals
from fastfaas.loadgen.hist import Histogram


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where requests go. `kind`: "fastfaas" (POST /v1/functions/NAME/invoke) or
    "plain" (POST /invoke: the baselines)."""

    host: str = "127.0.0.1"
    port: int
    kind: str = "fastfaas"
    token: str | None = None

    def path(self, function: str) -> str:
        return f"/v1/functions/{function}/invoke" if self.kind == "fastfaas" else "/invoke"


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One load run.

    functions: names ranked by popularity; each request picks one with a Zipf
        law of exponent `zipf_s` (0: uniform).
    mode: "closed" (`connections` loops) or "open" (Poisson at `rate`/s, at
        most `connections` connections open; with `rate_end`, the rate goes
        linearly from `rate` to `rate_end` over warm-up and measurement).
    warmup_s: sent but not recorded, before `duration_s` of measurement.
    workers: processes sharing the load (connections and rate are split).
    """

    target: Target
    functions: list[str]
    payload: bytes = b"{}"
    zipf_s: float = 1.0
    mode: str = "closed"
    connections: int = 32
    rate: float = 0.0
    rate_end: float | None = None
    duration_s: float = 10.0
    warmup_s: float = 0.0
    seed: int = 1
    workers: int = 1
    request_timeout_s: float = 60.0

    def check(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode {self.mode!r} must be 'closed' or 'open'")
        if not self.functions:
            raise ValueError("the plan needs at least one function")
        if self.connections < 1 or self.workers < 1:
            raise ValueError("connections and workers must be >= 1")
        if self.mode == "open" and self.rate <= 0 and not self.rate_end:
            raise ValueError("an open loop needs rate > 0")
        if self.rate_end is not None and self.rate_end < 0:
            raise ValueError("rate_end must be >= 0")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("duration_s must be > 0 and warmup_s >= 0")
        if self.connections < self.workers:
            raise ValueError(f"{self.workers} workers need at least as many connections")


class Stats:
    """What a run recorded: latency per start kind (client side, us), the server's
    handler and whole times, errors by kind, and a per-second timeline."""

    def __init__(self) -> None:
        self.latency: dict[str, Histogram] = {}
        self.duration = Histogram()  # X-Fastfaas-Duration-Us: the handler's time
        self.server = Histogram()  # X-Fastfaas-Server-Us: the server's whole time
        self.errors: collections.Counter[str] = collections.Counter()
        self.ok = 0
        self.sent = 0
        self.elapsed_s = 0.0
        self.timeline_count: list[int] = []
        self.timeline_latency: list[Histogram] = []

    def record(self, response: Response, latency_us: int, second: int) -> None:
        kind = response.start or "-"
        hist = self.latency.get(kind)
        if hist is None:
            hist = self.latency[kind] = Histogram()
        hist.record(latency_us)
        if response.duration_us >= 0:
            self.duration.record(response.duration_us)
        if response.server_us >= 0:
            self.server.record(response.server_us)
        if response.status >= 400:
            self.errors[f"http_{response.status}"] += 1
        elif response.function_error:
            self.errors[f"function_{response.function_error}"] += 1
        else:
            self.ok += 1
        self._tick(second, latency_us)

    def record_error(self, kind: str, latency_us: int, second: int) -> None:
        self.errors[kind] += 1
        self._tick(second, latency_us)

    def _tick(self, second: int, latency_us: int) -> None:
        while len(self.timeline_count) <= second:
            self.timeline_count.append(0)
            self.timeline_latency.append(Histogram(digits=2))
        self.timeline_count[second] += 1
        self.timeline_latency[second].record(latency_us)

    @property
    def completed(self) -> int:
        return sum(h.total for h in self.latency.values()) + self.transport_errors

    @property
    def transport_errors(self) -> int:
        return sum(n for k, n in self.errors.items() if not k.startswith(("http_", "function_")))

    def all_latency(self) -> Histogram:
        total = Histogram()
        for hist in self.latency.values():
            total.merge(hist)
        return total

    def merge(self, other: Stats) -> None:
        for kind, hist in other.latency.items():
            self.latency.setdefault(kind, Histogram()).merge(hist)
        self.duration.merge(other.duration)
        self.server.merge(other.server)
        self.errors.update(other.errors)
        self.ok += other.ok
        self.sent += other.sent
        self.elapsed_s = max(self.elapsed_s, other.elapsed_s)
        for second, count in enumerate(other.timeline_count):
            while len(self.timeline_count) <= second:
                self.timeline_count.append(0)
                self.timeline_latency.append(Histogram(digits=2))
            self.timeline_count[second] += count
            self.timeline_latency[second].merge(other.timeline_latency[second])

    def to_dict(self) -> dict[str, Any]:
        return {
            "latency": {k: h.to_dict() for k, h in self.latency.items()},
            "duration": self.duration.to_dict(),
            "server": self.server.to_dict(),
            "errors": dict(self.errors),
            "ok": self.ok,
            "sent": self.sent,
            "elapsed_s": self.elapsed_s,
            "timeline_count": self.timeline_count,
            "timeline_latency": [h.to_dict() for h in self.timeline_latency],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stats:
        s = cls()
        s.latency = {k: Histogram.from_dict(h) for k, h in d["latency"].items()}
        s.duration = Histogram.from_dict(d["duration"])
        s.server = Histogram.from_dict(d["server"])
        s.errors = collections.Counter(d["errors"])
        s.ok, s.sent, s.elapsed_s = d["ok"], d["sent"], d["elapsed_s"]
        s.timeline_count = list(d["timeline_count"])
        s.timeline_latency = [Histogram.from_dict(h) for h in d["timeline_latency"]]
        return s


class _Worker:
    """One process's share of a plan, in trio."""

    def __init__(self, plan: Plan, index: int, progress: Callable[[int], None] | None) -> None:
        self.plan = plan
        self.index = index
        self.progress = progress
        self.stats = Stats()
        self.rng = random.Random(plan.seed * 1_000_003 + index)
        target = plan.target
        headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
        self.requests = [build_request(target.host, target.port, "POST", target.path(f),
                                       plan.payload, headers) for f in plan.functions]
        self.zipf = Zipf(len(plan.functions), plan.zipf_s, random.Random(self.rng.random()))
        share = plan.connections // plan.workers
        self.connections = share + (1 if index < plan.connections % plan.workers else 0)
        self.rate = plan.rate / plan.workers
        self.rate_end = None if plan.rate_end is None else plan.rate_end / plan.workers
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._open = 0
        self._done = 0

    async def run(self) -> Stats:
        plan = self.plan
        now = trio.current_time()
        self.t_measure = now + plan.warmup_s
        self.t_end = self.t_measure + plan.duration_s
        with trio.move_on_at(self.t_end + plan.request_timeout_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog)
                if plan.mode == "closed":
                    async with trio.open_nursery() as loops:
                        for _ in range(self.connections):
                            loops.start_soon(self._closed_loop)
                else:
                    await self._open_loop()
                nursery.cancel_scope.cancel()
        for conn in self._idle:
            conn.close()
        self.stats.elapsed_s = plan.duration_s
        return self.stats

    async def _watchdog(self) -> None:
        timeout = self.plan.request_timeout_s
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            now = trio.current_time()
            for conn in list(self._busy):
                if now - conn.busy_since > timeout:
                    conn.timed_out = True
                    conn.close()

    async def _closed_loop(self) -> None:
        conn: Connection | None = None
        clock = trio.lowlevel.current_clock().current_time  # one call, not three
        try:
            while clock() < self.t_end:
                if conn is None or conn.closed:
                    conn = await self._connect()
                    if conn is None:
                        continue
                data = self.requests[self.zipf.sample()]
                t0 = time.perf_counter_ns()
                sent_at = clock()
                if sent_at >= self.t_end:
                    break
                conn = await self._exchange(conn, data, sent_at, t0)
        finally:
            if conn is not None:
                conn.close()

    async def _open_loop(self) -> None:
        limiter = trio.Semaphore(self.connections)
        now = trio.current_time()
        if self.rate_end is None:
            arrivals = poisson_arrivals(self.rate, self.rng, start=now)
        else:
            arrivals = ramp_arrivals(self.rate, self.rate_end, self.t_end - now, self.rng,
                                     start=now)
        async with trio.open_nursery() as nursery:
            for intended in arrivals:
                if intended >= self.t_end:
                    break
                await trio.sleep_until(intended)
                nursery.start_soon(self._open_one, limiter, intended)

    async def _open_one(self, limiter: trio.Semaphore, intended: float) -> None:
        data = self.requests[self.zipf.sample()]
        # Latency from the intended send: waiting for a free connection counts.
        t0 = time.perf_counter_ns() - int((trio.current_time() - intended) * 1e9)
        async with limiter:
            conn = self._idle.pop() if self._idle else await self._connect()
            if conn is None:
                return
            conn = await self._exchange(conn, data, intended, t0)
            if conn is not None and not conn.closed:
                self._idle.append(conn)

    async def _connect(self) -> Connection | None:
        target = self.plan.target
        try:
            return await Connection.open(target.host, target.port)
        except OSError:
            self._count_error("connect", trio.current_time())
            await trio.sleep(0.01)  # a refused connect returns at once: do not spin
            return None

    async def _exchange(self, conn: Connection, data: bytes, sent_at: float,
                        t0: int) -> Connection | None:
        if sent_at >= self.t_measure:
            self.stats.sent += 1
        # No cancel scope per request (it cost a third of the generator's time):
        # the watchdog closes a connection whose answer is overdue.
        conn.busy_since = sent_at
        self._busy.add(conn)
        try:
            response = await conn.request(data)
        except (ConnectionClosed, OSError, trio.ClosedResourceError):
            conn.close()
            self._count_error("timeout" if conn.timed_out else "connection_closed", sent_at, t0)
            return None
        finally:
            self._busy.discard(conn)
        latency_us = (time.perf_counter_ns() - t0) // 1000
        if sent_at >= self.t_measure:
            second = min(int(sent_at - self.t_measure), int(self.plan.duration_s + 0.999) - 1)
            self.stats.record(response, latency_us, second)
        self._tick()
        return conn

    def _count_error(self, kind: str, sent_at: float, t0: int = 0) -> None:
        if sent_at >= self.t_measure:
            second = max(0, int(trio.current_time() - self.t_measure))
            latency = (time.perf_counter_ns() - t0) // 1000 if t0 else 0
            self.stats.record_error(kind, latency, second)
        self._tick()

    def _tick(self) -> None:
        self._done += 1
        if self.progress is not None:
            self.progress(self._done)


def run_in_process(plan: Plan, progress: Callable[[int], None] | None = None) -> Stats:
    """The whole plan in this process, one trio loop (workers is ignored)."""
    plan.check()
    single = msgspec.structs.replace(plan, workers=1)
    return trio.run(_Worker(single, 0, progress).run)


def run(plan: Plan, progress: Callable[[int, float], None] | None = None) -> Stats:
    """Run the plan in `plan.workers` processes and merge what they recorded.

    Each worker is `python -m fastfaas.loadgen.engine INDEX` with the plan on
    its stdin (a fresh interpreter: nothing of the caller's `__main__` is
    re-run); it reports progress lines and, at the end, its statistics on
    stdout. `progress(requests_done, seconds_elapsed)` is called about four
    times a second from this process.
    """
    plan.check()
    if plan.workers == 1 and progress is None:
        return run_in_process(plan)
    encoded = msgspec.msgpack.encode(plan)
    procs = [subprocess.Popen([sys.executable, "-m", "fastfaas.loadgen.engine", str(index)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
             for index in range(plan.workers)]
    t0 = time.monotonic()
    done = [0] * plan.workers
    total = Stats()
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(encoded)
            proc.stdin.close()
        with selectors.DefaultSelector() as sel:
            for index, proc in enumerate(procs):
                assert proc.stdout is not None
                sel.register(proc.stdout, selectors.EVENT_READ, index)
            while sel.get_map():
                for key, _ in sel.select(timeout=0.25):
                    index = key.data
                    stream = key.fileobj
                    assert isinstance(stream, io.BufferedReader)
                    line = stream.readline()
                    if line.startswith(b"P "):
                        done[index] = int(line[2:])
                    elif line.startswith(b"R "):
                        payload = stream.read(int(line[2:]))
                        total.merge(Stats.from_dict(msgspec.msgpack.decode(payload)))
                        sel.unregister(stream)
                    else:  # EOF before the result: the worker failed
                        raise RuntimeError(
                            f"load worker {index} exited ({procs[index].wait()}) before"
                            " reporting; see its error above")
                if progress is not None:
                    progress(sum(done), time.monotonic() - t0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return total


async def _report_progress(worker: _Worker, out: Any) -> None:
    while True:
        await trio.sleep(0.25)
        out.write(b"P %d\n" % worker._done)
        out.flush()


async def _worker_main(plan: Plan, index: int) -> Stats:
    worker = _Worker(plan, index, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_progress, worker, sys.stdout.buffer)
        stats = await worker.run()
        nursery.cancel_scope.cancel()
    return stats


if __name__ == "__main__":
    _plan = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=Plan)
    _stats = trio.run(_worker_main, _plan, int(sys.argv[1]))
    _payload = msgspec.msgpack.encode(_stats.to_dict())
    sys.stdout.buffer.write(b"R %d\n" % len(_payload) + _payload)
    sys.stdout.buffer.flush()
