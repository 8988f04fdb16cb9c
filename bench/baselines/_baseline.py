"""What the baseline servers share: the command line, the handler, one invocation.

spawn_server.py, prefork_server.py and uvicorn_server.py serve one handler the
way a user would without fastfaas, behind one contract (README.md here), so
that the load generator drives them all alike. Standard library only, and
nothing heavy at import: the prefork workers import this module too.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any, Final, NamedTuple

MAX_EVENT_BYTES: Final = 6 * 1024 * 1024  # Lambda's (and fastfaas's) synchronous limit
DEFAULT_TIMEOUT_S: Final = 3.0  # fastfaas's default timeout_s
JSON: Final = b"application/json"

Handler = Callable[..., Any]


class Outcome(NamedTuple):
    """One request's answer, before HTTP framing."""

    status: int
    body: bytes
    error: str | None = None  # X-Fastfaas-Function-Error: Unhandled, Timeout, InitError
    duration_us: int = -1  # the handler's own time; -1 when no handler ran


def parse_args(description: str, workers_help: str) -> Any:
    """The command line every baseline takes (argparse.Namespace)."""
    import argparse  # here: the prefork workers never parse a command line

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0,
                        help="port on 127.0.0.1 (0: any free one; the line on stdout says which)")
    parser.add_argument("--code-dir", required=True,
                        help="directory the handler's module is imported from")
    parser.add_argument("--handler", required=True, help="module.function")
    parser.add_argument("--workers", type=int, default=None, help=workers_help)
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                        help="the invocation's deadline, as the context reports it (default 3)")
    args = parser.parse_args()
    if not os.path.isdir(args.code_dir):
        parser.error(f"--code-dir {args.code_dir!r} is not a directory")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    args.code_dir = os.path.abspath(args.code_dir)
    args.function_name = os.path.basename(args.code_dir)
    return args


def hold_stdout() -> int:
    """Keep stdout for the readiness line alone; returns its descriptor.

    Descriptor 1 becomes a copy of stderr for everything else: a handler's
    prints and every child process's output land there, never after the line.
    """
    fd = os.dup(1)  # not inheritable: no child holds the real stdout
    os.dup2(2, 1)
    return fd


def announce(stdout_fd: int, port: int) -> None:
    """The readiness line, written at once. Call it only when accepting works."""
    os.write(stdout_fd, f"listening on http://127.0.0.1:{port}\n".encode())


class Context:
    """The `context` of a two-argument handler: the parts of Lambda's that handlers use."""

    __slots__ = ("_deadline", "aws_request_id", "function_name")

    def __init__(self, function_name: str, request_id: str, deadline: float) -> None:
        self.function_name = function_name
        self.aws_request_id = request_id
        self._deadline = deadline  # time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(code_dir: str, spec: str) -> tuple[Handler, bool]:
    """Import `module.function` from code_dir; also says whether it takes a context.

    Raises:
        ValueError: spec is not `module.function`.
        Exception: whatever the module raises at import; AttributeError if it
            has no such function.
    """
    module_name, sep, attr = spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler {spec!r} is not of the form 'module.function'")
    sys.path.insert(0, code_dir)
    handler = getattr(importlib.import_module(module_name), attr)
    if not callable(handler):
        raise TypeError(f"handler {spec!r} is not callable (it is a {type(handler).__name__})")
    return handler, takes_context(handler)


def takes_context(handler: Handler) -> bool:
    """(event, context) or (event): from the code object, as fastfaas decides it."""
    code = getattr(handler, "__code__", None)
    bound = 1 if getattr(handler, "__self__", None) is not None else 0
    if code is None:  # a callable object
        call = next((k.__dict__["__call__"] for k in type(handler).__mro__
                     if "__call__" in k.__dict__), None)
        code = getattr(call, "__code__", None)
        bound = 1
    if code is None or code.co_flags & 0x04:  # unknown, or *args
        return True
    return bool(code.co_argcount - bound >= 2)


def invoke(handler: Handler, two_args: bool, function_name: str, body: bytes,
           timeout_s: float) -> Outcome:
    """Decode the event (empty: {}), call the handler, encode its result."""
    try:
        event = json.loads(body) if body else {}
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        return platform_error(400, "InvalidRequest", f"the event is not valid JSON: {exc}")
    t0 = time.perf_counter_ns()
    try:
        if two_args:
            deadline = time.monotonic() + timeout_s
            result = handler(event, Context(function_name, str(uuid.uuid4()), deadline))
        else:
            result = handler(event)
    except Exception as exc:
        return Outcome(200, error_body(exc), "Unhandled", (time.perf_counter_ns() - t0) // 1000)
    duration_us = (time.perf_counter_ns() - t0) // 1000
    try:
        payload = json.dumps(result, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:  # not JSON-serializable
        return Outcome(200, error_body(exc), "Unhandled", duration_us)
    return Outcome(200, payload, None, duration_us)


def error_body(exc: BaseException) -> bytes:
    """Lambda's shape for a function error: {errorType, errorMessage, stackTrace}."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    return json.dumps({"errorType": type(exc).__name__, "errorMessage": str(exc),
                       "stackTrace": traceback.format_tb(tb)}).encode()


def platform_error(status: int, code: str, message: str) -> Outcome:
    """Not the function's error: fastfaas's {error, message} with an HTTP status."""
    return Outcome(status, json.dumps({"error": code, "message": message}).encode())


def timeout_error(timeout_s: float) -> Outcome:
    message = f"Task timed out after {timeout_s:.2f} seconds"
    body = json.dumps({"errorType": "Timeout", "errorMessage": message, "stackTrace": []})
    return Outcome(200, body.encode(), "Timeout", int(timeout_s * 1e6))


def response_headers(outcome: Outcome, t0_ns: int) -> list[tuple[bytes, bytes]]:
    """Content type and the X-Fastfaas-* timing headers (not Content-Length).

    X-Fastfaas-Server-Us is the server's whole time for the request from t0_ns
    (when the request was in), as fastfaas reports it.
    """
    headers = [(b"content-type", JSON)]
    if outcome.duration_us >= 0:
        headers.append((b"x-fastfaas-duration-us", b"%d" % outcome.duration_us))
    if outcome.error is not None:
        headers.append((b"x-fastfaas-function-error", outcome.error.encode()))
    headers.append((b"x-fastfaas-server-us", b"%d" % ((time.perf_counter_ns() - t0_ns) // 1000)))
    return headers
