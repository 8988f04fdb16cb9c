"""The load engine: closed and open loops over keep-alive connections, in one or
several worker processes, recording latencies into histograms per start kind.

Closed loop: C connections, each sending as soon as its previous answer
arrived; latency runs from the send. Open loop: Poisson arrivals at a target
rate, sent by C long-lived senders (one per connection) that take the next
arrival from a shared `Schedule`; latency runs from the *intended* send time,
so a slow server cannot hide its queue by slowing the generator down (no
coordinated omission). How late the generator itself sends is recorded apart
(`Stats.send_lag`).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import msgspec
import trio

from fastfaas import _native
from fastfaas.loadgen.client import Connection, ConnectionClosed, build_request
from fastfaas.loadgen.dist import Zipf, poisson_arrivals, ramp_arrivals
from fastfaas.loadgen.schedule import Schedule
from fastfaas.loadgen.stats import Stats

__all__ = ["Plan", "Stats", "Target", "Worker", "planned_arrivals", "run", "run_in_process"]

# trio's sleep_until wakes up to 1 ms late (epoll's timeout is in whole
# milliseconds, rounded up); a timerfd wakes within tens of microseconds. The
# sender waits on one until this long before an arrival, then yields until it.
SPIN_S: Final = 0.0003
# An open loop lets this many arrivals per connection wait for a free one;
# later arrivals are counted as "overload" errors instead of queued.
BACKLOG_PER_CONNECTION: Final = 10
CONNECT_RETRY_S: Final = 0.01  # a refused connect returns at once: do not spin


class PreciseTimer:
    """Sleeps until a time on trio's clock, waking within tens of microseconds.

    trio's own sleep wakes up to a millisecond late, and the open loop used to
    spin through the last 1.5 ms before each arrival instead: at 1,000
    arrivals/s that was a whole CPU, taken from the server it measured on a
    2-CPU machine. This waits on a timerfd. Under a clock that is not trio's
    system clock (a test's MockClock) it is trio.sleep_until.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._offset = 0.0

    def __enter__(self) -> PreciseTimer:
        clock = trio.lowlevel.current_clock()
        if type(clock).__name__ == "SystemClock":
            self._fd = _native.monotonic_timer()
            self._offset = clock.current_time() - time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    async def sleep_until(self, t: float) -> None:
        if self._fd < 0 or not math.isfinite(t):
            await trio.sleep_until(t)
            return
        when = t - self._offset
        if when <= time.monotonic():  # already due (and never 0, which disarms)
            await trio.lowlevel.checkpoint()
            return
        _native.arm_timer_at(self._fd, when)  # re-arming clears a tick unread
        await trio.lowlevel.wait_readable(self._fd)
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 8)


class Target(msgspec.Struct, frozen=True, kw_only=True):
    """Where requests go. `kind`: "fastfaas" (POST /v1/functions/NAME/invoke) or
    "plain" (POST /invoke: the baselines)."""

    host: str = "127.0.0.1"
    port: int
    kind: str = "fastfaas"
    token: str | None = None

    def path(self, function: str) -> str:
        return f"/v1/functions/{function}/invoke" if self.kind == "fastfaas" else "/invoke"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    """One load run.

    functions: names ranked by popularity; each request picks one with a Zipf
        law of exponent `zipf_s` (0: uniform).
    mode: "closed" (`connections` loops) or "open" (Poisson at `rate`/s, at
        most `connections` connections open; with `rate_end`, the rate goes
        linearly from `rate` to `rate_end` over warm-up and measurement).
    warmup_s: sent but not recorded, before `duration_s` of measurement.
    workers: processes sharing the load (connections and rate are split).
    request_timeout_s: a request without an answer after this long is a
        timeout; the run ends at the latest this long after the measurement.
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

    def check(self, names: Mapping[str, str] | None = None) -> None:
        """Refuse a plan that cannot run.

        Args:
            names: what to call each field in the messages, e.g. the command
                line's flags ({"duration_s": "--duration"}); by default the
                field's name.

        Raises:
            ValueError: what is wrong, with the value.
        """
        def n(field: str) -> str:
            return (names or {}).get(field, field)

        def finite(value: float) -> bool:
            return math.isfinite(value)

        if self.mode not in ("closed", "open"):
            raise ValueError(f"{n('mode')} must be 'closed' or 'open', got {self.mode!r}")
        if not self.functions:
            raise ValueError(f"{n('functions')}: the plan needs at least one function")
        if self.connections < 1:
            raise ValueError(f"{n('connections')} must be >= 1, got {self.connections}")
        if self.workers < 1:
            raise ValueError(f"{n('workers')} must be >= 1, got {self.workers}")
        if self.connections < self.workers:
            raise ValueError(
                f"{n('workers')} {self.workers} need at least as many {n('connections')}"
                f" (got {self.connections}): raise {n('connections')} or lower {n('workers')}")
        if not (finite(self.duration_s) and self.duration_s > 0):
            raise ValueError(f"{n('duration_s')} must be > 0, got {self.duration_s:g}")
        if not (finite(self.warmup_s) and self.warmup_s >= 0):
            raise ValueError(f"{n('warmup_s')} must be >= 0, got {self.warmup_s:g}")
        if not (finite(self.request_timeout_s) and self.request_timeout_s > 0):
            raise ValueError(
                f"{n('request_timeout_s')} must be > 0, got {self.request_timeout_s:g}")
        if not (finite(self.zipf_s) and self.zipf_s >= 0):
            raise ValueError(f"{n('zipf_s')} must be >= 0, got {self.zipf_s:g}")
        if self.mode == "open":
            if not (finite(self.rate) and self.rate >= 0):
                raise ValueError(f"{n('rate')} must be >= 0, got {self.rate:g}")
            if self.rate_end is not None and not (finite(self.rate_end) and self.rate_end >= 0):
                raise ValueError(f"{n('rate_end')} must be >= 0, got {self.rate_end:g}")
            if self.rate <= 0 and not self.rate_end:
                raise ValueError(f"an open loop needs {n('rate')} > 0, got {self.rate:g}")


def planned_arrivals(plan: Plan, index: int) -> Iterator[float]:
    """Worker `index`'s open-loop arrival times, in seconds from its start, endless.

    The same plan gives the same times (seeded by plan.seed and the index);
    the worker sends the ones before warmup_s + duration_s.
    """
    rng = random.Random(f"{plan.seed}-{index}-arrivals")
    rate = plan.rate / plan.workers
    if plan.rate_end is None:
        return poisson_arrivals(rate, rng)
    return ramp_arrivals(rate, plan.rate_end / plan.workers, plan.warmup_s + plan.duration_s,
                         rng)


class Worker:
    """One process's share of a plan (worker `index` of plan.workers), in trio.

    `progress(requests_done)` is called as requests end, warm-up included.
    After `run`, `t_start` is when it started, on trio's clock.
    """

    def __init__(self, plan: Plan, index: int = 0,
                 progress: Callable[[int], None] | None = None) -> None:
        self.plan = plan
        self.index = index
        self.progress = progress
        self.stats = Stats()
        self.stats.mode = plan.mode
        self.stats.window_s = plan.duration_s
        target = plan.target
        self.requests = [build_request(target.host, target.port, "POST", target.path(f),
                                       plan.payload, target.headers())
                         for f in plan.functions]
        self.zipf = Zipf(len(plan.functions), plan.zipf_s,
                         random.Random(f"{plan.seed}-{index}-functions"))
        share = plan.connections // plan.workers
        self.connections = share + (1 if index < plan.connections % plan.workers else 0)
        self.done = 0
        self.t_start = self.t_measure = self.t_end = 0.0  # set by run(), on trio's clock
        self._busy: set[Connection] = set()
        self._timer = PreciseTimer()  # entered by run()
        self._turn = trio.Lock()  # open loop: held by the sender waiting for the clock
        self._clock = time.perf_counter  # replaced by trio's clock in run()

    async def run(self) -> Stats:
        """Run the share, return what it recorded.

        Returns when every request ended, at the latest `request_timeout_s`
        after the measurement (what is still in flight or waiting then is
        counted as a timeout or unsent).
        """
        with PreciseTimer() as self._timer:
            return await self._run()

    async def _run(self) -> Stats:
        plan = self.plan
        self._clock = clock = trio.lowlevel.current_clock().current_time  # one call, not three
        opened: list[Connection] = []
        if plan.mode == "open":
            # Every connection open before the clock starts. Opened by the senders
            # instead, the arrivals that came due meanwhile (1,024 connections take
            # a while) went out late and together: a burst at the start that the
            # plan does not have (send lag up to 2.6 ms in the rising benchmark).
            self.t_measure = math.inf  # no connect error counts yet
            await self._open_all(opened)
        self.t_start = clock()
        self.t_measure = self.t_start + plan.warmup_s
        self.t_end = self.t_measure + plan.duration_s
        schedule: Schedule | None = None
        if plan.mode == "open":
            limit = BACKLOG_PER_CONNECTION * self.connections
            self.stats.backlog_limit = limit
            arrivals = (self.t_start + t for t in planned_arrivals(plan, self.index))
            schedule = Schedule(arrivals, self.t_end, limit, self._overload)
        with trio.move_on_at(self.t_end + plan.request_timeout_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog)
                async with trio.open_nursery() as loops:
                    for i in range(self.connections):
                        if schedule is None:
                            loops.start_soon(self._closed_loop)
                        else:
                            loops.start_soon(self._open_sender, schedule,
                                             opened[i] if i < len(opened) else None)
                nursery.cancel_scope.cancel()
        if schedule is not None:
            now = clock()
            for intended in schedule.close(now):
                self._arrived(intended)
                self._fail("unsent", intended, intended >= self.t_measure, now)
        return self.stats

    async def _watchdog(self) -> None:
        """Close the connection of a request unanswered after request_timeout_s.

        (No cancel scope per request: it cost a third of the generator's time.)
        """
        timeout = self.plan.request_timeout_s
        while True:
            await trio.sleep(min(1.0, timeout / 4))
            now = self._clock()
            for conn in list(self._busy):
                if now - conn.busy_since > timeout:
                    conn.timed_out = True
                    conn.close()

    # --- closed loop ------------------------------------------------------------

    async def _closed_loop(self) -> None:
        conn: Connection | None = None
        clock = self._clock
        stats = self.stats
        try:
            while True:
                if conn is None or conn.closed:
                    conn = await self._connect()
                    if conn is None:
                        if clock() >= self.t_end:
                            break
                        continue
                data = self.requests[self.zipf.sample()]
                sent_at = clock()
                if sent_at >= self.t_end:
                    break
                measured = sent_at >= self.t_measure
                if measured:
                    stats.sent += 1
                    if stats.first_send_s is None:
                        stats.note_send(sent_at - self.t_measure)
                conn = await self._exchange(conn, data, sent_at, sent_at, measured)
        finally:
            if conn is not None:
                conn.close()

    # --- open loop --------------------------------------------------------------

    async def _open_all(self, into: list[Connection]) -> None:
        """Open the share's connections at once (those that fail are opened again
        by their senders)."""
        async def one() -> None:
            conn = await self._connect()
            if conn is not None:
                into.append(conn)

        async with trio.open_nursery() as nursery:
            for _ in range(self.connections):
                nursery.start_soon(one)

    async def _open_sender(self, schedule: Schedule, conn: Connection | None) -> None:
        """One connection's sender: take the next arrival, send it at its time, repeat.

        An arrival already due goes out at once; otherwise only the sender
        holding `_turn` waits for the clock (the others queue for the turn), so
        one task at a time spins through the last SPIN_S before an arrival.
        """
        clock = self._clock
        stats = self.stats
        try:
            while not schedule.finished:
                if conn is None or conn.closed:
                    conn = await self._connect()
                    if conn is None and clock() >= self.t_end:
                        break  # the server is gone: what waits is counted unsent
                    continue
                ready = clock()
                intended = schedule.take_due(ready)  # one is due: send it now
                if intended is not None:
                    self._arrived(intended)
                else:
                    # The connection waits, open and unused, for the turn and the
                    # arrival: the server may close it meanwhile.
                    conn.was_idle = True
                    async with self._turn:
                        intended = schedule.take(clock())
                        if intended is None:
                            break
                        self._arrived(intended)
                        try:
                            await self._wait_until(intended)
                        except trio.Cancelled:
                            self._fail("unsent", intended, intended >= self.t_measure, clock())
                            raise
                sent_at = clock()
                measured = intended >= self.t_measure
                if measured:
                    # Waiting for a connection is the server's doing (it is in the
                    # latency); what is left is the generator's own delay.
                    stats.send_lag.record(int((sent_at - max(intended, ready)) * 1e6))
                    stats.note_send(sent_at - self.t_measure)
                data = self.requests[self.zipf.sample()]
                conn = await self._exchange(conn, data, intended, sent_at, measured)
        finally:
            if conn is not None:
                conn.close()

    async def _wait_until(self, t: float) -> None:
        clock = self._clock
        if clock() < t - SPIN_S:
            await self._timer.sleep_until(t - SPIN_S)
        while clock() < t:
            await trio.lowlevel.checkpoint()

    def _arrived(self, intended: float) -> None:
        if intended >= self.t_measure:
            self.stats.sent += 1

    def _overload(self, intended: float) -> None:
        self._arrived(intended)
        self._fail("overload", intended, intended >= self.t_measure, intended, latency=False)

    # --- one request ------------------------------------------------------------

    async def _connect(self) -> Connection | None:
        target = self.plan.target
        try:
            return await Connection.open(target.host, target.port)
        except OSError:
            if self._clock() >= self.t_measure:
                self.stats.connect_errors += 1
            await trio.sleep(CONNECT_RETRY_S)
            return None

    async def _exchange(self, conn: Connection, data: bytes, start: float, sent_at: float,
                        measured: bool) -> Connection | None:
        """Send `data` on `conn` and record how it ended; the connection to go on with.

        Latency runs from `start` (the intended time in the open loop, the
        send in the closed loop); the watchdog's clock from `sent_at`. A
        request on a connection that was idle before it (kept alive, or opened
        ahead) which the server closed before any byte of the answer is sent
        once more, on a new connection.

        Cancellation: a request cancelled by the run's final deadline is
        counted as a timeout.
        """
        retried = False
        try:
            while True:
                conn.busy_since = sent_at
                self._busy.add(conn)
                try:
                    response = await conn.request(data)
                    break
                except ConnectionClosed as exc:
                    failure = "timeout" if conn.timed_out else "connection_closed"
                    if failure == "connection_closed" and exc.before_response \
                            and conn.was_idle and not retried:
                        failure = ""  # the server closed an idle kept-alive connection
                except (OSError, trio.ClosedResourceError):
                    failure = "timeout" if conn.timed_out else "connection_closed"
                finally:
                    self._busy.discard(conn)
                if failure:
                    self._fail(failure, start, measured)
                    return None
                # Once more, on a new connection (the latency still runs from `start`).
                retried = True
                if measured:
                    self.stats.reconnects += 1
                fresh = await self._connect()
                if fresh is None:
                    self._fail("connection_closed", start, measured)
                    return None
                conn = fresh
        except trio.Cancelled:
            self._fail("timeout", start, measured)
            conn.close()
            raise
        now = self._clock()
        if measured:
            self.stats.record(response, int((now - start) * 1e6), now - self.t_measure)
        self._tick()
        return None if conn.closed else conn

    def _fail(self, kind: str, start: float, measured: bool, now: float | None = None,
              *, latency: bool = True) -> None:
        if measured:
            if now is None:
                now = self._clock()
            latency_us = int((now - start) * 1e6) if latency else None
            self.stats.record_failure(kind, latency_us, now - self.t_measure)
        self._tick()

    def _tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done)


def run_in_process(plan: Plan, progress: Callable[[int], None] | None = None) -> Stats:
    """The whole plan in this process, one trio loop (workers is ignored)."""
    plan.check()
    single = msgspec.structs.replace(plan, workers=1)
    return trio.run(Worker(single, 0, progress).run)


def run(plan: Plan, progress: Callable[[int, float], None] | None = None) -> Stats:
    """Run the plan in `plan.workers` processes and merge what they recorded.

    Each worker is `python -m fastfaas.loadgen.engine INDEX` with the plan on
    its stdin (a fresh interpreter: nothing of the caller's `__main__` is
    re-run); it reports progress lines and, at the end, its statistics on
    stdout. `progress(requests_done, seconds_elapsed)` is called about four
    times a second from this process.

    Raises:
        RuntimeError: a worker exited without reporting; the others are
            terminated at once.
    """
    plan.check()
    if plan.workers == 1 and progress is None:
        return run_in_process(plan)
    encoded = msgspec.msgpack.encode(plan)
    procs: list[subprocess.Popen[bytes]] = []
    t0 = time.monotonic()
    done = [0] * plan.workers
    total = Stats()
    finished = False
    try:
        for index in range(plan.workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "fastfaas.loadgen.engine", str(index)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE))
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
        finished = True
    finally:
        for proc in procs:
            if not finished and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return total


async def _report_progress(worker: Worker, out: Any) -> None:
    while True:
        await trio.sleep(0.25)
        out.write(b"P %d\n" % worker.done)
        out.flush()


async def _worker_main(plan: Plan, index: int) -> Stats:
    worker = Worker(plan, index, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_report_progress, worker, sys.stdout.buffer)
        stats = await worker.run()
        nursery.cancel_scope.cancel()
    return stats


if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the parent ends its workers
    # (SIGTERM), so they ignore SIGINT rather than print tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _plan = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=Plan)
    _stats = trio.run(_worker_main, _plan, int(sys.argv[1]))
    _payload = msgspec.msgpack.encode(_stats.to_dict())
    sys.stdout.buffer.write(b"R %d\n" % len(_payload) + _payload)
    sys.stdout.buffer.flush()
