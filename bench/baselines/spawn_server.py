"""Baseline: a fresh python3 for every invocation, behind a threading stdlib server.

What simple local function emulators do: an HTTP front end (here the
standard library's ThreadingHTTPServer, a thread per connection) that, for
each invocation, starts `sys.executable -c RUNNER ...`, writes the event to
its stdin and reads the result from its stdout; the child imports the handler
module, calls it once and exits. Nothing is reused or started ahead.

    python bench/baselines/spawn_server.py --port 0 --code-dir DIR --handler module.function

No handicaps: the child is the interpreter a user has (the venv's, with its
site-packages on the path, no `-I`/`-S`, no extra flags), the front end answers
with TCP_NODELAY and no access log, and the JSON decode of the event in the
front end (for the 400) costs microseconds against the child's tens of ms.
The front end waits for the child to exit before answering, as
`subprocess.run` does. `--workers N` caps the children running at once
(default: no cap, one per request in flight, as emulators do). A child running
past --timeout-s is killed and the answer is a `Timeout` function error; a
child that exits without a result is a 502.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import _baseline
from _baseline import Outcome, platform_error

# The whole program of each child: a small bootstrap, as an emulator's. The
# result goes to the original stdout; the handler's own prints to stderr. The
# first line of the result is "<kind> <duration_us>": kind is ok, Unhandled or
# InitError (the import failed).
RUNNER = r"""
import json, os, sys, time
code_dir, spec, function_name, request_id, deadline = sys.argv[1:]
result = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)

class Context:
    __slots__ = ("_deadline", "aws_request_id", "function_name")
    def __init__(self):
        self.function_name = function_name
        self.aws_request_id = request_id
        self._deadline = float(deadline)
    def get_remaining_time_in_millis(self):
        return max(0, int((self._deadline - time.monotonic()) * 1000))

def error_body(exc):
    import traceback
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc),
                       "stackTrace": traceback.format_tb(tb)}).encode()

def reply(kind, duration_us, payload):
    with result:
        result.write(b"%s %d\n" % (kind, duration_us) + payload)

data = sys.stdin.buffer.read()
event = json.loads(data) if data else {}
sys.path.insert(0, code_dir)
module_name, _, attr = spec.rpartition(".")
try:
    import importlib
    handler = getattr(importlib.import_module(module_name), attr)
except Exception as exc:
    reply(b"InitError", -1, error_body(exc))
else:
    code = getattr(handler, "__code__", None)
    bound = 1 if getattr(handler, "__self__", None) is not None else 0
    two_args = code is None or bool(code.co_flags & 4) or code.co_argcount - bound >= 2
    t0 = time.perf_counter_ns()
    try:
        value = handler(event, Context()) if two_args else handler(event)
        duration_us = (time.perf_counter_ns() - t0) // 1000
        payload = json.dumps(value, separators=(",", ":")).encode()
    except Exception as exc:
        reply(b"Unhandled", (time.perf_counter_ns() - t0) // 1000, error_body(exc))
    else:
        reply(b"ok", duration_us, payload)
"""


class SpawnServer(ThreadingHTTPServer):
    """Starts a child per invocation; `close_children()` kills and reaps those running."""

    daemon_threads = True

    def __init__(self, port: int, args: Any) -> None:
        super().__init__(("127.0.0.1", port), InvokeHandler)
        self.args = args
        self.argv = [sys.executable, "-c", RUNNER, args.code_dir, args.handler,
                     args.function_name]
        self.slots = (threading.BoundedSemaphore(args.workers) if args.workers
                      else contextlib.nullcontext())
        self._lock = threading.Condition()
        self._children: set[subprocess.Popen[bytes]] = set()
        self._starting = 0
        self._closing = False

    def spawn(self, body: bytes) -> Outcome:
        """Run the handler on `body` (valid JSON) in a fresh interpreter."""
        timeout_s = self.args.timeout_s
        with self.slots:
            with self._lock:
                if self._closing:
                    return platform_error(503, "ServiceUnavailable", "the server is stopping")
                self._starting += 1
            try:
                deadline = time.monotonic() + timeout_s
                proc = subprocess.Popen([*self.argv, str(uuid.uuid4()), repr(deadline)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            except OSError as exc:  # EAGAIN, ENOMEM: out of processes
                return platform_error(503, "ServiceUnavailable", f"cannot start a child: {exc}")
            finally:
                with self._lock:
                    self._starting -= 1
                    self._lock.notify_all()
            try:
                with self._lock:
                    self._children.add(proc)
                    if self._closing:  # close_children() may have missed it
                        proc.kill()
                try:
                    out, _ = proc.communicate(body, timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
                    return _baseline.timeout_error(timeout_s)
            finally:
                with self._lock:
                    self._children.discard(proc)
                    self._lock.notify_all()
        head, newline, payload = out.partition(b"\n")
        kind, _, duration = head.partition(b" ")
        if proc.returncode != 0 or not newline or kind not in (b"ok", b"Unhandled", b"InitError"):
            return platform_error(
                502, "Crashed", f"the child exited with status {proc.returncode} without a result")
        return Outcome(200, payload, None if kind == b"ok" else kind.decode(), int(duration))

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client went away: not news
            super().handle_error(request, client_address)

    def close_children(self, grace_s: float = 5.0) -> None:
        """Start no more children; kill those running and wait until they are reaped."""
        end = time.monotonic() + grace_s
        with self._lock:
            self._closing = True
            while self._children or self._starting:
                for proc in self._children:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(min(left, 0.05))


class InvokeHandler(BaseHTTPRequestHandler):
    """POST /invoke; HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: SpawnServer

    def do_POST(self) -> None:
        t0 = time.perf_counter_ns()
        if self.path.partition("?")[0] != "/invoke":
            return self._send(platform_error(404, "NotFound", "the route is POST /invoke"), t0)
        if self.headers.get("transfer-encoding"):
            self.close_connection = True
            return self._send(platform_error(411, "LengthRequired",
                                             "send the event with a Content-Length"), t0)
        try:
            length = int(self.headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _baseline.MAX_EVENT_BYTES:
            self.close_connection = True
            status, code = (400, "InvalidRequest") if length < 0 else (413, "RequestTooLarge")
            self._discard(length if length <= 16 * _baseline.MAX_EVENT_BYTES else 0)
            return self._send(platform_error(
                status, code, f"Content-Length must be 0 to {_baseline.MAX_EVENT_BYTES}"), t0)
        body = self.rfile.read(length)
        t0 = time.perf_counter_ns()  # the request is in, as the other baselines count it
        try:
            json.loads(body or b"{}")
        except ValueError as exc:
            return self._send(platform_error(400, "InvalidRequest",
                                             f"the event is not valid JSON: {exc}"), t0)
        self._send(self.server.spawn(body), t0)

    def _discard(self, size: int) -> None:
        """Read a refused body, so that the client sees the answer rather than a reset."""
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                return
            size -= len(chunk)

    def do_GET(self) -> None:
        t0 = time.perf_counter_ns()
        if self.path.partition("?")[0] == "/invoke":
            return self._send(platform_error(405, "MethodNotAllowed", "use POST"), t0)
        self._send(platform_error(404, "NotFound", "the route is POST /invoke"), t0)

    do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def _send(self, outcome: Outcome, t0: int) -> None:
        self.send_response(outcome.status)
        for name, value in _baseline.response_headers(outcome, t0):
            self.send_header(name.decode(), value.decode())
        self.send_header("content-length", str(len(outcome.body)))
        if self.close_connection:
            self.send_header("connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(outcome.body)

    def version_string(self) -> str:
        return "spawn-baseline"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log


def main() -> int:
    args = _baseline.parse_args(
        "Spawn-per-request baseline: a fresh python3 for every invocation.",
        "children running at once (default: no cap)")
    stdout = _baseline.hold_stdout()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())  # only flag it: the main thread stops
    server = SpawnServer(args.port, args)  # bound and listening
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="accept")
    serving.start()
    _baseline.announce(stdout, server.server_address[1])
    while not stop.wait(3600):
        pass
    server.shutdown()  # the accept loop ends
    server.server_close()
    server.close_children()
    serving.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
