"""The instance: one invocation at a time, reused while warm.

Runs in a process forked from a function zygote by fastfaas._native.spawn,
already in its cgroups, with fds 1 and 2 on a capture memfd. Always ends in
os._exit: the zygote's atexit handlers and buffers are not the instance's.
"""

from __future__ import annotations

import io
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import msgspec

from fastfaas import wire
from fastfaas.wire import Invoke, Result, Warmup

_json_decode = msgspec.json.decode
_json_encode = msgspec.json.encode


class LambdaContext:
    """The `context` argument of a two-argument handler, as on AWS Lambda."""

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
    )

    def __init__(self, info: FunctionInfo, request_id: str, deadline: float) -> None:
        self.function_name = info.function_name
        self.function_version = info.version
        self.memory_limit_in_mb = info.memory_mb
        self.invoked_function_arn = info.arn
        self.log_group_name = f"/aws/lambda/{info.function_name}"
        self.log_stream_name = "fastfaas"
        self.aws_request_id = request_id
        self._deadline = deadline
        self.identity = None  # Cognito identity and mobile client context: none here
        self.client_context = None

    def _next(self, request_id: str, deadline: float) -> LambdaContext:
        """This instance's context, for its next invocation.

        One context per process, made in the zygote before the fork: a new
        object per call costs a forked instance ~50 copy-on-write faults on
        its first call here."""
        self.aws_request_id = request_id
        self._deadline = deadline
        return self

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    def __repr__(self) -> str:
        return f"<LambdaContext {self.function_name}:{self.function_version} {self.aws_request_id}>"


class FunctionInfo:
    __slots__ = ("arn", "context", "function_name", "logging_ready", "memory_mb", "self_usage",
                 "version")

    def __init__(self, function_name: str, version: str, memory_mb: int,
                 self_usage: bool = True, region: str = "us-east-1") -> None:
        self.function_name = function_name
        self.version = version
        self.memory_mb = memory_mb
        # Measure CPU and peak memory in the instance (no cgroups to read them from).
        self.self_usage = self_usage
        self.arn = f"arn:aws:lambda:{region}:000000000000:function:{function_name}"
        self.context = LambdaContext(self, "", 0.0)
        self.logging_ready = False  # Lambda's log handler is on the root logger


def lambda_logging(info: FunctionInfo) -> None:
    """The root logger writes to the invocation's log, as Lambda's Python runtime sets
    it up: `[LEVEL]\tTIME\tREQUEST ID\tmessage`. Only once `logging` is imported (a
    function that never logs does not pay for it): after the function's import,
    and before and after each invocation until then."""
    logging = sys.modules.get("logging")
    if logging is None or info.logging_ready:
        return
    info.logging_ready = True
    context = info.context

    class _RequestId(logging.Filter):  # type: ignore[name-defined,misc]
        def filter(self, record: Any) -> bool:
            record.aws_request_id = context.aws_request_id
            return True

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S"))
    handler.formatter.converter = time.gmtime
    handler.addFilter(_RequestId())
    logging.getLogger().addHandler(handler)


def error_body(exc: BaseException, skip_frames: int = 1) -> tuple[str, str, bytes]:
    """(errorType, errorMessage, Lambda-shaped JSON body) for an exception."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    stack = traceback.format_list(traceback.extract_tb(tb))
    error_type = type(exc).__name__
    message = str(exc)
    body = _json_encode({"errorMessage": message, "errorType": error_type, "stackTrace": stack})
    return error_type, message, body


def unbuffered_stdio() -> None:
    """sys.stdout and sys.stderr as write-through streams straight onto fds 1 and 2.

    Output then reaches the capture as it is written (as on Lambda), and
    taking the log tail needs no flush: flushing the buffered streams cost a
    forked instance ~80 copy-on-write faults on its first call here.
    """
    for fd, name in ((1, "stdout"), (2, "stderr")):
        old = getattr(sys, name, None)
        try:
            if old is not None:
                old.flush()
        except (OSError, ValueError):
            pass
        raw = io.FileIO(fd, "w", closefd=False)
        setattr(sys, name, io.TextIOWrapper(raw, encoding="utf-8",
                                            errors="backslashreplace", write_through=True))
    global _STDIO
    _STDIO = (sys.stdout, sys.stderr)


_STDIO: tuple[Any, Any] = (None, None)


def read_tail(fd: int, end: int) -> bytes:
    """The last LOG_TAIL bytes before offset `end` of a capture file."""
    size = min(end, wire.LOG_TAIL)
    return os.pread(fd, size, end - size) if size > 0 else b""


def _take_log_tail() -> bytes:
    """The last LOG_TAIL bytes written to fds 1-2 since the last call; empties the capture."""
    if (sys.stdout, sys.stderr) != _STDIO:  # the handler swapped in streams of its own
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
    try:
        end = os.lseek(1, 0, os.SEEK_CUR)
        if end <= 0:
            return b""
        tail = read_tail(1, end)
        os.ftruncate(1, 0)
        os.lseek(1, 0, os.SEEK_SET)
        return tail
    except OSError:  # the handler closed or replaced its stdout
        return b""


def _noop(event: Any, context: Any = None) -> Any:
    return event


def serve(
    chan: wire.BlockingChannel,
    handler: Callable[..., Any],
    two_args: bool,
    info: FunctionInfo,
    first: bytes = b"",
) -> None:
    """The instance loop, starting with `first` if given. Never returns."""
    try:
        while True:
            if first:
                data, first = first, b""
            else:
                got = chan.recv()
                if got is None:
                    break
                data, fds = got
                if fds:
                    wire.close_all(fds)
            msg = wire.instance_in.decode(data)
            if isinstance(msg, Warmup):
                # The invocation path once, with a no-op: faults in the pages it touches.
                warm = Invoke("warmup", b'{"warmup":true}', time.monotonic() + 1)
                run_one(warm, _noop, two_args, info)
                chan.send(Result(ok=True))
            else:
                chan.send(run_one(msg, handler, two_args, info))
    except SystemExit as exc:
        _exit_for(exc)
    except BaseException:
        traceback.print_exc()
        _take_log_tail()
        os._exit(70)
    os._exit(0)


def _exit_for(exc: SystemExit) -> None:
    code = exc.code
    _take_log_tail()
    os._exit(code if isinstance(code, int) else (0 if code is None else 1))


def run_one(msg: Invoke, handler: Callable[..., Any], two_args: bool, info: FunctionInfo) -> Result:
    cpu0 = time.process_time_ns() if info.self_usage else 0
    if not info.logging_ready:
        lambda_logging(info)
    t0 = time.perf_counter_ns()
    try:
        event = _json_decode(msg.payload)
        if two_args:
            value = handler(event, info.context._next(msg.request_id, msg.deadline))
        else:
            value = handler(event)
    except SystemExit:
        raise
    except BaseException as exc:
        duration = time.perf_counter_ns() - t0
        error_type, message, body = error_body(exc)
        return Result(
            ok=False,
            payload=body,
            error_type=error_type,
            error_message=message,
            duration_ns=duration,
            cpu_ns=_cpu_since(cpu0, info),
            max_rss_kb=_max_rss_kb(info),
            log_tail=_take_log_tail(),
            request_id=msg.request_id,
        )
    duration = time.perf_counter_ns() - t0
    if not info.logging_ready:
        lambda_logging(info)  # the handler imported logging itself
    try:
        payload = _json_encode(value)
    except Exception as exc:  # TypeError, OverflowError, RecursionError for a cycle...
        message = (
            f"Unable to marshal response: object of type {type(value).__name__} "
            f"is not JSON serializable ({exc})"
        )
        payload = _json_encode(
            {"errorMessage": message, "errorType": "Runtime.MarshalError", "stackTrace": []}
        )
        return Result(
            ok=False,
            payload=payload,
            error_type="Runtime.MarshalError",
            error_message=message,
            duration_ns=duration,
            log_tail=_take_log_tail(),
            request_id=msg.request_id,
        )
    if len(payload) <= wire.MAX_PAYLOAD:
        return Result(True, payload, duration_ns=duration, cpu_ns=_cpu_since(cpu0, info),
                      max_rss_kb=_max_rss_kb(info), log_tail=_take_log_tail(),
                      request_id=msg.request_id)
    return Result(
        ok=False,
        too_large=True,
        error_type="ResultTooLarge",
        error_message=(f"Response payload size ({len(payload)} bytes) exceeded maximum"
                       f" allowed payload size ({wire.MAX_PAYLOAD} bytes)."),
        duration_ns=duration,
        cpu_ns=_cpu_since(cpu0, info),
        max_rss_kb=_max_rss_kb(info),
        log_tail=_take_log_tail(),
        request_id=msg.request_id,
    )


def _cpu_since(cpu0: int, info: FunctionInfo) -> int:
    return time.process_time_ns() - cpu0 if info.self_usage else 0


def _max_rss_kb(info: FunctionInfo) -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if info.self_usage else 0
