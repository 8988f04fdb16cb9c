"""The sans-IO HTTP/1.1 server connection (fastfaas/http/protocol.py), on bytes alone."""

from __future__ import annotations

from collections.abc import Iterator

import httptools
import pytest

from fastfaas import _native
from fastfaas.http.protocol import (
    MAX_HEADERS,
    ProtocolError,
    Request,
    ServerConnection,
    encode_response,
)

LIMIT = 1000
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def connection(limit: int = LIMIT, max_header_bytes: int = 4096) -> ServerConnection:
    return ServerConnection(lambda method, path: limit, max_header_bytes)


def requests(conn: ServerConnection) -> list[Request]:
    out = []
    while (request := conn.next_request()) is not None:
        out.append(request)
    return out


def one_request(data: bytes, **kw: int) -> Request:
    conn = connection(**kw)
    conn.receive_data(data)
    [request] = requests(conn)
    return request


def refused(conn: ServerConnection, *chunks: bytes) -> ProtocolError:
    """Feed the chunks; the connection must refuse one of them and be closed."""
    with pytest.raises(ProtocolError) as info:
        for chunk in chunks:
            conn.receive_data(chunk)
    assert conn.closed
    return info.value


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    return (data[i:i + 1] for i in range(len(data)))


# --- requests ----------------------------------------------------------------


def test_simple_get() -> None:
    conn = connection()
    conn.receive_data(b"GET /hello HTTP/1.1\r\nHost: example\r\n\r\n")
    request = conn.next_request()
    assert request is not None
    assert (request.method, request.target, request.path, request.query) == (
        b"GET", b"/hello", "/hello", b"")
    assert request.headers == {b"host": b"example"}
    assert request.header(b"host") == b"example"
    assert request.header(b"missing", b"dflt") == b"dflt"
    assert request.body == b""
    assert request.keep_alive
    assert conn.next_request() is None
    assert not conn.in_request
    assert not conn.closed


def test_content_length_body_fed_byte_by_byte() -> None:
    body = b"0123456789" * 30
    data = b"POST /f HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    conn = connection()
    for chunk in byte_by_byte(data[:-1]):
        conn.receive_data(chunk)
        assert conn.next_request() is None
    conn.receive_data(data[-1:])
    [request] = requests(conn)
    assert request.method == b"POST"
    assert request.body == body
    assert request.headers[b"content-length"] == b"300"


def test_chunked_body_is_reassembled() -> None:
    data = (b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\n\r\n")
    conn = connection()
    for chunk in byte_by_byte(data):
        conn.receive_data(chunk)
    [request] = requests(conn)
    assert request.body == b"hello world"
    assert request.header(b"transfer-encoding") == b"chunked"


def test_pipelined_requests_come_out_in_order() -> None:
    data = (b"GET /1 HTTP/1.1\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
            b"PUT /3 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\n\r\n"
            b"GET /4 HTTP/1.1\r\n")
    conn = connection()
    conn.receive_data(data)
    got = [(r.method, r.path, r.body) for r in requests(conn)]
    assert got == [(b"GET", "/1", b""), (b"POST", "/2", b"abc"), (b"PUT", "/3", b"xy")]
    assert conn.in_request  # /4 is on its way
    conn.receive_data(b"\r\n")
    assert [r.path for r in requests(conn)] == ["/4"]


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
    (b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\n\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_keep_alive(head: bytes, keep_alive: bool) -> None:
    assert one_request(head).keep_alive is keep_alive


def test_header_names_are_lower_cased_and_repeats_joined() -> None:
    request = one_request(b"GET / HTTP/1.1\r\nX-Thing: a\r\nACCEPT: text/plain\r\n"
                          b"x-thing: b\r\nX-THING: c\r\n\r\n")
    assert request.headers == {b"x-thing": b"a, b, c", b"accept": b"text/plain"}


@pytest.mark.parametrize("headers", [
    b"Content-Length: 1\r\nContent-Length: 1\r\n",
    b"Content-Length: 1\r\ncontent-length: 2\r\n",
    b"Host: a\r\nHost: a\r\n",
    b"Host: a\r\nHOST: b\r\n",
    b"Authorization: a\r\nAuthorization: b\r\n",
])
def test_repeated_framing_or_identity_headers_are_refused(headers: bytes) -> None:
    error = refused(connection(), b"POST / HTTP/1.1\r\n" + headers + b"\r\nx")
    assert error.status == 400


@pytest.mark.parametrize("data", [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_request_is_400_and_closes(data: bytes) -> None:
    conn = connection()
    error = refused(conn, data)
    assert error.status == 400
    assert "malformed" in error.message
    # Unusable afterwards: more bytes are refused too.
    assert refused(conn, b"GET / HTTP/1.1\r\n\r\n").status == 400


def test_malformed_request_is_refused_when_fed_byte_by_byte() -> None:
    assert refused(connection(), *byte_by_byte(b"GET / HTTP/1.1\r\n\x01\r\n\r\n")).status == 400


# --- limits ------------------------------------------------------------------


def test_content_length_over_the_limit_is_413_at_the_headers() -> None:
    seen: list[tuple[bytes, bytes]] = []

    def body_limit(method: bytes, path: bytes) -> int:
        seen.append((method, path))
        return 10

    conn = ServerConnection(body_limit)
    head = b"POST /fn/x?q=1 HTTP/1.1\r\nContent-Length: 11\r\n\r\n"
    conn.receive_data(head[:-1])
    assert seen == []  # asked once the headers are in, not before
    # The last byte of the headers is enough: no body byte has been sent.
    error = refused(conn, head[-1:])
    assert error.status == 413
    assert "11" in error.message and "10" in error.message
    assert seen == [(b"POST", b"/fn/x")]


def test_body_exactly_at_the_limit_is_accepted() -> None:
    request = one_request(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", limit=10)
    assert request.body == b"0123456789"


def test_the_limit_is_asked_per_request() -> None:
    limits = {b"/small": 2, b"/big": 100}
    conn = ServerConnection(lambda method, path: limits[path])
    conn.receive_data(b"POST /big HTTP/1.1\r\nContent-Length: 5\r\n\r\n12345")
    assert [r.body for r in requests(conn)] == [b"12345"]
    assert refused(conn, b"POST /small HTTP/1.1\r\nContent-Length: 5\r\n\r\n").status == 413


def test_chunked_body_over_the_limit_is_413() -> None:
    conn = connection(limit=10)
    conn.receive_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.receive_data(b"6\r\nabcdef\r\n")
    error = refused(conn, b"6\r\nghijkl\r\n", b"0\r\n\r\n")
    assert error.status == 413
    assert requests(conn) == []


def test_headers_over_max_header_bytes_fed_byte_by_byte_are_431() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 50)
                                             for i in range(40)) + b"\r\n"
    assert len(data) > 2048
    error = refused(connection(max_header_bytes=2048), *byte_by_byte(data))
    assert error.status == 431


def test_headers_over_max_header_bytes_in_one_chunk_are_431() -> None:
    data = b"GET / HTTP/1.1\r\nx-big: " + b"v" * 5000 + b"\r\n\r\n"
    assert refused(connection(max_header_bytes=4096), data).status == 431


def test_long_url_counts_against_max_header_bytes() -> None:
    data = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n\r\n"
    assert refused(connection(max_header_bytes=4096), data).status == 431


def test_headers_just_under_max_header_bytes_are_accepted() -> None:
    request = one_request(b"GET / HTTP/1.1\r\nx-big: " + b"v" * 3000 + b"\r\n\r\n",
                          max_header_bytes=4096)
    assert len(request.headers[b"x-big"]) == 3000


def test_an_unterminated_header_over_max_header_bytes_is_431() -> None:
    conn = connection(max_header_bytes=4096)
    conn.receive_data(b"GET / HTTP/1.1\r\nx-big: ")
    error = refused(conn, *([b"v" * 1024] * 64))  # 64 KiB of one header value, no CRLF
    assert error.status == 431


def test_more_than_max_headers_is_431() -> None:
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: v\r\n" % i for i in range(MAX_HEADERS))
    request = one_request(head + b"\r\n", max_header_bytes=64 * 1024)
    assert len(request.headers) == MAX_HEADERS
    conn = connection(max_header_bytes=64 * 1024)
    error = refused(conn, head + b"x-one-more: v\r\n\r\n")
    assert error.status == 431


def test_more_than_max_header_lines_with_one_name_is_431() -> None:
    data = b"GET / HTTP/1.1\r\n" + b"x-a: v\r\n" * (MAX_HEADERS + 1) + b"\r\n"
    assert refused(connection(max_header_bytes=64 * 1024), data).status == 431


# --- Expect: 100-continue ----------------------------------------------------


def test_expect_100_continue_is_owed_once_after_the_headers() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n")
    assert conn.data_to_send() == b""
    conn.receive_data(b"\r\n")
    assert conn.data_to_send() == CONTINUE
    assert conn.data_to_send() == b""
    conn.receive_data(b"da")
    conn.receive_data(b"ta")
    assert conn.data_to_send() == b""
    assert [r.body for r in requests(conn)] == [b"data"]


def test_no_100_continue_without_expect() -> None:
    conn = connection()
    conn.receive_data(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n")
    assert conn.data_to_send() == b""


def test_expect_100_continue_with_a_body_too_big_is_413_not_continue() -> None:
    conn = connection(limit=3)
    error = refused(conn, b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert error.status == 413
    assert conn.data_to_send() == b""


# --- EOF and progress flags --------------------------------------------------


@pytest.mark.parametrize("partial", [
    b"G",
    b"GET / HTTP/1.1\r\nHost: a\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
])
def test_eof_in_the_middle_of_a_request_is_400(partial: bytes) -> None:
    conn = connection()
    conn.receive_data(partial)
    error = refused(conn, b"")
    assert error.status == 400
    assert requests(conn) == []


def test_eof_between_requests_is_fine() -> None:
    conn = connection()
    conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    conn.receive_data(b"")
    assert conn.closed
    assert len(requests(conn)) == 1


def test_eof_before_any_request_is_fine() -> None:
    conn = connection()
    conn.receive_data(b"")
    assert conn.closed
    assert requests(conn) == []


def test_in_request_and_headers_done_follow_the_bytes() -> None:
    conn = connection()
    assert (conn.in_request, conn.headers_done) == (False, False)
    conn.receive_data(b"P")
    assert (conn.in_request, conn.headers_done) == (True, False)
    conn.receive_data(b"OST / HTTP/1.1\r\nContent-Length: 2\r\n\r")
    assert (conn.in_request, conn.headers_done) == (True, False)
    conn.receive_data(b"\n")
    assert (conn.in_request, conn.headers_done) == (True, True)
    conn.receive_data(b"a")
    assert (conn.in_request, conn.headers_done) == (True, True)
    conn.receive_data(b"b")
    assert not conn.in_request
    # The next request starts over: its headers are not done.
    conn.receive_data(b"GET")
    assert (conn.in_request, conn.headers_done) == (True, False)
    conn.receive_data(b" / HTTP/1.1\r\n\r\n")
    assert not conn.in_request
    assert [r.method for r in requests(conn)] == [b"POST", b"GET"]


@pytest.mark.parametrize("data", [
    b"GET /chat HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
])
def test_upgrade_is_400(data: bytes) -> None:
    error = refused(connection(), data)
    assert error.status == 400
    assert "upgrade" in error.message


# --- targets -----------------------------------------------------------------


def test_path_is_percent_decoded_and_query_kept_raw() -> None:
    request = one_request(b"GET /fn/caf%C3%A9/a%20b%2Fc?x=%20y&z=%C3%A9 HTTP/1.1\r\n\r\n")
    assert request.path == "/fn/caf\u00e9/a b/c"
    assert request.query == b"x=%20y&z=%C3%A9"
    assert request.target == b"/fn/caf%C3%A9/a%20b%2Fc?x=%20y&z=%C3%A9"


def test_path_without_escapes_is_kept_and_empty_query() -> None:
    request = one_request(b"GET /fn/x? HTTP/1.1\r\n\r\n")
    assert (request.path, request.query) == ("/fn/x", b"")


# --- responses ---------------------------------------------------------------


class _ParsedResponse:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.complete = False
        self.keep_alive: bool | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True
        # llhttp forgets the message's keep-alive once it is done: ask while it is current.
        self.keep_alive = self.parser.should_keep_alive()


def parse_response(data: bytes) -> tuple[int, bool | None, _ParsedResponse]:
    parsed = _ParsedResponse()
    parsed.parser.feed_data(data)
    assert parsed.complete
    return parsed.parser.get_status_code(), parsed.keep_alive, parsed


def test_encode_response_parses_back() -> None:
    body = b'{"ok": true}'
    data = encode_response(200, [(b"content-type", b"application/json"), (b"x-a", b"1")], body)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    status, keep_alive, parsed = parse_response(data)
    assert status == 200
    assert keep_alive is True
    assert parsed.body == body
    assert parsed.headers == [(b"content-type", b"application/json"), (b"x-a", b"1"),
                              (b"content-length", str(len(body)).encode())]


def test_encode_response_without_keep_alive_says_connection_close() -> None:
    data = encode_response(413, [], b"too big", keep_alive=False)
    assert data.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    status, keep_alive, parsed = parse_response(data)
    assert status == 413
    assert keep_alive is False
    assert (b"connection", b"close") in parsed.headers
    assert parsed.body == b"too big"


def test_encode_response_refuses_headers_that_are_not_pairs_of_bytes() -> None:
    for headers in ([[b"x-a", b"1"]], [(b"x-a", "1")], [(b"x-a",)], [b"x-a: 1"]):
        with pytest.raises(TypeError, match="a header must be a"):
            encode_response(200, headers, b"")  # type: ignore[arg-type]


def test_encode_response_empty_body_and_unknown_status() -> None:
    status, keep_alive, parsed = parse_response(encode_response(599, [], b""))
    assert status == 599
    assert keep_alive is True
    assert parsed.headers == [(b"content-length", b"0")]
    assert parsed.body == b""


def test_encoded_responses_back_to_back_parse_as_two() -> None:
    data = encode_response(200, [], b"one") + encode_response(404, [], b"two!")
    seen: list[bytes] = []

    class Collect(_ParsedResponse):
        def on_message_complete(self) -> None:
            seen.append(self.body)
            self.body = b""

    Collect().parser.feed_data(data)
    assert seen == [b"one", b"two!"]


COMMON = (b"POST /v1/functions/f/invoke?x=1 HTTP/1.1\r\nHost: h:80\r\nContent-Type: a/b; q=1\r\n"
          b"Content-Length: 2\r\nConnection: Keep-Alive\r\n\r\n{}")


def test_the_c_parser_takes_a_whole_request_in_the_common_form() -> None:
    got = _native.parse_request(b"GET / HTTP/1.1\r\n\r\n" + COMMON, 18, 1024, 100, 64)
    assert got == (b"POST", b"/v1/functions/f/invoke?x=1",
                   {b"host": b"h:80", b"content-type": b"a/b; q=1", b"content-length": b"2",
                    b"connection": b"Keep-Alive"}, b"{}", 18 + len(COMMON))
    assert _native.parse_request(b"GET / HTTP/1.1\r\n\r\n", 0, 1024, 100, 64) == (
        b"GET", b"/", {}, b"", 18)


@pytest.mark.parametrize("change", [
    (b"POST ", b"post "), (b"POST ", b"BREW "), (b"HTTP/1.1", b"HTTP/1.0"),
    (b"?x=1", b"#x"), (b"/v1", b"v1"), (b"Host: h:80", b"Host: h:80\r\nhost: h"),
    (b"Host: h:80", b"Host: h:80 "), (b"Host: h:80", b"Host: h\t80"),
    (b"Host: h:80", b"Host: h\xe9"), (b"Host: h:80", b"Host:"), (b"Host:", b"Host :"),
    (b"Host: h:80\r\n", b"Host: h:80\r\n folded\r\n"), (b"Host: h:80\r\n", b"Host: h:80\n"),
    (b"Keep-Alive", b"close"), (b"Content-Length: 2", b"Transfer-Encoding: chunked"),
    (b"Content-Type", b"Expect: 100-continue\r\nX"), (b"Content-Type", b"Upgrade: h2c\r\nX"),
    (b"Length: 2", b"Length: +2"), (b"Length: 2", b"Length: 0000000002"), (b"{}", b"{"),
    (b"Connection: Keep-Alive", b"Proxy-Connection: keep-alive"),
])
def test_the_c_parser_leaves_every_other_form_to_httptools(change: tuple[bytes, bytes]) -> None:
    old, new = change
    assert old in COMMON
    assert _native.parse_request(COMMON.replace(old, new, 1), 0, 1024, 100, 64) is None


def test_the_c_parser_leaves_requests_past_its_limits_to_httptools() -> None:
    size = len(COMMON) - 2  # the head
    assert _native.parse_request(COMMON, 0, size, 5, 2) is not None
    assert _native.parse_request(COMMON, 0, size - 1, 5, 2) is None  # head
    assert _native.parse_request(COMMON, 0, size, 3, 2) is None  # headers
    assert _native.parse_request(COMMON, 0, size, 5, 1) is None  # body


def test_the_c_parser_counts_the_head_as_server_connection_does_for_its_431() -> None:
    # "name:value" lines are 3 bytes longer than name and value as sent, but count 4.
    head = b"GET /a HTTP/1.1\r\n" + b"".join(b"h%02d:v\r\n" % i for i in range(40)) + b"\r\n"
    counted = len(b"/a") + 40 * (3 + 1 + 4)
    assert counted > len(head)
    assert _native.parse_request(head, 0, counted, 100, 0) is not None
    assert _native.parse_request(head, 0, counted - 1, 100, 0) is None
    for fast in (True, False):  # and the connection refuses it either way
        conn = ServerConnection(lambda method, path: 0, counted - 1, fast_parse=fast)
        with pytest.raises(ProtocolError) as refused:
            conn.receive_data(head)
        assert refused.value.status == 431


def test_after_a_request_that_closes_the_connection_more_bytes_are_refused_either_way() -> None:
    for fast in (True, False):
        conn = ServerConnection(lambda method, path: 0, fast_parse=fast)
        conn.receive_data(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")
        request = conn.next_request()
        assert request is not None and not request.keep_alive
        with pytest.raises(ProtocolError) as refused:
            conn.receive_data(b"GET /b HTTP/1.1\r\n\r\n")
        assert refused.value.status == 400
