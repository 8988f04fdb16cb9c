"""Baseline: uvicorn serving the handler directly, as a raw ASGI app. No isolation.

The warm-path ceiling: the handler is imported once into the server process
and called in the event loop for each request, with nothing between the
HTTP parser and the function (uvloop, httptools). What a user gives up for
it is everything fastfaas adds: a crash or a leak in the handler is the
server's, one slow invocation stalls every other, nothing enforces
--timeout-s (the context still reports it).

    python bench/baselines/uvicorn_server.py --port 0 --code-dir DIR --handler module.function

No handicaps: no access log, no lifespan, no proxy-headers middleware (no
proxy in front), no Server or Date header (fastfaas sends neither).
`--workers N` (default 1) runs N uvicorn processes accepting on the one
listening socket, as `uvicorn --workers N` does: forked before any event
loop exists, each dies with the first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import _baseline
import uvicorn
from _baseline import Handler, platform_error

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
PR_SET_PDEATHSIG = 1


def make_app(handler: Handler, two_args: bool, function_name: str,
             timeout_s: float) -> Callable[[Message, Receive, Send], Awaitable[None]]:
    async def app(scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off: only HTTP scopes arrive
            raise RuntimeError(f"unsupported ASGI scope {scope['type']!r}")
        chunks = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= _baseline.MAX_EVENT_BYTES:  # past it: read on, keep nothing, answer 413
                chunks.append(chunk)
            more = message.get("more_body", False)
        t0 = time.perf_counter_ns()  # the request is in, as the other baselines count it
        if scope["path"] != "/invoke":
            outcome = platform_error(404, "NotFound", "the route is POST /invoke")
        elif scope["method"] != "POST":
            outcome = platform_error(405, "MethodNotAllowed", "use POST")
        elif size > _baseline.MAX_EVENT_BYTES:
            outcome = platform_error(413, "RequestTooLarge",
                                     f"the event exceeds {_baseline.MAX_EVENT_BYTES} bytes")
        else:
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            outcome = _baseline.invoke(handler, two_args, function_name, body, timeout_s)
        headers = _baseline.response_headers(outcome, t0)
        headers.append((b"content-length", b"%d" % len(outcome.body)))
        await send({"type": "http.response.start", "status": outcome.status, "headers": headers})
        await send({"type": "http.response.body", "body": outcome.body})

    return app


class ReadyServer(uvicorn.Server):
    """A uvicorn Server that writes the readiness line once it accepts."""

    def __init__(self, config: uvicorn.Config, stdout: int | None) -> None:
        super().__init__(config)
        self._stdout = stdout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._stdout is not None and sockets:
            _baseline.announce(self._stdout, sockets[0].getsockname()[1])


def _quiet(signum: int, frame: Any) -> None:
    """Stands in for the default action when uvicorn re-raises the signal it stopped on."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def main() -> int:
    args = _baseline.parse_args(
        "uvicorn baseline: the handler as a raw ASGI app, no isolation.",
        "uvicorn processes sharing the listening socket (default 1)")
    stdout: int | None = _baseline.hold_stdout()  # None in forked workers: one line only
    try:
        handler, two_args = _baseline.load_handler(args.code_dir, args.handler)
    except Exception as exc:
        print(f"uvicorn baseline: cannot import {args.handler!r} from {args.code_dir}: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    app = make_app(handler, two_args, args.function_name, args.timeout_s)
    sock = socket.create_server(("127.0.0.1", args.port))  # bound and listening
    # uvicorn re-raises the signal it stopped on once it is done: a handler
    # of ours (not the default action) turns that into a clean exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _quiet)
    parent = os.getpid()
    children: list[int] = []
    for _ in range((args.workers or 1) - 1):
        pid = os.fork()
        if pid == 0:
            _die_with_parent()
            if os.getppid() != parent:
                os._exit(0)
            children = []
            stdout = None
            break
        children.append(pid)
    config = uvicorn.Config(app, host="127.0.0.1", port=sock.getsockname()[1], loop="uvloop",
                            http="httptools", lifespan="off", access_log=False,
                            log_level="warning", proxy_headers=False, server_header=False,
                            date_header=False)
    server = ReadyServer(config, stdout)
    if os.getpid() != parent:  # a forked worker: the parent's atexit work is not ours
        try:
            server.run(sockets=[sock])
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    try:
        server.run(sockets=[sock])
    finally:
        _stop_children(children)
    return 0


def _stop_children(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM each forked worker and reap it; SIGKILL those still there after grace_s."""
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace_s
    left = set(pids)
    while left:
        for pid in list(left):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                left.discard(pid)
        if left and time.monotonic() > end:
            for pid in left:
                os.kill(pid, signal.SIGKILL)
            for pid in left:
                os.waitpid(pid, 0)
            return
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
