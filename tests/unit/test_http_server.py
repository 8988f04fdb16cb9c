"""The trio HTTP front end (fastfaas/http/server.py) over real loopback TCP.

Timeouts here are real (the server's deadlines run on trio's clock while bytes
cross a real socket), so they are kept short; waits are on events and reads.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import httptools
import msgspec
import pytest
import trio
import trio.testing

from fastfaas.http.protocol import Request
from fastfaas.http.server import RECEIVE_BYTES, Fast, HttpServer, Limits, Pending, Response, Take

# Every test is bounded: a server that never answers fails here, not at pytest's timeout.
BOUND_S = 5.0


async def echo(request: Request) -> Response:
    return Response(200, b"%s %s %s" % (request.method, request.path.encode(), request.body),
                    [(b"content-type", b"text/plain")])


@dataclasses.dataclass
class Served:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


class Client:
    """A raw HTTP/1.1 client: send bytes, read whole responses, see the close."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._parser = httptools.HttpResponseParser(self)
        self._ready: collections.deque[Served] = collections.deque()
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._ready.append(Served(self._parser.get_status_code(), self._headers, self._body,
                                  self._parser.should_keep_alive()))
        self._headers, self._body = {}, b""

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def response(self) -> Served:
        while not self._ready:
            data = await self.stream.receive_some(65536)
            assert data, "the server closed the connection without a (whole) response"
            self._parser.feed_data(data)
        return self._ready.popleft()

    async def request(self, data: bytes) -> Served:
        await self.send(data)
        return await self.response()

    async def wait_closed(self) -> None:
        """The server closes the connection, sending nothing more."""
        assert not self._ready
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # a reset: the server closed with bytes unread
            return
        assert data == b"", f"expected the connection to close, got {data!r}"

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def running(app: Callable[[Request], Awaitable[Response]] = echo,
                  limits: Limits | None = None, fast: Fast | None = None,
                  take: Take | None = None) -> AsyncIterator[tuple[HttpServer, int]]:
    """A server on an ephemeral loopback port; closed (and waited for) on exit."""
    server = HttpServer(app, lambda method, path: 1 << 20, limits, fast, take)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            yield server, port
            server.close()


def get(path: str, *extra: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path.encode(), b"".join(extra))


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    async with running() as (server, port), await Client.connect(port) as client:
        for i in range(3):
            served = await client.request(get(f"/r{i}"))
            assert (served.status, served.body, served.keep_alive) == (
                200, f"GET /r{i} ".encode(), True)
            assert served.headers[b"content-type"] == b"text/plain"
        served = await client.request(b"POST /p HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody")
        assert served.body == b"POST /p body"
        assert server.connections == 1
        assert server.requests == 4


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running() as (_, port), await Client.connect(port) as client:
        await client.send(get("/a") + get("/b") + get("/c", b"Connection: close\r\n"))
        bodies = [(await client.response()).body for _ in range(3)]
        assert bodies == [b"GET /a ", b"GET /b ", b"GET /c "]
        await client.wait_closed()


async def test_connection_close_is_honoured() -> None:
    async with running() as (_, port), await Client.connect(port) as client:
        served = await client.request(b"GET /x HTTP/1.0\r\n\r\n")
        assert served.status == 200
        assert served.headers[b"connection"] == b"close"
        await client.wait_closed()


async def test_malformed_request_gets_400_then_the_connection_closes() -> None:
    async with running() as (server, port), await Client.connect(port) as client:
        served = await client.request(b"NOT HTTP AT ALL\r\n\r\n")
        assert served.status == 400
        assert not served.keep_alive
        assert msgspec.json.decode(served.body)["error"] == "BadRequest"
        await client.wait_closed()
        assert server.requests == 0


async def test_body_over_the_limit_gets_413_without_sending_the_body() -> None:
    async with running() as (_, port), await Client.connect(port) as client:
        served = await client.request(
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (2 << 20))
        assert served.status == 413
        assert msgspec.json.decode(served.body)["error"] == "RequestTooLarge"
        await client.wait_closed()


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    async with running() as (_, port), await Client.connect(port) as client:
        await client.send(b"POST /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        assert await client.stream.receive_some(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        await client.send(b"ok")
        served = await client.response()
        assert (served.status, served.body) == (200, b"POST /up ok")


async def test_slowloris_headers_time_out_although_each_byte_is_in_time() -> None:
    header_timeout = 0.3
    gap = 0.05  # far below every timeout: only a deadline for the whole head can fire
    limits = Limits(header_timeout_s=header_timeout, body_timeout_s=10, keepalive_timeout_s=10)
    # Complete after ~90 gaps (4.5 s): a per-read timeout would let it through.
    head = get("/slow", b"x-pad: " + b"p" * 50 + b"\r\n")
    async with running(limits=limits) as (_, port), await Client.connect(port) as client:

        async def drip() -> None:
            try:
                for i in range(len(head)):
                    await client.send(head[i:i + 1])
                    await trio.sleep(gap)
            except trio.BrokenResourceError:
                pass  # the server hung up: what this test wants

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            start = trio.current_time()
            served = await client.response()
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert served.status == 408
        assert not served.keep_alive
        assert msgspec.json.decode(served.body)["error"] == "RequestTimeout"
        assert header_timeout <= elapsed < header_timeout + 1.5
        await client.wait_closed()


async def test_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    keepalive = 0.2
    limits = Limits(header_timeout_s=10, body_timeout_s=10, keepalive_timeout_s=keepalive)
    async with running(limits=limits) as (server, port):
        async with await Client.connect(port) as client:
            assert (await client.request(get("/a"))).status == 200
            start = trio.current_time()
            assert (await client.request(get("/b"))).status == 200  # still open in time
            await client.wait_closed()  # no 408: it was idle, not in a request
            # Server and client share this trio clock; the server's started after `start`.
            assert trio.current_time() - start >= keepalive
        # A connection that never sends a byte is idle too.
        async with await Client.connect(port) as silent:
            await silent.wait_closed()
        assert server.requests == 2


async def test_close_stops_accepting_closes_idle_and_finishes_in_flight() -> None:
    entered, release, served_done = trio.Event(), trio.Event(), trio.Event()

    async def app(request: Request) -> Response:
        if request.path == "/block":
            entered.set()
            await release.wait()
        return await echo(request)

    server = HttpServer(app, lambda method, path: 1 << 20)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(listeners, task_status=task_status)
        served_done.set()

    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve)
            async with await Client.connect(port) as idle, await Client.connect(port) as busy:
                assert (await idle.request(get("/first"))).keep_alive
                await busy.send(get("/block"))
                await entered.wait()
                assert server.in_flight == 1

                server.close()
                await idle.wait_closed()
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", port)
                assert not served_done.is_set()  # the in-flight request holds it open

                release.set()
                served = await busy.response()
                assert (served.status, served.body) == (200, b"GET /block ")
                assert served.headers[b"connection"] == b"close"
                assert not served.keep_alive
                await busy.wait_closed()
                await served_done.wait()
            assert (server.in_flight, server.connections, server.requests) == (0, 0, 2)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
async def test_client_gone_while_the_app_runs_does_not_cancel_it(reset: bool) -> None:
    entered, release, completed = trio.Event(), trio.Event(), trio.Event()

    async def app(request: Request) -> Response:
        if request.path == "/slow":
            entered.set()
            await release.wait()
            completed.set()
            return Response(200, b"x" * 100_000)
        return await echo(request)

    async with running(app) as (server, port):
        async with await Client.connect(port) as client:
            await client.send(get("/slow"))
            await entered.wait()
            if reset:  # abortive close: the server's write fails with ECONNRESET/EPIPE
                client.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                struct.pack("ii", 1, 0))
        release.set()
        await completed.wait()  # a cancelled app never gets here (fail_after fires)
        # The connection ends quietly and the server goes on serving.
        async with await Client.connect(port) as other:
            assert (await other.request(get("/next"))).body == b"GET /next "
        assert server.requests == 2


async def straddle(client: Client, second_start: bytes, pause: float) -> float:
    """Start POST /one, then send its last byte with the start of the next request.

    The 100 Continue shows that the server has read /one's head on its own, so
    the next request's first bytes arrive in the read that completes /one.

    Returns:
        The time just before the next request's first bytes were sent.
    """
    await client.send(b"POST /one HTTP/1.1\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 1\r\n\r\n")
    assert await client.stream.receive_some(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    await trio.sleep(pause)
    sent_at = trio.current_time()
    await client.send(b"1" + second_start)
    assert (await client.response()).body == b"POST /one 1"
    return sent_at


async def test_a_request_pipelined_behind_another_gets_a_fresh_header_deadline() -> None:
    header_timeout = 0.3
    limits = Limits(header_timeout_s=header_timeout, body_timeout_s=10, keepalive_timeout_s=10)
    async with running(limits=limits) as (_, port), await Client.connect(port) as client:
        # By then a header deadline counted from /one's first byte has passed.
        await straddle(client, b"GET /two HTTP/1.1\r\n", pause=header_timeout + 0.2)
        await client.send(b"Host: t\r\n\r\n")  # well within /two's own header timeout
        served = await client.response()
        assert (served.status, served.body) == (200, b"GET /two ")


async def test_a_request_pipelined_behind_another_is_held_to_the_header_timeout() -> None:
    header_timeout = 0.3
    limits = Limits(header_timeout_s=header_timeout, body_timeout_s=10, keepalive_timeout_s=10)
    rest = b"Host: t\r\nx: y\r\n\r\n"  # 0.85 s at one byte per gap
    async with running(limits=limits) as (_, port), await Client.connect(port) as client:
        # The pause lets a deadline counted from /one's head pass: not /two's.
        start = await straddle(client, b"GET /two HTTP/1.1\r\n", pause=header_timeout + 0.2)

        async def drip() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                for i in range(len(rest)):
                    await client.send(rest[i:i + 1])
                    await trio.sleep(0.05)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            served = await client.response()
            elapsed = trio.current_time() - start
            nursery.cancel_scope.cancel()
        assert served.status == 408
        assert header_timeout <= elapsed < header_timeout + 0.5


async def test_a_valid_request_before_a_malformed_one_is_answered_first() -> None:
    async with running() as (server, port), await Client.connect(port) as client:
        await client.send(get("/fine") + b"NOT HTTP AT ALL\r\n\r\n")
        first = await client.response()
        assert (first.status, first.body) == (200, b"GET /fine ")
        assert (await client.response()).status == 400
        await client.wait_closed()
        assert server.requests == 1


async def test_accept_out_of_descriptors_waits_and_goes_on_serving() -> None:
    server = HttpServer(echo, lambda method, path: 1 << 20)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    real_accept = listeners[0].accept
    pressure = [OSError(errno.EMFILE, "Too many open files")] * 2

    async def accept() -> trio.SocketStream:
        if pressure:  # as the kernel says it while the process is at RLIMIT_NOFILE
            raise pressure.pop()
        return await real_accept()

    listeners[0].accept = accept  # type: ignore[method-assign]
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            async with await Client.connect(port) as client:
                served = await client.request(get("/after"))
            assert (served.status, served.body) == (200, b"GET /after ")
            assert server.accept_errors == 2
            server.close()


# --- the pump and the fast path ---------------------------------------------------------


class Waiting:
    """A Pending over a socketpair: the test answers it by writing to `peer`.

    `step()` reads what has arrived: nothing (None: wait again), b"r" (the
    Response), b"b" (the response's bytes, encoded for keep-alive, as the
    compiled lane gives them), b"a" (the rest runs in a task, as after an
    instance crash).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.own, self.peer = socket.socketpair()
        self.own.setblocking(False)
        self.fd = self.own.fileno()
        self.owner = self.own
        self.waits_first = path.startswith("/wait-first")
        self.steps = 0
        self.done = trio.Event()
        self.abandoned = False

    def step(self) -> bytes | Response | Callable[[], Awaitable[Response]] | None:
        self.steps += 1
        try:
            got = self.own.recv(1)
        except BlockingIOError:
            return None
        self.done.set()
        if got == b"a":
            return self._rest
        if got == b"b":
            body = b"encoded " + self.path.encode()
            return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        return Response(200, b"fast " + self.path.encode())

    async def _rest(self) -> Response:
        await trio.sleep(0)
        return Response(200, b"later " + self.path.encode())

    def abandon(self) -> None:
        self.abandoned = True

    def close(self) -> None:
        self.own.close()
        self.peer.close()


class FastPaths:
    """`/sync...` answered at once, `/wait...` by a Waiting, the rest by the App."""

    def __init__(self) -> None:
        self.waiting: dict[str, Waiting] = {}
        self.started = trio.Event()
        self.takes = 0

    def __call__(self, request: Request) -> Response | Pending | None:
        if request.path.startswith("/sync"):
            return Response(200, b"sync " + request.path.encode())
        if request.path.startswith("/boom"):
            raise RuntimeError("a bug in the fast path")
        if request.path.startswith("/wait"):
            pending = self.waiting[request.path] = Waiting(request.path)
            self.started.set()
            return pending
        return None

    def take(self, fd: int, max_head: int) -> bytes | Response | Pending:
        """The server's `take`: a connection's bytes that are exactly one GET of
        /take-sync... or /take-wait... are answered without a Request."""
        data = os.read(fd, RECEIVE_BYTES)
        self.takes += 1
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep or rest or not head.startswith(b"GET /take-"):
            return data
        path = head.split(b" ")[1].decode()
        if path.startswith("/take-sync"):
            return Response(200, b"taken " + path.encode())
        pending = self.waiting[path] = Waiting(path)
        self.started.set()
        return pending

    async def started_for(self, path: str) -> Waiting:
        while path not in self.waiting:
            self.started = trio.Event()
            await self.started.wait()
        return self.waiting[path]

    def close(self) -> None:
        for pending in self.waiting.values():
            pending.close()


@contextlib.asynccontextmanager
async def fast_server(app: Callable[[Request], Awaitable[Response]] = echo, take: bool = False,
                      ) -> AsyncIterator[tuple[HttpServer, int, FastPaths]]:
    paths = FastPaths()
    try:
        async with running(app, fast=paths, take=paths.take if take else None) as (server,
                                                                                  port):
            yield server, port, paths
    finally:
        paths.close()


async def test_fast_answers_mix_with_app_answers_in_order() -> None:
    async with fast_server() as (server, port, paths), await Client.connect(port) as client:
        await client.send(get("/sync1") + get("/app") + get("/wait1") + get("/sync2"))
        assert (await client.response()).body == b"sync /sync1"
        assert (await client.response()).body == b"GET /app "  # the App, in a task
        pending = await paths.started_for("/wait1")
        assert pending.steps == 1  # tried once at once: nothing yet, so it waits
        pending.peer.send(b"r")
        assert (await client.response()).body == b"fast /wait1"
        assert (await client.response()).body == b"sync /sync2"  # only after /wait1's
        assert (server.requests, server.fast_requests, server.in_flight) == (4, 3, 0)


async def test_the_end_of_the_stream_read_with_a_request_still_closes_the_connection() -> None:
    # A request and the client's shutdown arrive before the server reads: one
    # edge-triggered event brings both, the read returns the request, and no
    # event will tell of the end that lies behind it.
    async with fast_server() as (server, port, paths):
        raw = socket.create_connection(("127.0.0.1", port))
        client = Client(trio.SocketStream(trio.socket.from_stdlib_socket(raw)))
        assert (await client.request(get("/sync"))).body == b"sync /sync"  # now it waits
        raw.send(get("/wait-end"))  # both at once, the server not running in between
        raw.shutdown(socket.SHUT_WR)
        (await paths.started_for("/wait-end")).peer.send(b"r")
        with trio.fail_after(BOUND_S):
            assert (await client.response()).body == b"fast /wait-end"
            await client.wait_closed()
        await client.aclose()
        assert server.connections == 0


async def test_bytes_that_arrive_while_a_request_is_in_flight_are_read_after_it() -> None:
    async with fast_server() as (server, port, paths), await Client.connect(port) as client:
        await client.send(get("/wait-1"))
        pending = await paths.started_for("/wait-1")
        await client.send(get("/sync-2"))  # its event comes while the connection is busy
        await trio.testing.wait_all_tasks_blocked()
        pending.peer.send(b"r")
        with trio.fail_after(BOUND_S):
            assert (await client.response()).body == b"fast /wait-1"
            assert (await client.response()).body == b"sync /sync-2"
        assert server.in_flight == 0


async def test_a_pending_that_waits_first_is_stepped_only_once_its_descriptor_stirs() -> None:
    async with fast_server() as (server, port, paths), await Client.connect(port) as client:
        await client.send(get("/wait-first"))
        pending = await paths.started_for("/wait-first")
        await trio.testing.wait_all_tasks_blocked()
        assert pending.steps == 0  # not tried at once: the server waits for its descriptor
        pending.peer.send(b"r")
        with trio.fail_after(BOUND_S):
            assert (await client.response()).body == b"fast /wait-first"
        assert pending.steps == 1 and server.in_flight == 0


async def test_a_pending_whose_rest_must_wait_is_finished_in_a_task() -> None:
    async with fast_server() as (server, port, paths), await Client.connect(port) as client:
        await client.send(get("/wait-a"))
        (await paths.started_for("/wait-a")).peer.send(b"a")
        served = await client.request(get("/sync"))  # pipelined after it, answered after
        assert served.body == b"later /wait-a"
        assert (await client.response()).body == b"sync /sync"
        assert server.in_flight == 0


async def test_a_response_that_cannot_be_encoded_is_a_500_and_the_server_goes_on() -> None:
    async def bad_headers(request: Request) -> Response:
        if request.path == "/bad":  # a str where bytes belong: the app's bug
            return Response(200, b"", [(b"x-a", "1")])  # type: ignore[list-item]
        return await echo(request)

    async with running(bad_headers) as (server, port), await Client.connect(port) as client:
        served = await client.request(get("/bad"))
        assert served.status == 500 and b"a header must be a" in served.body
        assert (await client.request(get("/next"))).body == b"GET /next "
        assert server.in_flight == 0


async def test_a_fast_path_bug_is_a_500_and_the_connection_goes_on() -> None:
    async with fast_server() as (server, port, _), await Client.connect(port) as client:
        served = await client.request(get("/boom"))
        assert served.status == 500 and b"a bug in the fast path" in served.body
        assert (await client.request(get("/sync"))).body == b"sync /sync"
        assert server.in_flight == 0


async def test_close_waits_for_a_fast_request_in_flight() -> None:
    async with (fast_server() as (server, port, paths), await Client.connect(port) as idle,
                await Client.connect(port) as busy):
        assert (await idle.request(get("/sync"))).keep_alive
        await busy.send(get("/wait-c"))
        pending = await paths.started_for("/wait-c")
        server.close()
        await idle.wait_closed()  # idle: closed at once
        assert server.in_flight == 1 and server.connections == 1
        pending.peer.send(b"r")
        served = await busy.response()  # busy: answered, then closed
        assert (served.body, served.keep_alive) == (b"fast /wait-c", False)
        await busy.wait_closed()


async def test_serve_cancelled_hands_a_fast_request_in_flight_back_to_its_owner() -> None:
    paths = FastPaths()
    server = HttpServer(echo, lambda method, path: 1 << 20, fast=paths)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        with trio.fail_after(BOUND_S):
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, listeners)
                async with await Client.connect(port) as client:
                    await client.send(get("/wait-x"))
                    pending = await paths.started_for("/wait-x")
                    nursery.cancel_scope.cancel()  # not close(): serve() itself is cancelled
        assert pending.abandoned  # its owner finishes it: nothing is left half-counted
        assert (server.connections, server.in_flight) == (0, 0)
    finally:
        paths.close()


async def test_a_reset_connection_held_by_a_task_does_not_keep_the_pump_awake() -> None:
    """A connection accepted with its request already in (so never armed), whose
    App is still running when the client resets it: the hang-up is reported
    once, not at every turn of the loop."""
    entered, release = trio.Event(), trio.Event()

    async def app(request: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, b"late")

    server = HttpServer(app, lambda method, path: 1 << 20)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    early = socket.create_connection(("127.0.0.1", port))  # in the backlog, request sent
    early.sendall(get("/slow"))
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            await entered.wait()
            early.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            early.close()  # a reset
            # A pump woken by the hang-up at every turn would never let this return.
            await trio.testing.wait_all_tasks_blocked()
            release.set()
            server.close()
    assert server.requests == 1 and server.connections == 0


async def test_a_100_continue_goes_after_the_answers_before_it_and_never_after_its_own(
        ) -> None:
    async with running() as (_, port), await Client.connect(port) as client:
        expecting = b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        await client.send(get("/first") + expecting)
        data = b""
        while b"100 Continue" not in data:
            data += await client.stream.receive_some(65536)
        first = data.index(b"200 OK")
        assert first < data.index(b"100 Continue"), data  # /first's answer came first
        client._parser.feed_data(data[:data.index(b"HTTP/1.1 100")])
        assert (await client.response()).body == b"GET /first "
        served = await client.request(b"ok")
        assert served.body == b"POST /e ok"
        # A request whose body came with its head needs no 100 Continue: none is sent.
        whole = b"POST /w HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
        raw = b""
        await client.send(get("/a") + whole)
        while raw.count(b"HTTP/1.1 200") < 2:
            raw += await client.stream.receive_some(65536)
        assert b"100 Continue" not in raw, raw


async def test_a_fast_request_whose_client_left_still_runs_to_its_end() -> None:
    async with fast_server() as (server, port, paths):
        async with await Client.connect(port) as client:
            await client.send(get("/wait-gone"))
            pending = await paths.started_for("/wait-gone")
        pending.peer.send(b"r")
        await pending.done.wait()  # stepped to its answer although nobody reads it
        async with await Client.connect(port) as other:
            assert (await other.request(get("/sync"))).body == b"sync /sync"
        assert server.in_flight == 0


async def test_idle_keep_alive_connections_hold_no_task() -> None:
    """Between requests a connection waits in the pump's epoll set: 64 idle
    connections add no task to wake (nor trio objects to churn through the
    garbage collector's young generation)."""
    async with running() as (server, port):
        await trio.testing.wait_all_tasks_blocked()
        before = trio.lowlevel.current_statistics().tasks_living
        clients = [await Client.connect(port) for _ in range(64)]
        try:
            for client in clients:
                assert (await client.request(get("/x"))).status == 200
            await trio.testing.wait_all_tasks_blocked()
            assert server.connections == 64
            assert trio.lowlevel.current_statistics().tasks_living == before
            for client in clients:  # and every one of them is served again
                assert (await client.request(get("/y"))).body == b"GET /y "
        finally:
            for client in clients:
                await client.aclose()


# --- take: a whole request answered without a Request (the compiled lane's way) ---------


async def test_a_taken_request_is_answered_and_the_connection_goes_on() -> None:
    async with (fast_server(take=True) as (server, port, paths),
                await Client.connect(port) as client):
        assert (await client.request(get("/take-sync1"))).body == b"taken /take-sync1"
        assert (await client.request(get("/app"))).body == b"GET /app "  # not taken: parsed
        await client.send(get("/take-wait1"))
        pending = await paths.started_for("/take-wait1")
        pending.peer.send(b"b")
        served = await client.response()
        assert (served.body, served.keep_alive) == (b"encoded /take-wait1", True)
        assert (await client.request(get("/sync"))).body == b"sync /sync"
        assert (server.requests, server.fast_requests, server.in_flight) == (4, 3, 0)
        assert paths.takes == 4


async def test_bytes_take_does_not_answer_go_to_the_parser_whole() -> None:
    async with (fast_server(take=True) as (server, port, paths),
                await Client.connect(port) as client):
        # Two requests in one read: not one whole request, so take hands both back.
        await client.send(get("/take-sync2") + get("/sync3"))
        assert (await client.response()).body == b"GET /take-sync2 "  # the App's, in order
        assert (await client.response()).body == b"sync /sync3"
        assert paths.takes >= 1 and server.in_flight == 0


async def test_encoded_bytes_to_a_connection_that_closes_say_so() -> None:
    async with (fast_server(take=True) as (server, port, paths),
                await Client.connect(port) as client):
        await client.send(get("/wait-b", b"Connection: close\r\n"))
        (await paths.started_for("/wait-b")).peer.send(b"b")
        served = await client.response()
        assert served.body == b"encoded /wait-b"
        assert served.headers[b"connection"] == b"close" and not served.keep_alive
        await client.wait_closed()
        assert server.connections == 0


async def test_encoded_bytes_while_the_server_closes_say_so() -> None:
    async with (fast_server(take=True) as (server, port, paths),
                await Client.connect(port) as client):
        await client.send(get("/take-wait-x"))
        pending = await paths.started_for("/take-wait-x")
        server.close()
        pending.peer.send(b"b")
        served = await client.response()
        assert (served.body, served.keep_alive) == (b"encoded /take-wait-x", False)
        await client.wait_closed()
