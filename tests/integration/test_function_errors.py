"""Function errors and platform errors, end to end over real processes (and cgroups).

DESIGN.md, "Invocation results and errors": a function's own failures come back
in `InvocationResult.error` with a Lambda-shaped payload; platform errors are
raised as fastfaas.errors exceptions. Each test also checks what happens to the
instance afterwards (kept warm, or replaced) and that the next call works.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import trio

import fastfaas
from fastfaas import errors, wire
from fastfaas.runtime.results import InvocationResult

# A generous guard against hangs: an error must come back, not a stuck invocation.
HANG_GUARD_S = 30


def assert_ok(result: InvocationResult) -> None:
    assert result.error is None, f"{result.error} (log: {result.log_tail!r})"


def lambda_body(result: InvocationResult) -> dict[str, object]:
    """The payload of a function error, checked to be Lambda-shaped."""
    body = msgspec.json.decode(result.payload)
    assert isinstance(body, dict), body
    assert set(body) == {"errorType", "errorMessage", "stackTrace"}, body
    assert isinstance(body["stackTrace"], list), body
    assert result.error is not None
    assert body["errorType"] == result.error.error_type
    assert body["errorMessage"] == result.error.error_message
    return body


async def wait_process_gone(pid: int) -> None:
    """Until `pid` has exited (a zombie counts); fails if it is still running after 5 s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


# --- 1. Unhandled ---------------------------------------------------------------

RAISES = """
calls = 0

def handler(event, context):
    global calls
    calls += 1
    print(f"call {calls}")
    if event.get("fail"):
        raise ValueError(f"bad input {event['fail']!r}")
    return {"calls": calls}
"""


async def test_handler_exception_is_unhandled_and_instance_stays_warm(
    runtime: fastfaas.Runtime, make_function
) -> None:
    code = make_function(app=RAISES)
    await runtime.deploy("raises", source=code, handler="app.handler")

    failed = await runtime.invoke("raises", {"fail": "x"})
    assert failed.error is not None
    assert failed.error.kind == errors.UNHANDLED
    assert failed.error.error_type == "ValueError"
    assert failed.error.error_message == "bad input 'x'"
    trace = "".join(failed.error.stack_trace)
    assert failed.error.stack_trace, "an Unhandled error has a stack trace"
    assert "app.py" in trace and "in handler" in trace, trace
    assert "raise ValueError" in trace, trace
    body = lambda_body(failed)
    assert body["errorType"] == "ValueError"
    assert body["stackTrace"] == failed.error.stack_trace
    assert b"call 1" in failed.log_tail
    assert failed.instance_id

    again = await runtime.invoke("raises", {})
    assert_ok(again)
    assert again.instance_id == failed.instance_id, "an Unhandled error keeps the instance"
    assert again.start == "warm"
    assert again.value() == {"calls": 2}, "module globals persist in the warm instance"


# --- 2. Result that is not JSON --------------------------------------------------

UNMARSHALLABLE = """
def handler(event, context):
    if event.get("bad"):
        return {"thing": object()}
    return "fine"
"""


async def test_result_that_is_not_json_is_a_marshal_error(
    runtime: fastfaas.Runtime, make_function
) -> None:
    code = make_function(app=UNMARSHALLABLE)
    await runtime.deploy("marshal", source=code, handler="app.handler")

    result = await runtime.invoke("marshal", {"bad": True})
    assert result.error is not None
    assert result.error.kind == errors.UNHANDLED
    assert result.error.error_type == "Runtime.MarshalError"
    assert "object" in result.error.error_message
    assert "serializ" in result.error.error_message
    lambda_body(result)

    again = await runtime.invoke("marshal", {})
    assert_ok(again)
    assert again.value() == "fine"
    assert again.instance_id == result.instance_id, "a marshal error keeps the instance"


CIRCULAR = """
def handler(event, context):
    if event.get("circular"):
        loop = []
        loop.append(loop)
        return loop
    return "fine"
"""


async def test_circular_result_is_a_marshal_error_and_instance_stays_warm(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy("circular", source=make_function(app=CIRCULAR), handler="app.handler")

    result = await runtime.invoke("circular", {"circular": True})
    assert result.error is not None
    assert (result.error.kind, result.error.error_type) == (
        errors.UNHANDLED,
        "Runtime.MarshalError",
    ), result.error
    lambda_body(result)

    again = await runtime.invoke("circular", {})
    assert_ok(again)
    assert again.instance_id == result.instance_id, "a marshal error keeps the instance"


# --- 3. Timeout ----------------------------------------------------------------------

SLEEPS = """
import os
import time

def handler(event, context):
    if "pid_file" in event:
        with open(event["pid_file"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(30)
    return {"pid": os.getpid()}
"""


async def test_timeout_kills_the_instance_and_the_next_call_gets_a_fresh_one(
    runtime: fastfaas.Runtime, make_function, tmp_path: Path
) -> None:
    code = make_function(app=SLEEPS)
    await runtime.deploy("sleeper", source=code, handler="app.handler", timeout_s=1)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir(mode=0o777)
    pid_file = pid_dir / "sleeper.pid"

    with trio.fail_after(HANG_GUARD_S):
        result = await runtime.invoke("sleeper", {"pid_file": str(pid_file)})
    assert result.error is not None
    assert result.error.kind == errors.TIMEOUT
    assert "timed out" in result.error.error_message
    lambda_body(result)
    # The timed-out instance does not sleep on: it is killed.
    await wait_process_gone(int(pid_file.read_text()))

    again = await runtime.invoke("sleeper", {})
    assert_ok(again)
    assert again.instance_id != result.instance_id
    assert again.value()["pid"] != int(pid_file.read_text())


# --- 4. OutOfMemory --------------------------------------------------------------

HOG = """
def handler(event, context):
    hoard = []
    for _ in range(event.get("mb", 0) // 16):
        hoard.append(b"\\x01" * (16 * 1024 * 1024))  # written, so every page is touched
    return {"held_mb": 16 * len(hoard)}
"""


@pytest.mark.cgroups
async def test_out_of_memory_is_reported_and_isolated(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy(
        "hog", source=make_function(app=HOG), handler="app.handler", memory_mb=128, timeout_s=30
    )
    await runtime.deploy("bystander", source=make_function(app=RAISES), handler="app.handler")
    assert_ok(await runtime.invoke("bystander", {}))

    with trio.fail_after(HANG_GUARD_S):
        result = await runtime.invoke("hog", {"mb": 400})
    assert result.error is not None, result.value()
    assert result.error.kind == errors.OUT_OF_MEMORY, result.error
    assert "memory" in result.error.error_message
    assert "128" in result.error.error_message
    lambda_body(result)

    bystander = await runtime.invoke("bystander", {})
    assert_ok(bystander)
    assert bystander.value() == {"calls": 2}, "the other function's instance was not touched"

    again = await runtime.invoke("hog", {"mb": 32})
    assert_ok(again)
    assert again.value() == {"held_mb": 32}
    assert again.instance_id != result.instance_id


# --- 5. Crashed ------------------------------------------------------------------------

CRASHES = """
import ctypes
import os
import sys

def handler(event, context):
    if event.get("how") == "exit":
        os._exit(3)
    if event.get("how") == "sys-exit":
        sys.exit(3)
    if event.get("how") == "segfault":
        ctypes.string_at(0)
    return "alive"
"""


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("exit", ["exit status 3"]),
        ("sys-exit", ["exit status 3"]),
        ("segfault", ["signal 11", "SIGSEGV"]),
    ],
)
async def test_crash_is_reported_with_its_exit_status(
    runtime: fastfaas.Runtime, make_function, how: str, expected: list[str]
) -> None:
    await runtime.deploy("crasher", source=make_function(app=CRASHES), handler="app.handler")

    with trio.fail_after(HANG_GUARD_S):
        result = await runtime.invoke("crasher", {"how": how})
    assert result.error is not None, result.value()
    assert result.error.kind == errors.CRASHED, result.error
    for text in expected:
        assert text in result.error.error_message, result.error
    lambda_body(result)

    again = await runtime.invoke("crasher", {})
    assert_ok(again)
    assert again.value() == "alive"
    assert again.instance_id != result.instance_id


# --- 6. InitError ------------------------------------------------------------------------

ANY_HANDLER = "def handler(event, context):\n    return 1\n"
INIT_CASES = [
    pytest.param("missing-module", "nosuchmodule.handler", ANY_HANDLER, {}, ["nosuchmodule"]),
    pytest.param("missing-attribute", "app.nothere", ANY_HANDLER, {}, ["nothere", "app"]),
    pytest.param("not-callable", "app.handler", "handler = 42\n", {}, ["not callable"]),
    pytest.param(
        "raises-at-import",
        "app.handler",
        "print('loading settings')\nraise RuntimeError('boom at import')\n" + ANY_HANDLER,
        {},
        ["boom at import"],
    ),
    pytest.param(
        "hangs-at-import",
        "app.handler",
        "import time\ntime.sleep(60)\n" + ANY_HANDLER,
        {"init_timeout_s": 1},
        ["init_timeout_s"],
    ),
    pytest.param(
        "exits-at-import", "app.handler", "import os\nos._exit(4)\n", {}, ["exit status 4"]
    ),
    pytest.param(
        "oom-at-import",
        "app.handler",
        "hoard = [b'\\x01' * (16 * 1024 * 1024) for _ in range(50)]\n" + ANY_HANDLER,
        {},
        ["memory", "128"],
        marks=[
            pytest.mark.cgroups,
        ],
    ),
]


@pytest.mark.parametrize(
    ("case", "handler", "source", "config", "expected"),
    INIT_CASES,
    ids=[p.values[0] for p in INIT_CASES],
)
async def test_init_error_surfaces_at_the_first_invocation(
    runtime: fastfaas.Runtime,
    make_function,
    case: str,
    handler: str,
    source: str,
    config: dict[str, object],
    expected: list[str],
) -> None:
    await runtime.deploy("broken", source=make_function(app=source), handler=handler, **config)

    with trio.fail_after(HANG_GUARD_S):
        result = await runtime.invoke("broken", {})
    assert result.error is not None, result.value()
    assert result.error.kind == errors.INIT_ERROR, result.error
    for text in expected:
        assert text in result.error.error_message, result.error
    lambda_body(result)
    if case == "raises-at-import":
        assert result.error.error_type == "RuntimeError"
        trace = "".join(result.error.stack_trace)
        assert "app.py" in trace and "boom at import" in trace, trace
        assert b"loading settings" in result.log_tail, "the import's output is kept"
    if case == "missing-module":
        # Not cached as a success, not a hang: the next call tries the import again.
        with trio.fail_after(HANG_GUARD_S):
            second = await runtime.invoke("broken", {})
        assert second.error is not None
        assert second.error.kind == errors.INIT_ERROR


# --- 7. ResultTooLarge -----------------------------------------------------------------

LARGE_RESULT = """
def handler(event, context):
    return "x" * event["size"]
"""


async def test_result_over_6_mb_is_too_large_and_instance_stays_warm(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy("big", source=make_function(app=LARGE_RESULT), handler="app.handler")

    # The JSON string is size + 2 bytes: exactly at the limit is allowed.
    at_limit = await runtime.invoke("big", {"size": wire.MAX_PAYLOAD - 2})
    assert_ok(at_limit)
    assert len(at_limit.payload) == wire.MAX_PAYLOAD
    assert at_limit.value() == "x" * (wire.MAX_PAYLOAD - 2)

    result = await runtime.invoke("big", {"size": wire.MAX_PAYLOAD - 1})
    assert result.error is not None
    assert result.error.kind == errors.RESULT_TOO_LARGE, result.error
    assert str(wire.MAX_PAYLOAD) in result.error.error_message
    assert str(wire.MAX_PAYLOAD + 1) in result.error.error_message, "names the size"
    lambda_body(result)
    assert len(result.payload) < 64 * 1024, "the oversized result is not passed on"

    again = await runtime.invoke("big", {"size": 10})
    assert_ok(again)
    assert again.value() == "x" * 10
    assert again.instance_id == result.instance_id, "ResultTooLarge keeps the instance"
    assert at_limit.instance_id == result.instance_id


# --- 8. Large events and results (memfd) -----------------------------------------------

TRANSFORM = """
def handler(event, context):
    blob = event["blob"]
    return {"reversed": blob[::-1], "length": len(blob)}
"""

ECHO = """
def handler(event, context):
    return event
"""


async def test_large_event_and_result_round_trip_intact(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy("rev", source=make_function(app=TRANSFORM), handler="app.handler")
    for size in (100 * 1024, 1024 * 1024, 5 * 1024 * 1024):
        blob = os.urandom(size // 2).hex()
        result = await runtime.invoke("rev", {"blob": blob})
        assert_ok(result)
        assert len(result.payload) > wire.INLINE_MAX
        value = result.value()
        assert value["length"] == len(blob)
        assert value["reversed"] == blob[::-1]


async def test_event_of_exactly_6_mb_is_accepted_and_one_byte_more_is_rejected(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy("echo", source=make_function(app=ECHO), handler="app.handler")
    at_limit = b'"' + os.urandom(wire.MAX_PAYLOAD // 2 - 1).hex().encode() + b'"'
    assert len(at_limit) == wire.MAX_PAYLOAD
    result = await runtime.invoke("echo", payload=at_limit)
    assert_ok(result)
    assert result.payload == at_limit

    over = b'"' + b"y" * (wire.MAX_PAYLOAD - 1) + b'"'
    with pytest.raises(errors.RequestTooLargeError, match=str(wire.MAX_PAYLOAD + 1)):
        await runtime.invoke("echo", payload=over)


async def test_events_and_results_around_the_inline_limit_are_intact(
    runtime: fastfaas.Runtime, make_function
) -> None:
    """Frames just under, at and just over INLINE_MAX (inline vs memfd) both ways."""
    await runtime.deploy("echo", source=make_function(app=ECHO), handler="app.handler")
    seed = os.urandom(wire.INLINE_MAX).hex()
    for length in range(wire.INLINE_MAX - 160, wire.INLINE_MAX + 40, 3):
        event = seed[:length]
        result = await runtime.invoke("echo", event)
        assert_ok(result)
        assert result.value() == event, f"event of {length} characters came back altered"


# --- 9. Output capture ---------------------------------------------------------------------

PRINTS = """
import os

def handler(event, context):
    if event.get("lines"):
        for i in range(event["lines"]):
            print(f"line {i:06d}")
    else:
        print("hello from print")
        os.write(2, b"hello from fd 2\\n")
    return "done"
"""


async def test_output_is_captured_in_the_log_tail(runtime: fastfaas.Runtime, make_function) -> None:
    await runtime.deploy("chatty", source=make_function(app=PRINTS), handler="app.handler")

    result = await runtime.invoke("chatty", {})
    assert_ok(result)
    assert b"hello from print\n" in result.log_tail
    assert b"hello from fd 2\n" in result.log_tail

    lines = 1000  # 12 bytes a line: 12 KB in all
    expected = b"".join(b"line %06d\n" % i for i in range(lines))
    assert len(expected) > 2 * wire.LOG_TAIL
    result = await runtime.invoke("chatty", {"lines": lines})
    assert_ok(result)
    assert len(result.log_tail) == wire.LOG_TAIL, len(result.log_tail)
    assert expected.endswith(result.log_tail), result.log_tail[:80]
    assert b"hello" not in result.log_tail, "each invocation has its own log tail"


# --- 10. Leftover processes --------------------------------------------------------------

LEAVES_PROCESSES = """
import os
import subprocess

def handler(event, context):
    if event["how"] == "popen":
        return {"pid": subprocess.Popen(["sleep", "1000"]).pid}
    if event["how"] == "daemon":
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            try:
                os.close(r)
                os.setsid()
                grandchild = os.fork()
                if grandchild == 0:
                    os.execvp("sleep", ["sleep", "1000"])
                os.write(w, str(grandchild).encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(child, 0)
        pid = int(os.read(r, 64))
        os.close(r)
        return {"pid": pid}
    return {"pid": os.getpid()}
"""


@pytest.mark.cgroups
@pytest.mark.parametrize("how", ["popen", "daemon"])
async def test_processes_left_behind_are_killed_when_the_invocation_returns(
    runtime: fastfaas.Runtime, make_function, how: str
) -> None:
    code = make_function(app=LEAVES_PROCESSES)
    await runtime.deploy("leaver", source=code, handler="app.handler")

    result = await runtime.invoke("leaver", {"how": how})
    assert_ok(result)
    left_behind = result.value()["pid"]
    await wait_process_gone(left_behind)

    again = await runtime.invoke("leaver", {"how": "none"})
    assert_ok(again)
    assert again.instance_id == result.instance_id, "the instance itself survives the clean-up"


# --- 11. Platform errors -----------------------------------------------------------------


async def test_invoking_an_unknown_function_raises_function_not_found(
    runtime: fastfaas.Runtime,
) -> None:
    with pytest.raises(errors.FunctionNotFoundError, match="nosuch"):
        await runtime.invoke("nosuch", {})


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"handler": "nodot"}, "handler"),
        ({"handler": "app."}, "handler"),
        ({"handler": "app.handler-1"}, "handler"),
        ({"handler": ""}, "handler"),
        ({"handler": "app.handler", "memory_mb": 64}, "memory_mb"),
        ({"handler": "app.handler", "timeout_s": 0}, "timeout_s"),
    ],
)
async def test_invalid_deploy_raises_invalid_request(
    runtime: fastfaas.Runtime, make_function, config: dict[str, object], names: str
) -> None:
    code = make_function(app=ECHO)
    await runtime.deploy("fn", source=code, handler="app.handler")
    with pytest.raises(errors.InvalidRequestError, match=names):
        await runtime.deploy("fn", source=code, **config)
    # The rejected deploy changed nothing.
    assert runtime.describe("fn")["config"]["handler"] == "app.handler"
    assert runtime.describe("fn")["config"]["memory_mb"] == 128
    assert_ok(await runtime.invoke("fn", 1))


async def test_invoke_with_a_payload_that_is_not_json_raises_invalid_request(
    runtime: fastfaas.Runtime, make_function
) -> None:
    await runtime.deploy("echo", source=make_function(app=ECHO), handler="app.handler")
    with pytest.raises(errors.InvalidRequestError, match="JSON"):
        await runtime.invoke("echo", payload=b"{not json")
    result = await runtime.invoke("echo", payload=b'{"ok": true}')
    assert_ok(result)
    assert result.value() == {"ok": True}
