"""The trio side of HTTP: accept connections, move bytes, apply timeouts.

Everything about the protocol is in `protocol.py`; this module owns sockets,
deadlines and the graceful stop. An application is one coroutine:

    async def app(request: Request) -> Response
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import select
import socket
import traceback
import weakref
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec
import trio

from fastfaas import _native
from fastfaas.errors import SaidOnce
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


class Pending(Protocol):
    """A request the fast path has started and not finished: `fd` becomes
    readable when it may have progressed; `step()` then gives None (not yet),
    the Response (or its bytes, encoded for a keep-alive connection: the
    server adds `connection: close` when the connection closes after it), or
    an async function whose result is the Response (the rest needs a task).
    `step()` is also called once at first, unless `waits_first` (nothing can
    have arrived yet: many requests in flight), and may be called when nothing
    has arrived (None then).

    `owner` is what holds `fd` open (an instance's channel): the same object
    for as long as the descriptor is the same one. The server keeps a
    descriptor in its epoll set from its first wait to its close, and tells a
    new one behind a reused number by its owner."""

    fd: int
    owner: object
    waits_first: bool

    def step(self) -> bytes | Response | Callable[[], Awaitable[Response]] | None: ...

    def abandon(self) -> None:
        """The server will not step it again (its connection went with the server):
        its owner finishes it, and drops the answer."""


# Answers a request without a task when it can: a Response, a Pending, or None
# (the App then answers it, in a task).
Fast = Callable[[Request], "Response | Pending | None"]
# Reads a connection (its descriptor, the header limit) as `socket.recv(RECEIVE_BYTES)`
# does, and answers what came without a Request when it is one whole request that
# `Fast` would answer: a Response or a Pending for it; otherwise the bytes read.
Take = Callable[[int, int], "bytes | Response | Pending"]
# A request `Take` answered: a keep-alive POST (only its keep_alive and method are read).
_TAKEN: Final = Request(b"POST", b"/", {}, b"", True)


class _Conn:
    """One connection: its socket, parser, deadlines and who holds it now.

    Between requests, and while a request's bytes arrive, a connection is the
    pump's: its descriptor is in the server's epoll set and no task waits for
    it. A task holds it (`task`) only while an App runs for it or a write must
    wait; a fast-path request in flight holds it as `pending`.

    The descriptor stays in the epoll set, edge-triggered, from accept to
    close: the pump serves it on an event while it `waits` for bytes, and
    otherwise marks it `stirred` (bytes, or the peer's hang-up, arrived while
    it was busy), to be read when it is free again. Once the peer has shut
    its side (`hung_up`), the end of the stream may lie behind bytes already
    read, with no event to come: it is read for before every wait.
    """

    __slots__ = ("closed", "deadline", "error", "fd", "header_deadline", "hung_up", "idle",
                 "idle_deadline", "parser", "pending", "request", "scope", "seen", "sock",
                 "stirred", "task", "timed_out", "waits", "writing")

    def __init__(self, sock: socket.socket, parser: ServerConnection, now: float,
                 keepalive_s: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.parser = parser
        self.idle_deadline = now + keepalive_s
        self.header_deadline = math.inf
        self.seen = 0  # parser.requests_begun when header_deadline was set
        self.error: ProtocolError | None = None
        self.deadline = math.inf
        self.idle = True
        self.scope = trio.CancelScope()
        self.timed_out = False
        self.writing = False
        self.task = False
        self.pending: Pending | None = None
        self.request: Request | None = None
        self.closed = False
        self.waits = False
        self.stirred = False
        self.hung_up = False


class HttpServer:
    """Serve an App on listeners until `close()`; then finish what is in flight.

    Connections use their sockets directly (non-blocking calls). One pump task
    waits on an epoll set of every connection and of the descriptors of the
    fast-path requests in flight, and serves what is ready without a task per
    connection or per request; an App runs in a task of its own, and so does
    a write that must wait. Descriptors join the set once, edge-triggered,
    and stay until closed: no epoll_ctl per request. One sweeper task
    enforces the timeouts: no cancel scope or scheduler round trip per request.

    Args:
        app: answers one request.
        body_limit: the largest body for (method, path); larger is 413.
        limits: timeouts and sizes.
        fast: answers a request without a task when it can (see `Fast`).
        take: reads a connection and answers a whole request in it without a
            Request object when it can (see `Take`).
    """

    def __init__(self, app: App, body_limit: BodyLimit, limits: Limits | None = None,
                 fast: Fast | None = None, take: Take | None = None) -> None:
        self.app = app
        self.fast = fast
        self.take = take
        self.body_limit = body_limit
        self.limits = limits or Limits()
        self.closing = False
        self.requests = 0
        self.fast_requests = 0  # answered without a task
        self._in_flight = 0
        self._conns: set[_Conn] = set()
        self._no_conns = trio.Event()
        self._accept_scope: trio.CancelScope | None = None
        self._slots = trio.Semaphore(self.limits.max_connections)
        self._accept_failed = SaidOnce("retrying")
        shortest = min(self.limits.header_timeout_s, self.limits.body_timeout_s,
                       self.limits.keepalive_timeout_s)
        self._sweep_every = min(1.0, shortest / 8)
        self._now: Callable[[], float] = trio.current_time
        self._ep: select.epoll | None = None
        self._conn_of: dict[int, _Conn] = {}  # a connection's descriptor -> it
        self._waiting_on: dict[int, _Conn] = {}  # a Pending's descriptor -> its connection
        # A Pending's descriptor in the set -> its owner, held weakly: a closed channel
        # (and its buffers) is not kept alive here, and a new owner on the same
        # descriptor registers again. A plain dict, read without a Python call.
        self._owners: dict[int, weakref.ref[object]] = {}
        self._nursery: trio.Nursery | None = None

    @property
    def connections(self) -> int:
        return len(self._conns)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def accept_errors(self) -> int:
        return self._accept_failed.count

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on the listeners until close(); returns when every connection is done."""
        self._now = _native.clock_reader(trio.lowlevel.current_clock())  # no Python call
        self._ep = select.epoll()  # a new set: nothing in it yet
        self._conn_of.clear()
        self._waiting_on.clear()
        self._owners.clear()
        try:
            async with trio.open_nursery() as conns:
                self._nursery = conns
                sweeper, pump = trio.CancelScope(), trio.CancelScope()
                conns.start_soon(self._sweep, sweeper)
                conns.start_soon(self._pump, pump)
                try:
                    with trio.CancelScope() as self._accept_scope:
                        async with trio.open_nursery() as accepters:
                            for listener in listeners:
                                accepters.start_soon(self._accept, listener)
                            task_status.started()
                finally:
                    with trio.CancelScope(shield=True):
                        for listener in listeners:
                            await listener.aclose()
                while self._conns:
                    self._no_conns = trio.Event()
                    await self._no_conns.wait()
                sweeper.cancel()
                pump.cancel()
        finally:
            for conn in list(self._conns):  # only when serve() itself was cancelled
                self._close(conn)
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(self._ep.fileno())
            self._ep.close()

    def close(self) -> None:
        """Stop accepting; idle connections close, busy ones close after their response."""
        self.closing = True
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for conn in list(self._conns):
            if conn.idle:
                if conn.task:
                    conn.scope.cancel()
                elif conn.pending is None:
                    self._close(conn)

    async def _sweep(self, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                await trio.sleep(self._sweep_every)
                now = self._now()
                for conn in list(self._conns):
                    if conn.deadline <= now:
                        conn.timed_out = True
                        if conn.task:
                            conn.scope.cancel()
                        elif conn.pending is None:  # the pump's, waiting for bytes
                            if not conn.idle:
                                self._say_now(conn, 408, "RequestTimeout",
                                              "the request did not arrive in time")
                            self._close(conn)

    async def _pump(self, scope: trio.CancelScope) -> None:
        ep = self._ep
        assert ep is not None
        conn_of, waiting_on = self._conn_of, self._waiting_on
        with scope:
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                for fd, events in ep.poll(0, 256):
                    conn = conn_of.get(fd)
                    try:
                        if conn is not None:  # bytes, or the peer's hang-up
                            if events & _HUNG_UP:
                                conn.hung_up = True
                            if conn.waits:
                                conn.waits = False
                                self._serve_ready(conn)
                            else:
                                conn.stirred = True  # read once it is free again
                            continue
                        conn = waiting_on.pop(fd, None)  # a fast-path request's descriptor
                        # (or an event nobody waits for: a reply read at the first step)
                        if (conn is not None and not conn.closed and conn.pending is not None
                                and conn.pending.fd == fd and self._advance(conn)):
                            self._serve_ready(conn, drained=True)
                    except Exception:  # a bug of ours: this connection goes, the server stays
                        traceback.print_exc()
                        if conn is not None:
                            self._close(conn)

    async def _accept(self, listener: trio.SocketListener) -> None:
        assert self._ep is not None
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
                self._accept_failed("cannot accept connections", exc)
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            except BaseException:
                self._slots.release()
                raise
            sock.setblocking(False)
            limits = self.limits
            conn = _Conn(sock, ServerConnection(self.body_limit, limits.max_header_bytes),
                         self._now(), limits.keepalive_timeout_s)
            self._conns.add(conn)
            try:
                # Edge-triggered: a hang-up while a task holds the connection is
                # reported once, not again and again.
                _watch(self._ep, conn.fd, _EDGE_READ | select.EPOLLRDHUP)
            except OSError as exc:  # the kernel's limit on watched descriptors, or memory
                self._accept_failed("cannot watch a connection", exc)
                self._close(conn)
                continue
            self._conn_of[conn.fd] = conn
            self._serve_safely(conn)

    # --- the pump's side: no waiting -------------------------------------------------

    def _wait_for(self, pending: Pending, conn: _Conn) -> None:
        """Wake the pump for `conn` when `pending`'s descriptor is readable."""
        assert self._ep is not None
        fd = pending.fd
        self._waiting_on[fd] = conn
        known = self._owners.get(fd)
        if known is None or known() is not pending.owner:  # new to the set: a reply
            _watch(self._ep, fd)                           # already in is reported at once
            self._owners[fd] = weakref.ref(pending.owner)

    def _serve_ready(self, conn: _Conn, drained: bool = False) -> None:
        """Read, parse and answer what `conn` has, until it must wait: then the
        pump has it (it `waits`), or a task has it. `drained`: the socket's
        bytes were read before a response went out: unless the connection was
        `stirred` since, nothing is there, and no read is tried."""
        parser = conn.parser
        if (drained and not (conn.stirred or conn.hung_up or self.closing)
                and conn.error is None and parser.quiet() and parser.requests_begun == conn.seen):
            # A response went out and nothing else is there: the loop below, in brief.
            conn.idle = True
            conn.deadline = conn.idle_deadline
            conn.waits = True
            return
        limits = self.limits
        sock = conn.sock
        while True:
            request = parser.next_request()
            if request is None:
                if conn.error is not None:  # after answering the requests before it
                    error = conn.error
                    code = "RequestTooLarge" if error.status == 413 else "BadRequest"
                    self._spawn(conn, functools.partial(self._say, conn, error.status, code,
                                                        error.message))
                    return
                if parser.closed or (self.closing and not parser.in_request):
                    self._close(conn)
                    return
                # A 100 Continue goes out after the answers to the requests before its
                # own, and only while its request still waits for the body.
                interim = parser.data_to_send()
                if (interim and conn.error is None and parser.in_request
                        and not self._send_now(conn, interim)):
                    return
                if parser.requests_begun != conn.seen:
                    conn.seen = parser.requests_begun
                    conn.header_deadline = self._now() + limits.header_timeout_s
                conn.idle = not parser.in_request
                if conn.idle:
                    conn.deadline = conn.idle_deadline
                elif not parser.headers_done:
                    conn.deadline = conn.header_deadline  # from the request's first byte
                else:
                    conn.deadline = self._now() + limits.body_timeout_s
                if drained and not (conn.stirred or conn.hung_up):
                    conn.waits = True  # what comes next comes with an event
                    return
                conn.stirred = False
                take = self.take
                try:
                    if take is not None and parser.takes_whole():
                        got = take(conn.fd, limits.max_header_bytes)
                        if not isinstance(got, bytes):  # a request, taken: as below
                            parser.took_whole()
                            conn.seen = parser.requests_begun  # whole: no header deadline
                            self._begun(conn)
                            if not self._answered_fast(conn, _TAKEN, got):
                                return
                            drained = True
                            continue
                        data = got
                    else:
                        data = sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    conn.waits = True
                    return
                except OSError:
                    self._close(conn)
                    return
                if len(data) == RECEIVE_BYTES:
                    conn.stirred = True  # more may be in, and no event says so again
                try:
                    parser.receive_data(data)
                except ProtocolError as exc:
                    conn.error = exc
                continue
            self._begun(conn)
            answer: Response | Pending | None = None
            if self.fast is not None:
                try:
                    answer = self.fast(request)
                except Exception as exc:
                    answer = _bug(exc)
            if answer is None:
                self._spawn(conn, functools.partial(self._answer, conn, request,
                                                    functools.partial(self.app, request)))
                return
            if not self._answered_fast(conn, request, answer):
                return
            drained = True

    def _begun(self, conn: _Conn) -> None:
        """A request of `conn` is being answered: in flight, and no deadline (the
        app's time is not the client's)."""
        conn.idle = False
        conn.deadline = math.inf
        self._in_flight += 1

    def _ended(self, request: Request) -> bool:
        """A request is answered: counted out; whether its connection stays."""
        self._in_flight -= 1
        self.requests += 1
        return request.keep_alive and not self.closing

    def _answered_fast(self, conn: _Conn, request: Request, answer: Response | Pending) -> bool:
        """A request the fast path took: answer it now, or wait for it; True once
        answered and `conn` may go on."""
        self.fast_requests += 1
        if isinstance(answer, Response):
            return self._respond_now(conn, request, answer)
        conn.pending, conn.request = answer, request
        if answer.waits_first:
            self._wait_for(answer, conn)
            return False
        return self._advance(conn)

    def _serve_safely(self, conn: _Conn) -> None:
        try:
            self._serve_ready(conn)
        except Exception:  # a bug of ours: this connection goes, the server stays
            traceback.print_exc()
            self._close(conn)

    def _advance(self, conn: _Conn) -> bool:
        """Step the fast-path request in flight; True once answered and `conn` may go on."""
        pending, request = conn.pending, conn.request
        assert pending is not None and request is not None
        try:
            out = pending.step()
        except Exception as exc:
            out = _bug(exc)
        if out is None:
            self._wait_for(pending, conn)
            return False
        conn.pending = conn.request = None
        if isinstance(out, bytes):  # encoded already, for a keep-alive connection
            if request.keep_alive and not self.closing:
                # _send_encoded's _ended, _send_response and _send_some in line for
                # what nearly every warm call does (this runs per call). An error,
                # or a full socket, is left to them.
                try:
                    sent = conn.sock.send(out)
                except OSError:
                    return self._send_encoded(conn, request, out)
                self._in_flight -= 1
                self.requests += 1
                if sent < len(out):  # a task sends the rest
                    self._spawn(conn, functools.partial(self._write, conn, out[sent:], True))
                    return False
                return self._responded(conn, True)
            return self._send_encoded(conn, request, out)
        if isinstance(out, Response):
            return self._respond_now(conn, request, out)
        self._spawn(conn, functools.partial(self._answer, conn, request, out))
        return False

    def _encoded(self, request: Request, response: Response) -> tuple[bytes, bool]:
        """A request answered: its response's bytes, and whether the connection stays."""
        keep_alive = self._ended(request)
        head = request.method == b"HEAD"
        try:
            data = encode_response(response.status, response.headers, response.body,
                                   keep_alive, head=head)
        except TypeError as exc:  # a header or body that is not bytes: the app's bug
            response = _bug(exc)
            data = encode_response(response.status, response.headers, response.body,
                                   keep_alive, head=head)
        return data, keep_alive

    def _respond_now(self, conn: _Conn, request: Request, response: Response) -> bool:
        """Send the response if the socket takes it all at once (a task sends the
        rest otherwise); True when `conn` may go on with its next request."""
        data, keep_alive = self._encoded(request, response)
        return self._send_response(conn, data, keep_alive)

    def _send_response(self, conn: _Conn, data: bytes, keep_alive: bool) -> bool:
        sent = self._send_some(conn, data)
        if sent < 0:
            return False
        if sent < len(data):
            self._spawn(conn, functools.partial(self._write, conn, data[sent:], keep_alive))
            return False
        return self._responded(conn, keep_alive)

    def _send_encoded(self, conn: _Conn, request: Request, data: bytes) -> bool:
        """`_respond_now` for a response the Pending encoded for keep-alive."""
        keep_alive = self._ended(request)
        if not keep_alive:
            end = data.index(b"\r\n") + 2  # after the status line
            data = data[:end] + b"connection: close\r\n" + data[end:]
        return self._send_response(conn, data, keep_alive)

    def _send_some(self, conn: _Conn, data: bytes) -> int:
        """What the socket takes of `data` now; -1 when the peer went away (`conn` is
        closed then: a call it started ran to its end all the same)."""
        try:
            return conn.sock.send(data)
        except BlockingIOError:
            return 0
        except OSError:
            self._close(conn)
            return -1

    def _responded(self, conn: _Conn, keep_alive: bool) -> bool:
        conn.writing = False
        if not keep_alive:
            self._close(conn)
            return False
        now = self._now()
        conn.idle_deadline = now + self.limits.keepalive_timeout_s
        if conn.parser.in_request:  # the next request began meanwhile: its time starts now
            conn.seen = conn.parser.requests_begun
            conn.header_deadline = now + self.limits.header_timeout_s
        return True

    def _send_now(self, conn: _Conn, data: bytes) -> bool:
        """Interim bytes (100 Continue); False when a task finishes sending them."""
        sent = self._send_some(conn, data)
        if sent < 0:
            return False
        if sent < len(data):
            self._spawn(conn, functools.partial(self._send_rest, conn, data[sent:]))
            return False
        return True

    def _say_now(self, conn: _Conn, status: int, code: str, message: str) -> None:
        """An error response, if the socket takes it at once (the connection then closes)."""
        with contextlib.suppress(OSError):
            conn.sock.send(_error_bytes(status, code, message))

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.pending is not None:  # its call runs to its end all the same
            pending, conn.pending = conn.pending, None
            if self._waiting_on.get(pending.fd) is conn:
                del self._waiting_on[pending.fd]
            self._in_flight -= 1
            pending.abandon()
        if self._conn_of.get(conn.fd) is conn:
            del self._conn_of[conn.fd]
        if self._ep is not None:
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(conn.fd)
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(conn.sock)
        conn.sock.close()
        self._slots.release()
        self._conns.discard(conn)
        if not self._conns:
            self._no_conns.set()

    # --- tasks: when something must wait -------------------------------------------------

    def _spawn(self, conn: _Conn, work: Callable[[], Awaitable[bool]]) -> None:
        assert self._nursery is not None
        conn.task = True
        conn.scope = trio.CancelScope()
        self._nursery.start_soon(self._hold, conn, work)

    async def _hold(self, conn: _Conn, work: Callable[[], Awaitable[bool]]) -> None:
        """Run `work` for `conn`; then the pump has it again (True) or it closes."""
        go_on = False
        try:
            with conn.scope:
                go_on = await work()
            if conn.timed_out and not conn.idle and not conn.writing:
                await self._say(conn, 408, "RequestTimeout", "the request did not arrive in time")
                go_on = False
        except OSError:
            go_on = False  # the peer went away; an invocation it started still ran to its end
        finally:
            conn.task = False
            if not go_on or conn.timed_out:
                self._close(conn)
        if not conn.closed:
            self._serve_safely(conn)

    async def _answer(self, conn: _Conn, request: Request,
                      respond: Callable[[], Awaitable[Response]]) -> bool:
        """The App's answer to `request` (or a fast-path request's rest), sent."""
        try:
            response = await respond()
        except Exception as exc:  # the app's bug: this request fails, not the server
            response = _bug(exc)
        except BaseException:
            self._in_flight -= 1
            raise
        data, keep_alive = self._encoded(request, response)
        return await self._write(conn, data, keep_alive)

    async def _write(self, conn: _Conn, data: bytes, keep_alive: bool) -> bool:
        conn.writing = True  # a client that does not read is timed out, not answered
        conn.deadline = self._now() + self.limits.body_timeout_s
        await send_all(conn.sock, data)
        return self._responded(conn, keep_alive)

    async def _send_rest(self, conn: _Conn, data: bytes) -> bool:
        await send_all(conn.sock, data)
        return True

    async def _say(self, conn: _Conn, status: int, code: str, message: str) -> bool:
        """An error response, then the connection closes."""
        with contextlib.suppress(OSError), trio.move_on_after(5):
            await send_all(conn.sock, _error_bytes(status, code, message))
        return False


_EDGE_READ: Final = select.EPOLLIN | select.EPOLLET
_HUNG_UP: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


def _watch(ep: select.epoll, fd: int, events: int = _EDGE_READ) -> None:
    """`fd` in the set, edge-triggered, until it is closed."""
    try:
        ep.register(fd, events)
    except FileExistsError:  # the same file under the same number, still in the set
        ep.modify(fd, events)


def _bug(exc: Exception) -> Response:
    traceback.print_exc()
    return error_response(500, "InternalError", f"{type(exc).__name__}: {exc}")


def _error_bytes(status: int, code: str, message: str) -> bytes:
    response = error_response(status, code, message)
    if status == 413:
        # Refused before any app saw the request: say it in Lambda's words too,
        # so that boto3 raises RequestTooLargeException (the body's `message`
        # is what botocore reads).
        response.headers.append((b"x-amzn-errortype", b"RequestTooLargeException"))
    return encode_response(status, response.headers, response.body, keep_alive=False)


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
