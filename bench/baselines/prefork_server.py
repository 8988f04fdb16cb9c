"""Baseline: a pre-fork pool of multiprocessing forkserver workers behind a trio front end.

Isolation without zygotes per function or cgroups: `--workers N` (default
os.cpu_count()) long-lived processes, started through
`multiprocessing.get_context("forkserver")`, each of which imports the handler
once at start and then runs one invocation at a time (prefork_worker.py).
Requests wait for an idle worker when all are busy (first come, first
served). The front end is one trio process parsing HTTP/1.1 with httptools,
keep-alive, and talks to each worker over its own socketpair without
blocking the loop (non-blocking sends, `trio.lowlevel.wait_readable`).

    python bench/baselines/prefork_server.py --port 0 --code-dir DIR --handler module.function

What it does not have, against fastfaas: no zygote per function (every
worker imported the handler itself), no fork per invocation, no cgroups,
no scaling (the pool is fixed). A worker that dies mid-invocation is
replaced and its request answered 502; one that runs past --timeout-s is
killed and replaced, and its request gets a `Timeout` function error.
No handicaps: plain non-blocking sockets on the hot path (not trio's stream
wrappers), one write per response, the last idle worker is taken first.
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any, Final

import _baseline
import httptools
import prefork_worker
import trio
from _baseline import Outcome, platform_error
from prefork_worker import REPLY, REQUEST

RECEIVE_BYTES: Final = 256 * 1024
INIT_TIMEOUT_S: Final = 10.0  # fastfaas's init_timeout_s
MAX_HEADER_BYTES: Final = 64 * 1024


# --- HTTP/1.1, sans-IO ---------------------------------------------------------


class HttpError(Exception):
    """The client broke the protocol or a limit: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Request:
    __slots__ = ("body", "keep_alive", "method", "path", "t0")

    def __init__(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.keep_alive = keep_alive
        self.t0 = time.perf_counter_ns()  # complete: the server's time starts


class HttpConnection:
    """The server's half of one connection: bytes in, whole requests out."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._ready: collections.deque[Request] = collections.deque()
        self._url = b""
        self._body: list[bytes] = []
        self._size = 0
        self.closed = False

    def receive_data(self, data: bytes) -> None:
        """Feed bytes (b"" at EOF). Raises HttpError; the connection is then unusable."""
        if not data:
            self.closed = True
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.closed = True
            if isinstance(exc.__context__, HttpError):
                raise exc.__context__ from None
            raise HttpError(400, f"malformed request: {exc}") from None
        except httptools.HttpParserUpgrade:
            self.closed = True
            raise HttpError(400, "protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            self.closed = True
            raise HttpError(400, f"malformed request: {exc}") from None

    def next_request(self) -> Request | None:
        return self._ready.popleft() if self._ready else None

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEADER_BYTES:
            raise HttpError(431, "the request line is too long")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > _baseline.MAX_EVENT_BYTES:
            raise HttpError(413, f"the event exceeds {_baseline.MAX_EVENT_BYTES} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._ready.append(Request(self._parser.get_method(), self._url.partition(b"?")[0],
                                   b"".join(self._body), self._parser.should_keep_alive()))


_ERROR_CODES: Final = {413: "RequestTooLarge", 431: "RequestHeaderFieldsTooLarge"}
_STATUS_LINES: Final = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode())
                        for s in HTTPStatus}


def encode_response(outcome: Outcome, t0: int, keep_alive: bool) -> bytes:
    parts = [_STATUS_LINES[outcome.status]]
    parts += [b"%s: %s\r\n" % header for header in _baseline.response_headers(outcome, t0)]
    parts.append(b"content-length: %d\r\n" % len(outcome.body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += [b"\r\n", outcome.body]
    return b"".join(parts)


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Send everything; waits in trio only when the socket buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)


# --- the pool --------------------------------------------------------------------


class InitError(Exception):
    """A worker could not import the handler."""


class Worker:
    """The front end's end of one worker: its process and socket, and a reply buffer."""

    __slots__ = ("_buf", "process", "sock")

    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self._buf = bytearray()

    async def call(self, event: bytes) -> tuple[int, int, bytes] | None:
        """Send one event; (kind, duration_us, payload), or None if the worker died."""
        try:
            await send_all(self.sock, REQUEST.pack(len(event)) + event)
        except OSError:
            return None
        return await self.wait_reply()

    async def wait_reply(self) -> tuple[int, int, bytes] | None:
        while (frame := self._take_frame()) is None:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                return None
            if not data:
                return None
            self._buf += data
        return frame

    def wait_reply_blocking(self, timeout_s: float) -> tuple[int, int, bytes] | None:
        """wait_reply for start-up, before trio runs. Raises TimeoutError."""
        self.sock.settimeout(timeout_s)
        try:
            while (frame := self._take_frame()) is None:
                data = self.sock.recv(RECEIVE_BYTES)
                if not data:
                    return None
                self._buf += data
            return frame
        finally:
            self.sock.setblocking(False)

    def _take_frame(self) -> tuple[int, int, bytes] | None:
        buf = self._buf
        if len(buf) < REPLY.size:
            return None
        size, kind, duration_us = REPLY.unpack_from(buf)
        end = REPLY.size + size
        if len(buf) < end:
            return None
        payload = bytes(buf[REPLY.size:end])
        del buf[:end]
        return kind, duration_us, payload

    def stop(self) -> None:
        """Kill the process (if alive) and close the socket. Reap with process.join()."""
        self.process.kill()
        with contextlib.suppress(RuntimeError):  # trio is not running
            trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class Pool:
    """A fixed number of workers; `invoke` takes the last idle one or waits its turn."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.size: int = args.workers or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("forkserver")
        self._workers: set[Worker] = set()  # every one started and not yet reaped
        self._idle: list[Worker] = []
        self._slots = trio.Semaphore(0)  # == len(self._idle), FIFO for the waiters
        self._nursery: trio.Nursery | None = None
        self._stop: trio.CancelScope | None = None
        self.failure: str | None = None  # why the server stopped, if the pool made it
        self.closing = False  # no more replacements: close() reaps what is left
        self.invocations = 0
        self.replaced = 0

    def statistics(self) -> dict[str, int]:
        return {"workers": len(self._workers), "idle": len(self._idle),
                "waiting": self._slots.statistics().tasks_waiting,
                "invocations": self.invocations, "replaced": self.replaced}

    def start(self) -> None:
        """Start every worker and wait until each imported the handler (blocking).

        Raises InitError; the caller still calls close().
        """
        starting = [self._start_worker() for _ in range(self.size)]
        for worker in starting:
            try:
                self._check_ready(worker.wait_reply_blocking(INIT_TIMEOUT_S))
            except TimeoutError:
                raise InitError(f"a worker did not load the handler within {INIT_TIMEOUT_S} s"
                                ) from None
            self._idle.append(worker)

    async def run(self, stop: trio.CancelScope, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the replacements' tasks until cancelled; cancel `stop` if a worker
        cannot be replaced (the handler's import fails now)."""
        self._stop = stop
        self._slots = trio.Semaphore(len(self._idle))
        async with trio.open_nursery() as self._nursery:
            task_status.started()
            await trio.sleep_forever()

    async def invoke(self, event: bytes) -> Outcome:
        await self._slots.acquire()
        worker = self._idle.pop()
        self.invocations += 1
        healthy = False
        try:
            with trio.move_on_after(self.args.timeout_s):
                reply = await worker.call(event)
                healthy = reply is not None
                if reply is None:
                    return platform_error(502, "Crashed",
                                          "the worker died during the invocation; it is replaced")
                kind, duration_us, payload = reply
                if kind == prefork_worker.BAD_REQUEST:
                    return Outcome(400, payload)
                error = None if kind == prefork_worker.OK else "Unhandled"
                return Outcome(200, payload, error, duration_us)
            return _baseline.timeout_error(self.args.timeout_s)
        finally:
            if healthy:
                self._idle.append(worker)
                self._slots.release()
            else:
                worker.stop()
                if not self.closing:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._replace, worker)

    async def _replace(self, worker: Worker) -> None:
        await trio.to_thread.run_sync(worker.process.join)
        self._workers.discard(worker)
        print(f"prefork: worker pid {worker.process.pid} exited with status "
              f"{worker.process.exitcode}; starting a replacement", file=sys.stderr)
        try:
            new = await trio.to_thread.run_sync(self._start_worker)
            with trio.fail_after(INIT_TIMEOUT_S):
                self._check_ready(await new.wait_reply())
        except (InitError, trio.TooSlowError, OSError) as exc:
            self.failure = f"cannot replace a worker: {exc!r}"
            print(f"prefork: {self.failure}; stopping", file=sys.stderr)
            self.closing = True
            assert self._stop is not None
            self._stop.cancel()
            return
        self.replaced += 1
        self._idle.append(new)
        self._slots.release()

    def _start_worker(self) -> Worker:
        ours, theirs = socket.socketpair()
        process = self._ctx.Process(
            target=prefork_worker.serve, daemon=True,
            args=(theirs, self.args.code_dir, self.args.handler, self.args.function_name,
                  self.args.timeout_s))
        try:
            with _main_without_file():
                process.start()
        finally:
            theirs.close()
        ours.setblocking(False)
        worker = Worker(process, ours)
        self._workers.add(worker)
        return worker

    @staticmethod
    def _check_ready(reply: tuple[int, int, bytes] | None) -> None:
        if reply is None:
            raise InitError("a worker exited before it was ready")
        kind, _, payload = reply
        if kind == prefork_worker.INIT_ERROR:
            error = json.loads(payload)
            raise InitError(f"a worker could not load the handler: "
                            f"{error['errorType']}: {error['errorMessage']}")

    def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker, the forkserver and the resource tracker; reap them all.

        Idle workers exit at EOF; a worker still busy after grace_s is killed.
        """
        for worker in self._workers:
            with contextlib.suppress(RuntimeError):
                trio.lowlevel.notify_closing(worker.sock)
            worker.sock.close()
        end = time.monotonic() + grace_s
        for worker in self._workers:
            worker.process.join(max(0.0, end - time.monotonic()))
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
        self._workers.clear()
        # Private, but the only way to wait for them rather than leave them to
        # notice our exit: both exist since 3.8.
        multiprocessing.forkserver._forkserver._stop()  # type: ignore[attr-defined]
        multiprocessing.resource_tracker._resource_tracker._stop()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _main_without_file() -> Iterator[None]:
    """Keep multiprocessing from re-running this script (and importing trio) in each worker.

    A child started through the forkserver re-imports the parent's __main__
    from its path unless the forkserver holds it, which CPython 3.11's never
    does (bench/README.md, forkserver baseline). The workers need only
    prefork_worker, which they import when unpickling their target.
    """
    main = sys.modules["__main__"]
    saved = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if saved is not None:
            main.__file__ = saved


# --- the server ------------------------------------------------------------------


async def respond(request: Request, pool: Pool) -> Outcome:
    if request.path != b"/invoke":
        return platform_error(404, "NotFound", "the route is POST /invoke")
    if request.method != b"POST":
        return platform_error(405, "MethodNotAllowed", "use POST")
    return await pool.invoke(request.body)


async def serve_connection(sock: socket.socket, pool: Pool) -> None:
    conn = HttpConnection()
    error: HttpError | None = None
    try:
        while True:
            request = conn.next_request()
            if request is None:
                if error is not None:  # after answering the requests before it
                    code = _ERROR_CODES.get(error.status, "BadRequest")
                    outcome = platform_error(error.status, code, str(error))
                    await send_all(sock, encode_response(outcome, time.perf_counter_ns(),
                                                         keep_alive=False))
                    return
                if conn.closed:
                    return
                try:
                    data = sock.recv(RECEIVE_BYTES)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                    continue
                try:
                    conn.receive_data(data)
                except HttpError as exc:
                    error = exc
                continue
            outcome = await respond(request, pool)
            await send_all(sock, encode_response(outcome, request.t0, request.keep_alive))
            if not request.keep_alive:
                return
    except OSError:
        pass  # the client went away
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def accept(listener: socket.socket, pool: Pool, nursery: trio.Nursery) -> None:
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:  # EMFILE and the like: wait for a connection to end
            print(f"prefork: accept failed: {exc}", file=sys.stderr)
            await trio.sleep(0.1)
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        nursery.start_soon(serve_connection, sock, pool)


async def serve(listener: socket.socket, pool: Pool, stdout: int) -> None:
    """Until SIGTERM or SIGINT: connections end first, then the pool's tasks."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            conns_scope = trio.CancelScope()
            await nursery.start(pool.run, conns_scope)
            with conns_scope:
                async with trio.open_nursery() as conns:
                    conns.start_soon(accept, listener, pool, conns)
                    _baseline.announce(stdout, listener.getsockname()[1])
                    async for _ in signals:
                        break
                    pool.closing = True
                    conns.cancel_scope.cancel()
            trio.lowlevel.notify_closing(listener)
            nursery.cancel_scope.cancel()


def main() -> int:
    args = _baseline.parse_args(
        "Pre-fork pool baseline: forkserver workers behind a trio front end.",
        "worker processes (default: os.cpu_count())")
    stdout = _baseline.hold_stdout()
    listener = socket.create_server(("127.0.0.1", args.port))
    listener.setblocking(False)
    pool = Pool(args)
    try:
        pool.start()
        trio.run(serve, listener, pool, stdout)
    except InitError as exc:
        print(f"prefork: {exc}", file=sys.stderr)
        return 1
    finally:
        listener.close()
        stats = pool.statistics()
        pool.close()
        print(f"prefork: stopped; {stats}", file=sys.stderr)
    return 1 if pool.failure else 0


if __name__ == "__main__":
    sys.exit(main())
