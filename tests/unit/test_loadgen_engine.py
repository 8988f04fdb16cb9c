"""The load engine against small HTTP servers in the test's own trio loop.

What is checked are counts and lower bounds that hold whatever the timing:
every arrival of the window accounted for once, and a stall charged to the
requests it held up (each bound derived next to it). No sleeps to wait for
anything: the runs end by themselves.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import socket
import time
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from fastfaas import _native
from fastfaas.loadgen.client import Connection
from fastfaas.loadgen.engine import Plan, PreciseTimer, Target, Worker, planned_arrivals
from fastfaas.loadgen.stats import Stats

ANSWER = b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-Fastfaas-Start: warm\r\n\r\n{"ok":true}'

# What the server does with a request, given when it was received: True to keep
# the connection open after answering, False to close it (without saying so).
Behaviour = Callable[[float], Awaitable[bool]]


class MiniServer:
    """A bare HTTP/1.1 server: reads requests, lets `behave` decide, answers ANSWER.

    `idle_close_s`: close a kept-alive connection idle that long, as servers do.
    """

    def __init__(self, behave: Behaviour, idle_close_s: float | None = None) -> None:
        self.behave = behave
        self.idle_close_s = idle_close_s
        self.port = 0
        self.received = 0

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]

    async def _receive(self, stream: trio.SocketStream, buf: bytearray) -> bool:
        """More bytes into buf; False at EOF (or after idle_close_s without any)."""
        with trio.move_on_after(self.idle_close_s if self.idle_close_s and not buf
                                else float("inf")):
            data = await stream.receive_some(65536)
            buf += data
            return bool(data)
        return False

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        async with stream:
            while True:
                while b"\r\n\r\n" not in buf:
                    if not await self._receive(stream, buf):
                        return
                head, _, rest = bytes(buf).partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                buf = bytearray(rest)
                while len(buf) < length:
                    if not await self._receive(stream, buf):
                        return
                del buf[:length]
                self.received += 1
                keep = await self.behave(trio.current_time())
                await stream.send_all(ANSWER)
                if not keep:
                    return


async def answer_at_once(received_at: float) -> bool:
    return True


def open_plan(port: int, **kw: object) -> Plan:
    fields: dict[str, object] = {"mode": "open", "rate": 200.0, "connections": 16,
                                 "duration_s": 1.5, "warmup_s": 0.0, "seed": 3}
    fields.update(kw)
    return Plan(target=Target(port=port, kind="plain"), functions=["f"], **fields)  # type: ignore[arg-type]


def arrivals_in_window(plan: Plan) -> list[float]:
    """The worker's arrivals of the measured window, seconds from its start."""
    end = plan.warmup_s + plan.duration_s
    return [t for t in itertools.takewhile(lambda t: t < end, planned_arrivals(plan, 0))
            if t >= plan.warmup_s]


def check_accounting(stats: Stats, plan: Plan) -> None:
    """Every arrival of the window ended exactly once, as an answer or a failure."""
    assert stats.sent == len(arrivals_in_window(plan))
    assert stats.completed == stats.sent
    assert sum(stats.timeline_count) == stats.answered
    assert sum(stats.timeline_failed) == stats.failed


async def test_open_loop_charges_a_stall_to_the_requests_that_arrived_during_it() -> None:
    """At 200/s, the server stops answering for 300 ms once (0.5 s after its first
    request): what it receives meanwhile waits until the stall ends, and so does what
    could not be sent for want of a connection.

    The bounds: an arrival intended at t within [stall start, stall end) cannot be
    answered before the stall ends, whether it reached the server or waited for a
    connection, so its latency (from t) is at least (stall end - t). Hence, for any
    d, at least as many samples of d or more as arrivals in [start, end - d]; and
    the request that started the stall (intended before it) waited all 300 ms.
    A generator measuring from the actual send (coordinated omission) would show
    about as many slow samples as connections, not as arrivals.
    """
    stall: dict[str, float] = {}

    async def stall_once(received_at: float) -> bool:
        first = stall.setdefault("first", received_at)
        if "start" not in stall and received_at - first >= 0.5:
            stall["start"], stall["end"] = received_at, received_at + 0.3
        if "start" in stall and received_at < stall["end"]:
            await trio.sleep_until(stall["end"])
        return True

    async with trio.open_nursery() as nursery:
        server = MiniServer(stall_once)
        await server.start(nursery)
        plan = open_plan(server.port)
        worker = Worker(plan)
        stats = await worker.run()
        nursery.cancel_scope.cancel()

    check_accounting(stats, plan)
    assert not stats.errors and stats.answered == stats.sent
    assert stats.send_lag.total == stats.sent
    latency = stats.latency["warm"]
    start, end = stall["start"] - worker.t_start, stall["end"] - worker.t_start
    during = [t for t in arrivals_in_window(plan) if start <= t < end]
    assert len(during) > plan.connections  # ~60 expected: the stall meant something
    for d in (0.05, 0.1, 0.15, 0.2, 0.25):
        held_this_long = sum(1 for t in during if t <= end - d)
        assert latency.count_at_least(int(d * 1e6)) >= held_this_long, d
    assert latency.count_at_least(300_000) >= 1


async def test_open_loop_opens_its_connections_before_its_clock_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Opened by the senders after the start, the connections took the first
    arrivals' time, and those went out together: a burst the plan does not have."""
    opened_at: list[float] = []
    real_open = Connection.open

    async def open_and_note(host: str, port: int) -> Connection:
        conn = await real_open(host, port)
        opened_at.append(trio.current_time())
        return conn

    monkeypatch.setattr(Connection, "open", open_and_note)

    async def answer(received_at: float) -> bool:
        return True

    async with trio.open_nursery() as nursery:
        server = MiniServer(answer)
        await server.start(nursery)
        plan = open_plan(server.port, connections=64, duration_s=0.3)
        worker = Worker(plan)
        stats = await worker.run()
        nursery.cancel_scope.cancel()

    check_accounting(stats, plan)
    assert not stats.errors and stats.answered == stats.sent > 0
    assert len(opened_at) == plan.connections  # one each, none opened again
    assert max(opened_at) <= worker.t_start


async def test_open_loop_accounts_for_requests_never_answered() -> None:
    """A server that never answers, 2 connections, a 0.3 s request timeout: what
    was sent times out (by the watchdog, or in flight at the final deadline), what
    waited for a connection at the end is unsent, and what found 20 (10 per
    connection) already waiting is overload; each arrival counted once."""
    async def never(received_at: float) -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        server = MiniServer(never)
        await server.start(nursery)
        plan = open_plan(server.port, rate=100.0, connections=2, duration_s=1.0,
                         request_timeout_s=0.3)
        stats = await Worker(plan).run()
        nursery.cancel_scope.cancel()

    check_accounting(stats, plan)
    assert stats.answered == 0 and stats.throughput is None
    assert set(stats.errors) <= {"timeout", "unsent", "overload"}
    # The first two requests go out at once and cannot outlive the final deadline.
    assert stats.errors["timeout"] >= 2
    # ~100 arrivals in 1 s against a handful sent: the backlog is full at the end.
    assert stats.errors["unsent"] >= 1 and stats.errors["overload"] >= 1
    assert stats.failed_latency.total == stats.errors["timeout"] + stats.errors["unsent"]
    assert stats.backlog_limit == 20


async def test_closed_loop_retries_once_when_the_server_closed_a_kept_alive_connection() -> None:
    """The server closes every connection after one answer, without saying so: each
    later request finds its connection closed before any byte of an answer, and is
    sent once more on a new one; nothing fails."""
    async def close_after_answer(received_at: float) -> bool:
        return False

    async with trio.open_nursery() as nursery:
        server = MiniServer(close_after_answer)
        await server.start(nursery)
        plan = Plan(target=Target(port=server.port, kind="plain"), functions=["f"],
                    connections=2, duration_s=0.5)
        stats = await Worker(plan).run()
        nursery.cancel_scope.cancel()

    assert not stats.errors
    assert stats.answered == stats.sent > plan.connections
    # Only each loop's very first request had a fresh connection of its own.
    assert stats.reconnects == stats.sent - plan.connections


async def test_open_loop_retries_on_a_connection_closed_while_it_waited() -> None:
    """Connections idle 50 ms are closed by the server; at 20/s on 2 connections
    most requests find theirs closed, opened ahead or kept alive, and are retried."""
    async with trio.open_nursery() as nursery:
        server = MiniServer(answer_at_once, idle_close_s=0.05)
        await server.start(nursery)
        plan = open_plan(server.port, rate=20.0, connections=2, duration_s=1.0)
        stats = await Worker(plan).run()
        nursery.cancel_scope.cancel()

    check_accounting(stats, plan)
    assert not stats.errors and stats.answered == stats.sent
    assert server.received == stats.sent  # a retried request reached the server once


async def test_connect_failures_are_not_requests() -> None:
    with socket.socket() as sock:  # bound, not listening: connects are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        closed = await Worker(Plan(target=Target(port=port, kind="plain"), functions=["f"],
                                   connections=2, duration_s=0.3)).run()
        plan = open_plan(port, rate=50.0, connections=2, duration_s=0.3)
        opened = await Worker(plan).run()

    assert closed.connect_errors >= 2
    assert closed.sent == closed.completed == 0 and not closed.errors
    assert closed.timeline_count == [] and closed.throughput is None
    assert opened.connect_errors >= 2
    check_accounting(opened, plan)
    assert opened.answered == 0 and set(opened.errors) <= {"unsent", "overload"}


async def test_precise_timer_never_wakes_before_its_time() -> None:
    """The open loop's timerfd sleep: at or after the time asked, and a sleep
    cancelled before its time leaves no tick behind for the next one."""
    clock = trio.current_time
    with PreciseTimer() as timer:
        assert timer._fd >= 0  # trio's system clock: the timerfd path
        for delay in (0.0005, 0.002, 0.0, -0.001, -clock()):  # the last: trio's time 0
            t = clock() + delay
            await timer.sleep_until(t)
            # The offset between trio's clock and CLOCK_MONOTONIC is taken
            # from two successive clock reads: at most microseconds off.
            assert clock() >= t - 1e-5
        with trio.move_on_after(0.001):
            await timer.sleep_until(clock() + 3600)
        t = clock() + 0.002
        await timer.sleep_until(t)
        assert clock() >= t - 1e-5
        _native.arm_timer_at(timer._fd, time.monotonic() - 1)  # a tick, left unread
        await trio.lowlevel.wait_readable(timer._fd)  # (counted by now)
        t = clock() + 0.002
        await timer.sleep_until(t)
        assert clock() >= t - 1e-5
    assert timer._fd == -1


async def test_precise_timer_follows_a_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    with PreciseTimer() as timer:
        assert timer._fd == -1  # no timerfd: trio.sleep_until on the mock clock
        t = trio.current_time() + 30
        await timer.sleep_until(t)
        assert trio.current_time() >= t


def test_arm_timer_at_fires_disarms_and_refuses_what_is_not_a_time() -> None:
    """The timerfd under PreciseTimer: a past time fires at once, 0 disarms (a
    pending tick is cleared), and NaN or infinity is an error, not a hang."""
    import select

    fd = _native.monotonic_timer()
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        _native.arm_timer_at(fd, time.monotonic() - 1)
        assert poller.poll(10_000)  # fired at once (within the poll's 10 s at most)
        _native.arm_timer_at(fd, 0)  # disarmed: the tick is gone, nothing will come
        assert poller.poll(0) == []
        for bad in (math.nan, math.inf, -math.inf, 1e300):
            with pytest.raises(ValueError, match="not a time"):
                _native.arm_timer_at(fd, bad)
    finally:
        os.close(fd)
