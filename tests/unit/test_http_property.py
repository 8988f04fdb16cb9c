"""Property-based tests of the HTTP front end, on three substrates, cheapest first.

- `protocol.ServerConnection` on bytes alone: any bytes, in any chunking, end
  in requests or a deliberate refusal (400, 413, 431), never another
  exception; a valid request parses the same split at any byte; pipelined
  requests come out in order; limits hold however the bytes arrive.
- `server.HttpServer` over loopback in this process, with an echo app: it
  answers exactly what the sans-IO connection predicts, well-formed and in
  order, and serves the next connection.
- `native.NativeApi` behind one real `fastfaas serve` for the module: any
  method, path, query, header and body get a status it means to give (no 5xx
  but the deliberate ones), errors as `{error, message}` JSON, and `/healthz`
  still answers.

Every `@given` is derandomized and bounded; the checks themselves live in
`tests/fuzz/http_checks.py`, shared with the atheris harnesses.
"""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import stat
import string
import struct
import zipfile
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple
from urllib.parse import quote

import httptools
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastfaas.config import FunctionConfig
from fastfaas.http.protocol import (
    MAX_HEADER_BYTES,
    ProtocolError,
    Request,
    ServerConnection,
    encode_response,
)
from fastfaas.http.server import HttpServer, Response
from tests.conftest import CGROUPS_MODE, ServerProcess
from tests.fuzz.http_checks import (
    Answer,
    api_body_limit,
    check_api_exchange,
    check_error_body,
    check_healthz,
    check_refusal,
    check_same_outcome,
    feed,
    fields,
    send_raw,
    split_answers,
)


def bounded(max_examples: int) -> settings:
    """Reproducible and bounded: the same examples every run, no deadline, no database."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- strategies -------------------------------------------------------------------

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
VALUE_CHARS = "\t" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in pieces, split at the offsets `cuts` (none empty)."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def cuts_of(data: bytes) -> st.SearchStrategy[list[int]]:
    """Offsets to split `data` at: any of them, up to a dozen."""
    if len(data) < 2:
        return st.just([])
    return st.lists(st.integers(1, len(data) - 1), max_size=12)


class Sent(NamedTuple):
    """A valid request as bytes, and what parsing it must give."""

    data: bytes
    method: bytes
    target: bytes
    path: str
    headers: dict[bytes, bytes]
    body: bytes
    keep_alive: bool


# A path piece is a character sent as itself or a percent-escaped byte: (wire, decoded).
_path_piece = st.one_of(
    st.sampled_from(PCHAR).map(lambda c: (c.encode(), c.encode())),
    st.integers(0, 255).map(lambda b: (b"%%%02X" % b, bytes([b]))),
)


@st.composite
def targets(draw: st.DrawFn) -> tuple[bytes, str]:
    """(request-target, the path the server must see)."""
    segments = draw(st.lists(st.lists(_path_piece, max_size=6), min_size=1, max_size=4))
    wire = b"/" + b"/".join(b"".join(w for w, _ in seg) for seg in segments)
    raw = b"/" + b"/".join(b"".join(d for _, d in seg) for seg in segments)
    escaped = any(w != d for seg in segments for w, d in seg)
    path = raw.decode("utf-8", errors="replace") if escaped else raw.decode("latin-1")
    query = draw(st.none() | st.text(PCHAR + "/?", max_size=12))
    return wire + (b"" if query is None else b"?" + query.encode()), path


header_names = st.one_of(st.sampled_from(["X-A", "x-a", "X-B", "Accept"]),
                         st.text(TCHAR, min_size=1, max_size=12).map(lambda t: "x-" + t))
header_values = st.text(VALUE_CHARS, max_size=20).map(lambda v: v.strip(" \t"))


@st.composite
def valid_requests(draw: st.DrawFn, keep_alive: bool | None = None) -> Sent:
    """Any well-formed request: method, target, headers (repeats too), framing, keep-alive."""
    method = draw(st.sampled_from(METHODS))
    target, path = draw(targets())
    version = draw(st.sampled_from(["1.1", "1.0"]))
    lines = draw(st.lists(st.tuples(header_names, header_values), max_size=6))
    body = draw(st.binary(max_size=64))
    framings = ["length"] if version == "1.0" else ["length", "chunked"]
    framing = draw(st.sampled_from(framings if body else [*framings, "none"]))
    if framing == "length":
        lines.append((draw(st.sampled_from(["Content-Length", "content-length"])),
                      str(len(body))))
    elif framing == "chunked":
        lines.append(("Transfer-Encoding", "chunked"))
    if keep_alive is None:
        keep_alive = draw(st.booleans())
    default = version == "1.1"
    if keep_alive != default or draw(st.booleans()):
        lines.append(("Connection", "keep-alive" if keep_alive else "close"))
    if draw(st.booleans()):
        lines.append(("Host", "example"))
    lines = draw(st.permutations(lines))
    if framing == "chunked":
        pieces = cut(body, draw(cuts_of(body)))
        framed = b"".join(
            b"%s%s\r\n%s\r\n" % (draw(st.sampled_from([b"%x", b"%X", b"00%x"])) % len(piece),
                                 draw(st.sampled_from([b"", b";ext=1"])), piece)
            for piece in pieces)
        framed += b"0\r\n\r\n"
    else:
        framed = body
    head = b"%s %s HTTP/%s\r\n" % (method.encode(), target, version.encode())
    head += b"".join(b"%s: %s\r\n" % (n.encode(), v.encode("latin-1")) for n, v in lines)
    headers: dict[bytes, bytes] = {}
    for name, value in lines:
        key, raw = name.lower().encode(), value.encode("latin-1")
        headers[key] = headers[key] + b", " + raw if key in headers else raw
    return Sent(head + b"\r\n" + framed, method.encode(), target, path, headers, body,
                keep_alive)


@st.composite
def common_requests(draw: st.DrawFn) -> bytes:
    """A request in the common form the C parser takes (`_native.parse_request`):
    HTTP/1.1, Content-Length framing, values of visible ASCII (but a header may come
    twice, which it leaves to httptools)."""
    method = draw(st.sampled_from(METHODS))
    target, _ = draw(targets())
    # A name twice (httptools' to join), and the names that bear on the connection.
    names = draw(st.lists(header_names | st.sampled_from(
        ["Connection", "Proxy-Connection", "Keep-Alive"]), max_size=6))
    values = st.text(string.ascii_letters + string.digits + " ;=,./:-", min_size=1,
                     max_size=20).map(lambda v: v.strip(" ") or "v") | st.sampled_from(
        ["close", "keep-alive", "Keep-Alive", "upgrade"])
    lines = [(name, draw(values)) for name in names]
    colon = draw(st.sampled_from([b": ", b":", b":  "]))
    body = draw(st.binary(max_size=8) | st.binary(min_size=30, max_size=36))  # LIMIT is 32
    if body or draw(st.booleans()):
        lines.append(("Content-Length", str(len(body))))
    if draw(st.booleans()):
        lines.append(("Connection", draw(st.sampled_from(["keep-alive", "Keep-Alive"]))))
    head = b"%s %s HTTP/1.1\r\n" % (method.encode(), target)
    head += b"".join(b"%s%s%s\r\n" % (n.encode(), colon, v.encode()) for n, v in lines)
    return head + b"\r\n" + body


FRAGMENTS = [
    b"GET / HTTP/1.1\r\n", b"POST /f HTTP/1.1\r\n", b"HEAD /h HTTP/1.0\r\n",
    b"PUT /v1/functions/x HTTP/1.1\r\n", b"GET /a%20b%ff?q=1 HTTP/1.1\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n", b"GET / HTTP/2.0\r\n", b"get / http/1.1\r\n",
    b"Host: x\r\n", b"Host: y\r\n", b"Content-Length: 3\r\n", b"Content-Length: 0\r\n",
    b"Content-Length: 99999999999\r\n", b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
    b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Expect: 100-continue\r\n",
    b"Upgrade: websocket\r\nConnection: upgrade\r\n", b"X-A: 1\r\n", b" folded\r\n",
    b"Authorization: a\r\n", b"\r\n", b"\r\n\r\n", b"\n", b"abc", b"3\r\nabc\r\n",
    b"0\r\n\r\n", b"0\r\nX-Trailer: t\r\n\r\n", b"ffffffffffffffffff\r\n", b"\x00", b"\x80",
]
fragments = st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=12),
                      valid_requests().map(lambda sent: sent.data))
http_ish = st.lists(fragments, max_size=10).map(b"".join)


# --- the sans-IO connection ------------------------------------------------------------

LIMIT = 32
SMALL_HEADERS = 256


def parse(*chunks: bytes, body_limit: int = 1 << 20) -> list[Request]:
    outcome = feed(chunks, body_limit=body_limit, max_header_bytes=MAX_HEADER_BYTES)
    assert outcome.error is None, outcome.error
    assert not outcome.in_request
    return outcome.requests


@bounded(150)
@given(valid_requests())
def test_a_valid_request_parses_to_what_was_sent(sent: Sent) -> None:
    [request] = parse(sent.data)
    assert (request.method, request.target, request.path, request.headers, request.body,
            request.keep_alive) == (sent.method, sent.target, sent.path, sent.headers,
                                    sent.body, sent.keep_alive)


@bounded(40)
@given(valid_requests())
def test_a_valid_request_split_at_any_byte_parses_the_same(sent: Sent) -> None:
    data = sent.data
    [whole] = parse(data)
    for i in range(1, len(data)):
        [split] = parse(data[:i], data[i:])
        assert fields(split) == fields(whole), i
    [trickled] = parse(*(data[i:i + 1] for i in range(len(data))))
    assert fields(trickled) == fields(whole)


@bounded(100)
@given(st.lists(valid_requests(keep_alive=True), min_size=1, max_size=5), st.data())
def test_pipelined_requests_in_any_chunking_come_out_in_order(
        sents: list[Sent], data: st.DataObject) -> None:
    stream = b"".join(sent.data for sent in sents)
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    got = parse(*chunks)
    assert [(r.method, r.target, r.headers, r.body) for r in got] == [
        (s.method, s.target, s.headers, s.body) for s in sents]


@bounded(300)
@given(http_ish, st.booleans(), st.data())
def test_any_bytes_in_any_chunking_end_in_requests_or_a_deliberate_refusal(
        stream: bytes, eof: bool, data: st.DataObject) -> None:
    # `feed` fails on any exception but a ProtocolError of 400, 413 or 431, and on
    # a 400 that hides a callback's bug; it checks every request it gets too.
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    chunked = feed(chunks, body_limit=LIMIT, max_header_bytes=SMALL_HEADERS, eof=eof)
    whole = feed([stream], body_limit=LIMIT, max_header_bytes=SMALL_HEADERS, eof=eof)
    event(f"requests {len(whole.requests)}, refused {whole.error and whole.error.status}")
    check_same_outcome(chunked, whole)


@bounded(300)
@given(st.one_of(http_ish, st.lists(st.one_of(common_requests(), st.builds(
    lambda sent: sent.data, valid_requests()), st.sampled_from(FRAGMENTS)), min_size=1,
    max_size=4).map(b"".join)), st.booleans(), st.data())
def test_the_c_parser_of_the_common_form_agrees_with_httptools(
        stream: bytes, eof: bool, data: st.DataObject) -> None:
    # Whole requests in the common form are parsed in one C call; everything else
    # is httptools'. The same bytes in the same reads must give the same requests
    # and the same refusal either way.
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    for max_header_bytes in (SMALL_HEADERS, MAX_HEADER_BYTES):
        fast = feed(chunks, body_limit=LIMIT, max_header_bytes=max_header_bytes, eof=eof)
        full = feed(chunks, body_limit=LIMIT, max_header_bytes=max_header_bytes, eof=eof,
                    fast_parse=False)
        assert [fields(r) for r in fast.requests] == [fields(r) for r in full.requests]
        assert (fast.error and fast.error.status) == (full.error and full.error.status)
        assert fast.in_request == full.in_request


ENDLESS = {
    "url": (b"GET /", b"a"),
    "header name": (b"GET / HTTP/1.1\r\n", b"a"),
    "header value": (b"GET / HTTP/1.1\r\nX-Long: ", b"a"),
    "header lines": (b"GET / HTTP/1.1\r\n", b"X: 1\r\n"),
}


def feed_until_refused(conn: ServerConnection,
                       chunks: list[bytes]) -> tuple[ProtocolError, int, int]:
    """Feed `chunks` until the connection refuses (it must): the refusal, checked; the
    bytes fed up to and including the chunk that brought it; that chunk's length."""
    fed = last = 0
    with pytest.raises(ProtocolError) as refused:
        for chunk in chunks:
            fed, last = fed + len(chunk), len(chunk)
            conn.receive_data(chunk)
    check_refusal(refused.value, conn)
    return refused.value, fed, last


@bounded(150)
@given(st.sampled_from(sorted(ENDLESS)), st.integers(1, 700),
       st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_endless_headers_are_refused_once_past_max_header_bytes(
        kind: str, first: int, sizes: list[int]) -> None:
    """However they arrive, a request's headers are refused with 431 before the
    connection has taken more than the limit beyond its first read."""
    start, unit = ENDLESS[kind]
    stream = start + unit * (4 * (SMALL_HEADERS + first + max(sizes)))
    chunks, offset = [stream[:first]], first
    for size in itertools.cycle(sizes):
        if offset >= len(stream):
            break
        chunks.append(stream[offset:offset + size])
        offset += size
    conn = ServerConnection(lambda method, path: LIMIT, SMALL_HEADERS)
    refused, fed, _ = feed_until_refused(conn, chunks)
    assert refused.status == 431, refused
    assert fed <= first + SMALL_HEADERS + max(sizes), (fed, first, sizes)


@bounded(150)
@given(st.integers(0, 64), st.integers(1, 128), st.sampled_from(["length", "chunked"]),
       st.lists(st.integers(1, 40), min_size=1, max_size=6), st.data())
def test_a_body_over_the_limit_is_refused_as_soon_as_it_shows(
        limit: int, over: int, framing: str, chunk_sizes: list[int],
        data: st.DataObject) -> None:
    """413 at the end of the headers for a Content-Length over the limit; for a
    chunked body, in the very read that brings its byte number limit + 1."""
    body = bytes(limit + over)
    if framing == "length":
        head = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
        stream = head + body
        decisive = len(head) - 1
    else:
        head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        stream, decisive, sent = head, -1, 0
        size_iter = iter(chunk_sizes * (len(body) + 1))
        while sent < len(body):
            size = min(next(size_iter), len(body) - sent)
            if sent <= limit < sent + size:
                decisive = len(stream) + len(b"%x\r\n" % size) + (limit - sent)
            stream += b"%x\r\n%s\r\n" % (size, body[sent:sent + size])
            sent += size
        stream += b"0\r\n\r\n"
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    conn = ServerConnection(lambda method, path: limit)
    refused, fed, last = feed_until_refused(conn, chunks)
    assert refused.status == 413, refused
    assert conn.next_request() is None
    # The read that brought the decisive byte was refused: no earlier, no later one.
    assert fed - last <= decisive < fed, (fed, last, decisive)


statuses = st.sampled_from(sorted(s for s in range(200, 600) if s not in (204, 304)))
response_headers = st.lists(
    st.tuples(st.text(TCHAR, min_size=1, max_size=10).map(lambda n: "x-" + n.lower()),
              header_values), max_size=5, unique_by=lambda header: header[0])


class Collected:
    """httptools' callbacks for one response."""

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive: bool | None = None
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()


@bounded(150)
@given(statuses, response_headers, st.binary(max_size=100), st.booleans())
def test_an_encoded_response_parses_back_to_itself(
        status: int, headers: list[tuple[str, str]], body: bytes, keep_alive: bool) -> None:
    wire = [(n.encode(), v.encode("latin-1")) for n, v in headers]
    data = encode_response(status, wire, body, keep_alive)
    collected = Collected()
    collected.parser.feed_data(data)
    assert collected.parser.get_status_code() == status
    assert collected.keep_alive is keep_alive  # None: the response did not end
    assert collected.body == body
    assert collected.headers[:len(wire)] == wire
    [answer] = split_answers(data)
    assert (answer.status, answer.body) == (status, body)
    [head_answer] = split_answers(encode_response(status, wire, body, keep_alive, head=True),
                                  heads=[True])
    assert head_answer.headers[b"content-length"] == b"%d" % len(body)
    assert head_answer.body == b""


# --- the trio server, over loopback in this process ------------------------------------

BOUND_S = 10.0


async def echo(request: Request) -> Response:
    return Response(200, echoed(request), [(b"content-type", b"text/plain")])


def echoed(request: Request) -> bytes:
    return b"%s %s %s" % (request.method, request.path.encode(), request.body)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[tuple[HttpServer, int]]:
    """The echo app on an ephemeral loopback port; closed, and waited for, on exit."""
    server = HttpServer(echo, lambda method, path: LIMIT)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    with trio.fail_after(BOUND_S):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            yield server, listeners[0].socket.getsockname()[1]
            server.close()


async def exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send the chunks, then EOF; everything the server sends until it closes."""
    received = []
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with contextlib.suppress(trio.BrokenResourceError):  # it closed on us: read what it said
            for chunk in chunks:
                await stream.send_all(chunk)
            await stream.send_eof()
        with contextlib.suppress(trio.BrokenResourceError):  # a reset after its last answer
            while data := await stream.receive_some(65536):
                received.append(data)
    return b"".join(received)


async def assert_still_serving(server: HttpServer, port: int) -> None:
    before = server.requests
    data = await exchange(port, [b"GET /next HTTP/1.1\r\n\r\n"])
    assert [(a.status, a.body) for a in split_answers(data)] == [(200, b"GET /next ")]
    assert server.requests == before + 1


@bounded(120)
@given(http_ish, st.data())
async def test_the_server_answers_any_bytes_as_the_sans_io_connection_predicts(
        stream: bytes, data: st.DataObject) -> None:
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    model = feed([stream], body_limit=LIMIT, max_header_bytes=MAX_HEADER_BYTES, eof=True)
    expected: list[tuple[int, bytes | None, bool]] = []  # status, echo body, keep-alive
    for request in model.requests:
        expected.append((200, echoed(request), request.keep_alive))
        if not request.keep_alive:
            break
    else:
        if model.error is not None:
            expected.append((model.error.status, None, False))
    async with serving() as (server, port):
        sent = await exchange(port, chunks)
        answers = split_answers(sent, [r.method == b"HEAD" for r in model.requests])
        got = [(a.status, a.body if a.status == 200 else None,
                a.headers.get(b"connection") != b"close") for a in answers]
        heads = [r.method == b"HEAD" for r in model.requests]
        expected = [(s, b"" if s == 200 and heads[i] else body, ka)
                    for i, (s, body, ka) in enumerate(expected)]
        assert got == expected
        for answer in answers:
            if answer.status != 200:
                check_error_body(answer)
        assert server.requests == sum(1 for s, _, _ in expected if s == 200)
        await assert_still_serving(server, port)


@bounded(60)
@given(st.lists(valid_requests(keep_alive=True), min_size=1, max_size=6), st.data())
async def test_the_server_answers_pipelined_requests_in_order(
        sents: list[Sent], data: st.DataObject) -> None:
    stream = b"".join(sent.data for sent in sents)
    chunks = cut(stream, data.draw(cuts_of(stream), label="cuts"))
    async with serving() as (server, port):
        answers = split_answers(await exchange(port, chunks),
                                [s.method == b"HEAD" for s in sents])
        assert [(a.status, a.body) for a in answers] == [
            (200, b"" if s.method == b"HEAD" else b"%s %s %s" % (s.method, s.path.encode(),
                                                                   s.body))
            for s in sents]
        await assert_still_serving(server, port)


# --- the native API, behind a real `fastfaas serve` ------------------------------------

API_BODY_LIMIT = api_body_limit(1 << 20)  # --max-body-mb 1
ECHO = b"def handler(event, context):\n    return event\n"
CODE = [ECHO, b"raise RuntimeError('at import')\n", b"def handler(e, c):\n    return None\n",
        b"def handler(e, c)\n"]


def zip_of(entries: list[tuple[str, bytes, bool]], deflate: bool) -> bytes:
    """A code zip: (name, content, a symbolic link?) each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED) as zf:
        for name, content, link in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = zf.compression
            info.external_attr = ((stat.S_IFLNK | 0o777) if link else (stat.S_IFREG | 0o644)) << 16
            zf.writestr(info, content)
    return buf.getvalue()


ENTRY_NAMES = ["app.py", "pkg/__init__.py", "pkg/mod.py", "pkg", "pkg/", "../up.py", "/abs.py",
               "a/../../b.py", "./app.py", "", ".", "dir/", "x" * 300 + ".py",
               "d/" + "y" * 250 + "/z.py", "app.py/inner.py", "a\\b.py", "sp ace.py"]
# Never a requirements.txt: installing one would ask the network for packages.
entry_names = st.sampled_from(ENTRY_NAMES) | st.text(
    string.ascii_letters + "/._-", min_size=1, max_size=12).filter(
        lambda n: "requirements" not in n)


@st.composite
def zips(draw: st.DrawFn) -> bytes:
    """A code zip, sound or not: odd entry names, links, code that does not import, and
    sometimes a byte changed (a corrupt header, CRC, deflate stream or end record)."""
    entries = draw(st.lists(
        st.tuples(entry_names, st.sampled_from(CODE) | st.binary(max_size=32),
                  st.sampled_from([False, False, False, True])),
        max_size=4, unique_by=lambda e: e[0]))
    data = zip_of(entries, draw(st.booleans()))
    if data and draw(st.booleans()):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


CONFIG_KEYS = sorted(FunctionConfig.__struct_fields__)
keys = st.sampled_from([*CONFIG_KEYS, "code_zip_b64", "limit", "unknown"])
QUERY_VALUES = ["", "null", "0", "1", "-1", "128", "3.5", "nan", "inf", "1e999", "true",
                "app.handler", "no handler", '{"A": "b"}', '{"AWS_LAMBDA_X": "1"}', '{"A": 1}',
                "[]", "{", "999999999999999999999999", "%ff", "%00"]
query_strings = st.lists(st.tuples(keys, st.sampled_from(QUERY_VALUES) | st.text(max_size=6)),
                         max_size=4).map(
    lambda pairs: "&".join(f"{quote(k)}={quote(v, safe='%')}" for k, v in pairs))
json_leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 300),
                        st.sampled_from([2**63, -2**63 - 1, 10**30, 1e300, 0.5]),
                        st.text(max_size=8), st.sampled_from(["app.handler", "standard", "x"]))
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(CONFIG_KEYS) | st.text(max_size=6), inner, max_size=3), max_leaves=8)
json_objects = st.dictionaries(keys, json_values, max_size=4)


@st.composite
def deploy_documents(draw: st.DrawFn) -> bytes:
    """A JSON deploy: `code_zip_b64` (a zip, or not base64 at all) and configuration."""
    document = draw(json_objects)
    code = draw(zips().map(lambda z: base64.b64encode(z).decode())
                | st.sampled_from(["", "!!", "AAA", "YQ==", "YQ\u00e9="]) | json_values)
    document["code_zip_b64"] = code
    if draw(st.booleans()):
        document["handler"] = draw(st.sampled_from(["app.handler", "pkg.mod.handler", "x"]))
    return json.dumps(document).encode()


bodies = st.one_of(
    st.just(b""),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=8).map(lambda b: b'{"handler": "app.handler", "a": "%s"}' % b),
    json_objects.map(lambda v: json.dumps(v).encode()),
    deploy_documents(),
    zips(),
    st.binary(max_size=64),
)

FUNCTION_NAMES = ["echo", "victim", "nope", "", "a" * 64, "a" * 65, "bad name", "x/y", "\x00",
                  "..", "café", "é", "n\n"]
names = st.sampled_from(["echo", "victim"]) | st.sampled_from(FUNCTION_NAMES) | st.text(max_size=8)
# Each route with its method; "{}" is where a function name or an invocation id goes.
ROUTES = [("GET", "/v1/functions"), ("GET", "/v1/functions/{}"), ("PUT", "/v1/functions/{}"),
          ("PATCH", "/v1/functions/{}"), ("DELETE", "/v1/functions/{}"),
          ("POST", "/v1/functions/{}/invoke"), ("POST", "/v1/functions/{}/warm"),
          ("GET", "/v1/functions/{}/logs"), ("GET", "/v1/invocations/{}"), ("GET", "/healthz"),
          ("GET", "/metrics")]
ODD_PATHS = ["/", "/v1", "/v1/functions/", "//v1/functions", "/healthz/", "/{}",
             "/v1/functions/{}/", "/v1/functions/{}/x", "/v1/functions/{}/invoke/more",
             "/v1/functions/{}/INVOKE", "/v1/invocations"]


@st.composite
def api_routes(draw: st.DrawFn) -> tuple[str, str]:
    """(method, path): mostly a route with its own method, else any other combination."""
    method, path = draw(st.sampled_from(ROUTES))
    if draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from(METHODS))
    if draw(st.integers(0, 3)) == 0:
        path = draw(st.sampled_from(ODD_PATHS))
    name = draw(names)
    # What changes or removes a function is pointed away from `echo`, which the
    # other requests go on invoking.
    if method in ("PUT", "PATCH", "DELETE") and name == "echo":
        name = "victim"
    return method, path.format(quote(name, safe=""))


API_HEADERS = {
    "Content-Type": ["application/json", "application/zip", "application/x-zip-compressed",
                     "application/octet-stream", "text/plain", "Application/JSON; charset=utf-8",
                     ""],
    "X-Fastfaas-Invocation-Type": ["RequestResponse", "Event", "DryRun", "event", ""],
    "X-Fastfaas-Route-Key": ["k", "", "k" * 256, "k" * 257, "\xe9"],
    "X-Fastfaas-Route-Busy": ["wait", "fallback", "no"],
    "Expect": ["100-continue"],
    "Authorization": ["Bearer x"],
}
api_headers = st.dictionaries(
    st.sampled_from(sorted(API_HEADERS)),
    st.text(VALUE_CHARS, max_size=8).map(lambda v: v.strip(" \t")), max_size=4).flatmap(
    lambda drawn: st.fixed_dictionaries({
        name: st.sampled_from(API_HEADERS[name]) | st.just(value)
        for name, value in drawn.items()}))


class ApiRequest(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    chunked: bool

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: fuzz",
                 *(f"{n}: {v}" for n, v in self.headers.items())]
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
            framed = (b"%x\r\n%s\r\n" % (len(self.body), self.body) if self.body else b""
                      ) + b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(self.body)}")
            framed = self.body
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + framed


@st.composite
def api_requests(draw: st.DrawFn) -> ApiRequest:
    method, target = draw(api_routes())
    query = draw(st.none() | query_strings)
    if query is not None:
        target += "?" + query
    return ApiRequest(method, target, draw(api_headers), draw(bodies), draw(st.booleans()))


class Api(NamedTuple):
    server: ServerProcess
    port: int


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


MAX_SERVER_RSS = 512 << 20


def assert_api_still_serving(api: Api) -> None:
    """/healthz answers and the server's memory stays bounded."""
    try:
        check_healthz(api.port)
    except (OSError, AssertionError) as exc:
        raise AssertionError(f"the server stopped serving: {exc!r}\n{api.server.stderr()}"
                             ) from exc
    assert rss_bytes(api.server.proc.pid) < MAX_SERVER_RSS


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One `fastfaas serve` for the module, with `echo` (invoked) and `victim` (changed,
    replaced and deleted by the requests) deployed; its memory budget bounds the spares
    a `prewarm` can ask for."""
    server = ServerProcess(tmp_path_factory.mktemp("http-property") / "data", CGROUPS_MODE,
                           "--max-body-mb", "1", "--memory-budget-mb", "1024",
                           "--warm-pool-size", "1")
    try:
        api = Api(server, server.port)
        code = zip_of([("app.py", ECHO, False)], deflate=True)
        for name in ("echo", "victim"):
            head = (f"PUT /v1/functions/{name}?handler=app.handler HTTP/1.1\r\nHost: x\r\n"
                    f"Content-Type: application/zip\r\nContent-Length: {len(code)}\r\n\r\n")
            [answer] = split_answers(send_raw(api.port, head.encode() + code))
            assert answer.status == 201, answer
        yield api
    finally:
        server.stop()


def check_exchange(api: Api, stream: bytes) -> list[Answer]:
    answers = check_api_exchange(api.port, stream, API_BODY_LIMIT)
    for answer in answers:
        event(f"status {answer.status}")  # --hypothesis-show-statistics: what was reached
    assert_api_still_serving(api)
    return answers


@bounded(150)
@given(api_requests())
def test_the_api_answers_any_request_with_a_status_it_means(api: Api,
                                                             request: ApiRequest) -> None:
    check_exchange(api, request.encode())


@bounded(60)
@given(st.lists(api_requests().map(ApiRequest.encode) | fragments, max_size=4).map(b"".join))
def test_the_api_answers_any_bytes_with_statuses_it_means(api: Api, stream: bytes) -> None:
    check_exchange(api, stream)


NAME_CHARS = string.ascii_letters + string.digits + "_-"


@st.composite
def deploys(draw: st.DrawFn) -> ApiRequest:
    """A deploy that gets as far as unpacking: a valid name and handler, any zip, any
    configuration; as a zip body (configuration in the query) or as JSON."""
    name = draw(st.sampled_from(["victim", "fresh"]) | st.text(NAME_CHARS, min_size=1,
                                                               max_size=8))
    name = "victim" if name == "echo" else name
    code = draw(zips())
    config = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS), json_leaves, max_size=2))
    config.pop("handler", None)
    if draw(st.booleans()):
        query = "&".join(f"{k}={quote(str(v))}" for k, v in config.items())
        return ApiRequest("PUT", f"/v1/functions/{name}?handler=app.handler&{query}",
                          {"Content-Type": "application/zip"}, code, False)
    document = {**config, "handler": "app.handler",
                "code_zip_b64": base64.b64encode(code).decode()}
    return ApiRequest("PUT", f"/v1/functions/{name}", {"Content-Type": "application/json"},
                      json.dumps(document).encode(), False)


@bounded(100)
@given(deploys())
def test_the_api_answers_any_deploy_with_a_status_it_means(api: Api,
                                                           request: ApiRequest) -> None:
    [answer] = check_exchange(api, request.encode())
    assert answer.status in (200, 201, 400, 413), answer


EOCD_BYTES = 22  # a zip's end record (without a comment): where its central directory is


def zip_with_end_record_off_by(shift: int) -> bytes:
    """A sound zip whose end record says its central directory starts `shift` bytes
    later than it does: zipfile then reads each entry `shift` bytes too early."""
    data = bytearray(zip_of([("app.py", ECHO, False)], deflate=False))
    end = struct.unpack("<4s4H2LH", data[-EOCD_BYTES:])
    data[-EOCD_BYTES:] = struct.pack("<4s4H2LH", *end[:6], end[6] + shift, end[7])
    return bytes(data)


def zip_needing_version(version: int) -> bytes:
    """A sound zip whose entry says it needs that zip version to be extracted."""
    data = bytearray(zip_of([("app.py", ECHO, False)], deflate=False))
    entry = data.index(b"PK\x01\x02")  # its central directory entry
    data[entry + 6:entry + 8] = struct.pack("<H", version)
    return bytes(data)


# Zips whose deploy was once answered 500 InternalError (code.py `unpack` mapped only some
# of zipfile's and the filesystem's errors to a 400); each must be a 400 now.
UNPACK_500 = {
    # IndexError: string index out of range (zipfile.ZipInfo.is_dir of an empty name)
    "empty-entry-name": zip_of([("app.py", ECHO, False), ("", b"x", False)], deflate=True),
    # OSError: [Errno 36] File name too long (open() in _extract)
    "entry-name-over-255-bytes": zip_of([("app.py", ECHO, False), ("x" * 300 + ".py", b"x",
                                                                   False)], deflate=True),
    # ValueError: negative seek value -100 (zipfile.ZipFile.open; found by tests/fuzz/fuzz_api)
    "end-record-offset-past-its-place": zip_with_end_record_off_by(100),
    # NotImplementedError: zip file version 9.5 (zipfile.ZipFile(); found by fuzz_api)
    "entry-needs-zip-version-9.5": zip_needing_version(95),
}


@pytest.mark.parametrize("code", UNPACK_500.values(), ids=UNPACK_500.keys())
def test_a_zip_that_cannot_be_unpacked_is_a_400(api: Api, code: bytes) -> None:
    request = ApiRequest("PUT", "/v1/functions/victim?handler=app.handler",
                         {"Content-Type": "application/zip"}, code, False)
    [answer] = split_answers(send_raw(api.port, request.encode()))
    assert_api_still_serving(api)
    assert answer.status == 400, answer
    assert check_error_body(answer)["error"] == "InvalidRequest"


JSON_WITH_INVALID_UTF8 = b'{"handler": "app.handler", "a": "\x88"}'


@pytest.mark.parametrize(("method", "target", "headers"), [
    ("PUT", "/v1/functions/victim", {"Content-Type": "application/json"}),
    ("PATCH", "/v1/functions/victim", {"Content-Type": "application/json"}),
    ("POST", "/v1/functions/echo/invoke", {}),
    ("POST", "/v1/functions/echo/invoke", {"X-Fastfaas-Invocation-Type": "Event"}),
    ("POST", "/v1/functions/echo/invoke", {"X-Fastfaas-Invocation-Type": "DryRun"}),
], ids=["deploy", "patch", "invoke", "invoke-event", "invoke-dry-run"])
def test_json_with_invalid_utf8_is_a_400(api: Api, method: str, target: str,
                                         headers: dict[str, str]) -> None:
    request = ApiRequest(method, target, headers, JSON_WITH_INVALID_UTF8, False)
    [answer] = split_answers(send_raw(api.port, request.encode()))
    assert_api_still_serving(api)
    assert answer.status == 400, answer
    assert check_error_body(answer)["error"] == "InvalidRequest"


def test_a_code_zip_b64_with_non_ascii_characters_is_a_400(api: Api) -> None:
    document = {"handler": "app.handler", "code_zip_b64": "YQ\u00e9="}
    request = ApiRequest("PUT", "/v1/functions/victim", {"Content-Type": "application/json"},
                         json.dumps(document).encode(), False)
    [answer] = split_answers(send_raw(api.port, request.encode()))
    assert_api_still_serving(api)
    assert answer.status == 400, answer
    assert check_error_body(answer)["error"] == "InvalidRequest"
