"""What every answer of the HTTP front end must satisfy, for hypothesis and atheris alike.

The sans-IO connection may only refuse input deliberately (a `ProtocolError`
of 400, 413 or 431, never another exception, never a bug of a callback
dressed up as a 400); the server's bytes must cut into whole, well-formed
responses; the native API's errors are `{error, message}` JSON and its 5xx
are the deliberate ones listed here.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

import httptools

from fastfaas.http.native import MAX_DEPLOY_BODY
from fastfaas.http.protocol import (
    MAX_HEADER_BYTES,
    BodyLimit,
    ProtocolError,
    Request,
    ServerConnection,
)

PROTOCOL_STATUSES: Final = frozenset({400, 413, 431})
# The native API's 5xx that are meant: the Runtime is not running (503), a
# zygote or cgroup failure that is the platform's fault (500 with its own
# code). A 500 "InternalError" is the catch-all for a bug: never allowed.
DELIBERATE_5XX: Final = frozenset({(503, "ServiceUnavailable"), (500, "ServiceError"),
                                   (500, "CgroupError")})
# What the native API answers, the front end's refusals (400, 413, 431) included.
API_STATUSES: Final = frozenset({200, 201, 202, 204, 400, 404, 405, 413, 429, 431})

_STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e]*")
_HEADER_LINE: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ([\t\x20-\x7e\x80-\xff]*)")


class Outcome(NamedTuple):
    """What a ServerConnection made of some bytes: its requests, then its refusal if any."""

    requests: list[Request]
    error: ProtocolError | None
    in_request: bool


class Answer(NamedTuple):
    """One response as the server sent it; header names lower-cased."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes


def masked_bug(error: ProtocolError) -> BaseException | None:
    """The exception of ours that `error` turned into a 400, if that is what it did.

    An exception raised in a parser callback reaches `receive_data` as
    httptools' HttpParserCallbackError, with the original as its context;
    `receive_data` answers 400 for it. Only a ProtocolError is meant to get
    there: anything else (a TypeError, a KeyError...) is a bug of the callback.
    """
    context = error.__context__
    if isinstance(context, httptools.HttpParserCallbackError):
        cause = context.__context__
        if cause is not None and not isinstance(cause, ProtocolError):
            return cause
    return None


def check_refusal(error: ProtocolError, conn: ServerConnection) -> None:
    """A deliberate refusal: a listed status, a message, and the connection is done."""
    assert error.status in PROTOCOL_STATUSES, (error.status, error.message)
    assert isinstance(error.message, str) and error.message, error
    bug = masked_bug(error)
    assert bug is None, f"a callback's {type(bug).__name__}: {bug} was answered as a 400"
    assert conn.closed, "a refused connection must be closed"
    try:
        conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    except ProtocolError as again:
        assert again.status == 400, again
    else:
        raise AssertionError("a refused connection took more bytes")


def check_request(request: Request, body_limit: int) -> None:
    """A request handed to the app is well-typed and within the body limit."""
    assert isinstance(request.method, bytes) and request.method.isupper(), request.method
    assert isinstance(request.target, bytes) and request.target, request
    assert isinstance(request.path, str)
    assert request.query == request.target.partition(b"?")[2]
    assert all(isinstance(k, bytes) and k == k.lower() and isinstance(v, bytes)
               for k, v in request.headers.items()), request.headers
    assert len(request.body) <= body_limit, (len(request.body), body_limit)
    assert isinstance(request.keep_alive, bool)


def feed(chunks: Iterable[bytes], *, body_limit: int | BodyLimit, max_header_bytes: int,
         eof: bool = False, fast_parse: bool = True) -> Outcome:
    """Feed chunks (then EOF if `eof`) to a fresh ServerConnection, checking as it goes.

    `body_limit`: one limit for every request, or the server's rule. Empty
    chunks are skipped: b"" is how EOF is fed. `fast_parse`: False, httptools
    parses everything (the C parser of the common form is not tried).
    """
    limit = body_limit if callable(body_limit) else lambda method, path: body_limit
    conn = ServerConnection(limit, max_header_bytes, fast_parse=fast_parse)
    requests: list[Request] = []
    error: ProtocolError | None = None
    try:
        for chunk in filter(None, chunks):
            conn.receive_data(chunk)
            while (request := conn.next_request()) is not None:
                requests.append(request)
        if eof:
            conn.receive_data(b"")
    except ProtocolError as exc:
        check_refusal(exc, conn)
        error = exc
    while (request := conn.next_request()) is not None:
        requests.append(request)
    for request in requests:
        check_request(request, limit(request.method, request.target.partition(b"?")[0]))
    return Outcome(requests, error, conn.in_request)


def fields(request: Request) -> tuple[object, ...]:
    """Everything a request carries, for comparing two parses."""
    return (request.method, request.target, request.path, request.query, request.headers,
            request.body, request.keep_alive)


def check_same_outcome(chunked: Outcome, whole: Outcome) -> None:
    """The same bytes cut into other reads gave the same requests and the same refusal.

    Unless either refusal is a 431: a header still unfinished is counted by the
    bytes fed so far (so one endless line is refused), which depends on the reads.
    """
    errors = [o.error for o in (chunked, whole) if o.error is not None]
    if any(error.status == 431 for error in errors):
        return
    assert [fields(r) for r in chunked.requests] == [fields(r) for r in whole.requests]
    assert len(errors) != 1 and len({e.status for e in errors}) <= 1, errors
    if not errors:
        assert chunked.in_request == whole.in_request


def split_answers(data: bytes, heads: Sequence[bool] = ()) -> list[Answer]:
    """Cut what a server sent into whole responses, each of which must be well-formed.

    Args:
        data: every byte the server sent on one connection, up to its close.
        heads: heads[i] is true when the i-th final response answers a HEAD
            (its headers promise a body that does not follow).

    Returns:
        The final responses, in order; interim `100 Continue`s are checked and dropped.
    """
    answers: list[Answer] = []
    rest = data
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"an incomplete response head: {head[:200]!r}"
        status_line, *lines = head.split(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        assert match, f"a malformed status line: {status_line!r}"
        status = int(match.group(1))
        headers: dict[bytes, bytes] = {}
        for line in lines:
            header = _HEADER_LINE.fullmatch(line)
            assert header, f"a malformed header line: {line!r}"
            name = header.group(1).lower()
            assert name not in headers, f"a repeated response header: {name!r}"
            headers[name] = header.group(2)
        if status == 100:
            assert not headers, headers
            continue
        assert status >= 200, status_line
        if status == 204:
            assert b"content-length" not in headers, headers
            length = 0
        else:
            assert headers.get(b"content-length", b"").isdigit(), headers
            length = int(headers[b"content-length"])
        if len(answers) < len(heads) and heads[len(answers)]:
            length = 0
        assert len(rest) >= length, f"a body cut short: {len(rest)} of {length} bytes"
        answers.append(Answer(status, headers, rest[:length]))
        rest = rest[length:]
    return answers


def check_error_body(answer: Answer) -> dict[str, str]:
    """A platform error: a JSON `{error, message}` body of two non-empty strings."""
    assert answer.headers.get(b"content-type") == b"application/json", answer
    body = json.loads(answer.body)
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert all(isinstance(v, str) and v for v in body.values()), body
    return body


def check_api_answer(answer: Answer, head: bool = False, request: Request | None = None) -> None:
    """A native API answer (to `request`, if known): a status it means to give, errors as
    `{error, message}`."""
    if answer.status >= 500:
        code = check_error_body(answer)["error"] if not head else None
        assert (answer.status, code) in DELIBERATE_5XX, f"an undeliberate 5xx: {answer}"
        return
    assert answer.status in API_STATUSES, answer
    if answer.status >= 400 and not head:
        check_error_body(answer)
    if answer.status == 405:
        assert answer.headers.get(b"allow"), answer


# --- the native API over loopback ------------------------------------------------------


def api_body_limit(max_body: int) -> BodyLimit:
    """NativeApi.body_limit of a server started with that --max-body-mb (in bytes)."""

    def limit(method: bytes, path: bytes) -> int:
        if method == b"PUT" and path.startswith(b"/v1/functions/"):
            return MAX_DEPLOY_BODY
        return max_body

    return limit


def send_raw(port: int, data: bytes, timeout: float = 30.0) -> bytes:
    """Send bytes on a new loopback connection, then EOF; all the server sends until it closes."""
    received = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):  # a reset after its last answer
            while chunk := sock.recv(65536):
                received.append(chunk)
    return b"".join(received)


def check_api_exchange(port: int, stream: bytes, body_limit: BodyLimit) -> list[Answer]:
    """Send `stream` to the native API: it answers what its front end parses of it, in
    order, up to the first request that does not keep the connection alive or to the
    refusal, and each answer is one it means to give. Returns the answers."""
    model = feed([stream], body_limit=body_limit, max_header_bytes=MAX_HEADER_BYTES, eof=True)
    answered: list[Request] = []
    for request in model.requests:
        answered.append(request)
        if not request.keep_alive:
            break
    refused = model.error is not None and (not answered or answered[-1].keep_alive)
    heads = [request.method == b"HEAD" for request in answered]
    answers = split_answers(send_raw(port, stream), heads)
    assert len(answers) == len(answered) + refused, (answers, answered, model.error)
    for answer, head, request in zip(answers, [*heads, False], [*answered, None],
                                     strict=False):
        check_api_answer(answer, head, request)
    if refused:
        assert model.error is not None
        assert answers[-1].status == model.error.status, (answers[-1], model.error)
    return answers


def check_healthz(port: int) -> None:
    """The server still serves: /healthz answers 200 with status ok."""
    [answer] = split_answers(send_raw(port, b"GET /healthz HTTP/1.1\r\n\r\n"))
    assert answer.status == 200 and json.loads(answer.body)["status"] == "ok", answer
