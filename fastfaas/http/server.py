"""The trio side of HTTP: accept connections, move bytes, apply timeouts.

Everything about the protocol is in `protocol.py`; this module owns sockets,
deadlines and the graceful stop. An application is one coroutine:

    async def app(request: Request) -> Response
"""

from __future__ import annotations

import contextlib
import math
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


class HttpServer:
    """Serve an App on listeners until `close()`; then finish what is in flight.

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
        self.connections = 0
        self.requests = 0
        self._in_flight = 0
        self._idle_scopes: set[trio.CancelScope] = set()
        self._accept_scope: trio.CancelScope | None = None
        self._slots = trio.Semaphore(self.limits.max_connections)

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on the listeners until close(); returns when every connection is done."""
        async with trio.open_nursery() as conns:
            with trio.CancelScope() as self._accept_scope:
                async with trio.open_nursery() as accepters:
                    for listener in listeners:
                        accepters.start_soon(self._accept, listener, conns)
                    task_status.started()
            for listener in listeners:
                await listener.aclose()

    def close(self) -> None:
        """Stop accepting; idle connections close, busy ones close after their response."""
        self.closing = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for scope in self._idle_scopes:
            scope.cancel()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def _accept(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except BaseException:
                self._slots.release()
                raise
            conns.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            await self._connection(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer went away; an invocation it started still ran to its end
        finally:
            self._slots.release()
            self.connections -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _connection(self, stream: trio.SocketStream) -> None:
        limits = self.limits
        conn = ServerConnection(self.body_limit, limits.max_header_bytes)
        headers_deadline = math.inf
        while True:
            request = conn.next_request()
            if request is None:
                if conn.closed or (self.closing and not conn.in_request):
                    return
                if not conn.in_request:
                    deadline = trio.current_time() + limits.keepalive_timeout_s
                elif not conn.headers_done:
                    deadline = headers_deadline
                else:
                    deadline = trio.current_time() + limits.body_timeout_s
                idle = not conn.in_request
                with trio.CancelScope(deadline=deadline) as scope:
                    if idle:
                        self._idle_scopes.add(scope)
                    try:
                        data = await stream.receive_some(RECEIVE_BYTES)
                    finally:
                        if idle:
                            self._idle_scopes.discard(scope)
                if scope.cancelled_caught:
                    if conn.in_request:
                        await self._send_error(stream, 408, "RequestTimeout",
                                               "the request did not arrive in time")
                    return
                was_in_request = conn.in_request
                try:
                    conn.receive_data(data)
                except ProtocolError as exc:
                    code = "RequestTooLarge" if exc.status == 413 else "BadRequest"
                    await self._send_error(stream, exc.status, code, exc.message)
                    return
                if not was_in_request:
                    headers_deadline = trio.current_time() + limits.header_timeout_s
                interim = conn.data_to_send()
                if interim:
                    await stream.send_all(interim)
                continue
            self._in_flight += 1
            try:
                response = await self.app(request)
            finally:
                self._in_flight -= 1
                self.requests += 1
            keep_alive = request.keep_alive and not self.closing
            await stream.send_all(encode_response(response.status, response.headers,
                                                  response.body, keep_alive))
            if not keep_alive:
                return

    async def _send_error(self, stream: trio.SocketStream, status: int, code: str,
                          message: str) -> None:
        response = error_response(status, code, message)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(encode_response(status, response.headers, response.body,
                                                  keep_alive=False))
