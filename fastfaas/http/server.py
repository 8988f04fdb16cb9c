"""The trio side of HTTP: accept connections, move bytes, apply timeouts.

Everything about the protocol is in `protocol.py`; this module owns sockets,
deadlines and the graceful stop. An application is one coroutine:

    async def app(request: Request) -> Response
"""

from __future__ import annotations

import contextlib
import errno
import math
import socket
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
import trio

from fastfaas.http.protocol import (
    BodyLimit,
    ProtocolError,
    Request,
    ServerConnection,
    encode_response,
)

RECEIVE_BYTES: Final = 256 * 1024
# accept() under resource pressure: wait and try again, never stop serving.
ACCEPT_PRESSURE: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_BACKOFF_S: Final = 0.1
JSON: Final = b"application/json"


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"",
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else [(b"content-type", JSON)]


def error_response(status: int, code: str, message: str) -> Response:
    """A platform error: `{error, message}` JSON with a proper status."""
    return Response(status, msgspec.json.encode({"error": code, "message": message}))


App = Callable[[Request], Awaitable[Response]]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Timeouts and sizes of the HTTP front end.

    header_timeout_s: a request's line and headers must all arrive within
        this time of its first byte (slowloris).
    body_timeout_s: each read of a body must bring data within this time.
    keepalive_timeout_s: an idle connection is closed after this time.
    max_connections: connections served at once; more wait in the backlog.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 60.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024


class _Conn:
    """One connection's socket and timers. `deadline` is checked by the sweeper."""

    __slots__ = ("deadline", "idle", "scope", "sock", "timed_out", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.deadline = math.inf
        self.idle = True
        self.scope = trio.CancelScope()
        self.timed_out = False
        self.writing = False


class HttpServer:
    """Serve an App on listeners until `close()`; then finish what is in flight.

    Connections use their sockets directly (non-blocking calls, waiting in
    trio only when a call would block) and one sweeper task enforces the
    timeouts: no cancel scope or scheduler round trip per request.

    Args:
        app: answers one request.
        body_limit: the largest body for (method, path); larger is 413.
        limits: timeouts and sizes.
    """

    def __init__(self, app: App, body_limit: BodyLimit, limits: Limits | None = None) -> None:
        self.app = app
        self.body_limit = body_limit
        self.limits = limits or Limits()
        self.closing = False
        self.requests = 0
        self._in_flight = 0
        self._conns: set[_Conn] = set()
        self._no_conns = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._slots = trio.Semaphore(self.limits.max_connections)
        self.accept_errors = 0
        shortest = min(self.limits.header_timeout_s, self.limits.body_timeout_s,
                       self.limits.keepalive_timeout_s)
        self._sweep_every = min(1.0, shortest / 8)
        self._now: Callable[[], float] = trio.current_time

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on the listeners until close(); returns when every connection is done."""
        self._now = trio.lowlevel.current_clock().current_time  # one call, not three
        async with trio.open_nursery() as conns:
            sweeper = trio.CancelScope()
            conns.start_soon(self._sweep, sweeper)
            try:
                with trio.CancelScope() as self._accept_scope:
                    async with trio.open_nursery() as accepters:
                        for listener in listeners:
                            accepters.start_soon(self._accept, listener, conns)
                        task_status.started()
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
            while self._conns:
                self._no_conns = trio.Event()
                await self._no_conns.wait()
            sweeper.cancel()

    def close(self) -> None:
        """Stop accepting; idle connections close, busy ones close after their response."""
        self.closing = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for conn in self._conns:
            if conn.idle:
                conn.scope.cancel()

    async def _sweep(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self._sweep_every)
                now = self._now()
                for conn in self._conns:
                    if conn.deadline <= now:
                        conn.timed_out = True
                        conn.scope.cancel()

    async def _accept(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
                # Our own socket object on the descriptor (taken from trio's, which
                # then owns none): plain non-blocking calls on the hot path instead
                # of trio's wrappers, and no second descriptor to run out of.
                try:
                    sock = socket.socket(fileno=stream.socket.detach())
                finally:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
            except OSError as exc:
                self._slots.release()
                if exc.errno not in ACCEPT_PRESSURE:
                    raise
                # Out of descriptors or memory: the connection waits in the backlog
                # while calls finish and free some (as trio.serve_listeners does).
                self.accept_errors += 1
                if self.accept_errors == 1:
                    print(f"fastfaas: cannot accept connections: {exc} (said once; retrying)",
                          file=sys.stderr, flush=True)
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            sock.setblocking(False)
            conns.start_soon(self._serve_connection, _Conn(sock))

    async def _serve_connection(self, conn: _Conn) -> None:
        self._conns.add(conn)
        try:
            with conn.scope:
                await self._connection(conn)
            if conn.timed_out and not conn.idle and not conn.writing:
                await self._send_error(conn.sock, 408, "RequestTimeout",
                                       "the request did not arrive in time")
        except OSError:
            pass  # the peer went away; an invocation it started still ran to its end
        finally:
            self._slots.release()
            self._conns.discard(conn)
            if not self._conns:
                self._no_conns.set()
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(conn.sock)
            conn.sock.close()

    async def _connection(self, conn: _Conn) -> None:
        limits = self.limits
        sock = conn.sock
        parser = ServerConnection(self.body_limit, limits.max_header_bytes)
        idle_deadline = self._now() + limits.keepalive_timeout_s
        header_deadline = math.inf
        seen = 0  # parser.requests_begun when header_deadline was set
        error: ProtocolError | None = None
        while True:
            request = parser.next_request()
            if request is None:
                if error is not None:  # after answering the requests before it
                    code = "RequestTooLarge" if error.status == 413 else "BadRequest"
                    await self._send_error(sock, error.status, code, error.message)
                    return
                if parser.closed or (self.closing and not parser.in_request):
                    return
                if parser.requests_begun != seen:
                    seen = parser.requests_begun
                    header_deadline = self._now() + limits.header_timeout_s
                conn.idle = not parser.in_request
                if conn.idle:
                    conn.deadline = idle_deadline
                elif not parser.headers_done:
                    conn.deadline = header_deadline  # from the request's first byte
                else:
                    conn.deadline = self._now() + limits.body_timeout_s
                try:
                    data = sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                try:
                    parser.receive_data(data)
                except ProtocolError as exc:
                    error = exc
                interim = parser.data_to_send()
                if interim and error is None:
                    await send_all(sock, interim)
                continue
            conn.idle = False
            conn.deadline = math.inf  # the app's time is not the client's
            self._in_flight += 1
            try:
                response = await self.app(request)
            except Exception as exc:  # the app's bug: this request fails, not the server
                traceback.print_exc()
                response = error_response(500, "InternalError", f"{type(exc).__name__}: {exc}")
            finally:
                self._in_flight -= 1
                self.requests += 1
            keep_alive = request.keep_alive and not self.closing
            conn.writing = True  # a client that does not read is timed out, not answered
            conn.deadline = self._now() + limits.body_timeout_s
            await send_all(sock, encode_response(response.status, response.headers,
                                                  response.body, keep_alive,
                                                  head=request.method == b"HEAD"))
            conn.writing = False
            if not keep_alive:
                return
            now = self._now()
            idle_deadline = now + limits.keepalive_timeout_s
            if parser.in_request:  # the next request began meanwhile: its time starts now
                seen = parser.requests_begun
                header_deadline = now + limits.header_timeout_s

    async def _send_error(self, sock: socket.socket, status: int, code: str,
                          message: str) -> None:
        response = error_response(status, code, message)
        if status == 413:
            # Refused before any app saw the request: say it in Lambda's words too,
            # so that boto3 raises RequestTooLargeException (the body's `message`
            # is what botocore reads).
            response.headers.append((b"x-amzn-errortype", b"RequestTooLargeException"))
        with contextlib.suppress(OSError), trio.move_on_after(5):
            await send_all(sock, encode_response(status, response.headers, response.body,
                                                  keep_alive=False))


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Send everything; waits in trio only when the socket buffer is full."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]
