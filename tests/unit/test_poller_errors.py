"""What the poller keeps of a failed asynchronous invocation, whatever its instance sent;
and how it (like the server and the runtime) tells of failures it goes on from."""

from __future__ import annotations

import msgspec
import pytest

from fastfaas.events.poller import _error_text
from fastfaas.runtime.results import FunctionError, InvocationResult, Usage

ERROR = FunctionError("Unhandled", "ValueError", "bad input", [])


def failed(payload: bytes) -> InvocationResult:
    return InvocationResult(payload, ERROR, "warm", "i-1", "r-1", 10, Usage(0, 0))


def test_the_functions_own_error_body_is_kept_with_its_kind() -> None:
    body = b'{"errorType": "ValueError", "errorMessage": "bad input", "stackTrace": []}'
    assert msgspec.json.decode(_error_text(failed(body))) == {
        "errorType": "ValueError", "errorMessage": "bad input", "stackTrace": [],
        "kind": "Unhandled"}


@pytest.mark.parametrize("payload", [b'"x"', b"[1, 2]", b"null", b"not json", b"\xff", b""])
def test_a_payload_that_is_not_an_object_gives_way_to_the_errors_fields(
        payload: bytes) -> None:
    # An instance's code can write its own Result on its channel: this used to stop
    # the poller (and the server) on the first such async invocation.
    assert msgspec.json.decode(_error_text(failed(payload))) == {
        "errorType": "ValueError", "errorMessage": "bad input", "kind": "Unhandled"}


def test_said_once_tells_each_kind_once_and_counts_every_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    from fastfaas.errors import SaidOnce

    say = SaidOnce("retrying")
    say("the queue refused a write", OSError(28, "No space left on device"))
    say("the queue refused a write", OSError(28, "No space left on device"))
    say("the queue refused a read", OSError(5, "Input/output error"))
    assert say.count == 3
    assert capsys.readouterr().err.splitlines() == [
        "fastfaas: the queue refused a write: [Errno 28] No space left on device"
        " (said once; retrying)",
        "fastfaas: the queue refused a read: [Errno 5] Input/output error (said once; retrying)",
    ]
