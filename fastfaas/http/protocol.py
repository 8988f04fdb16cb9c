"""HTTP/1.1 server side, sans-IO: bytes in, whole requests out; responses to bytes.

`ServerConnection` wraps httptools' parser (llhttp), and takes whole requests
in their common form in one C call (`_native.parse_request`). The trio adapter in
`server.py` only moves bytes between a socket and this object and decides
when to time out; everything about the protocol is here and is tested on
bytes alone.

    conn = ServerConnection(body_limit=lambda method, path: 6 << 20)
    conn.receive_data(data)            # may raise ProtocolError (400, 413, 431)
    while (req := conn.next_request()) is not None:
        ...                            # answer with encode_response(...)
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

import httptools

from fastfaas import _native

MAX_HEADER_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 100
# Bodies up to this size may be parsed in one C call (`_native.parse_request`).
FAST_BODY_MAX: Final = 64 * 1024

BodyLimit = Callable[[bytes, bytes], int]


class ProtocolError(Exception):
    """The peer broke the protocol or a limit: answer `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One complete request. Header names are lower-case bytes; `path` is decoded."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "target")

    def __init__(self, method: bytes, target: bytes, headers: dict[bytes, bytes],
                 body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        path, _, query = target.partition(b"?")
        self.path = _unquote_path(path)
        self.query = query

    def header(self, name: bytes, default: bytes = b"") -> bytes:
        return self.headers.get(name, default)

    def __repr__(self) -> str:
        return f"<Request {self.method.decode()} {self.target.decode(errors='replace')}>"


class ServerConnection:
    """The server's half of one HTTP/1.1 connection.

    Args:
        body_limit: given (method, path) once the headers are in, the largest
            body accepted; a larger one is refused with 413 as soon as that is
            known (from Content-Length, or while chunks arrive), not after
            reading it all.
        max_header_bytes: request line plus headers; larger is 431.
        fast_parse: try `_native.parse_request` on whole requests in their common
            form before httptools (False: httptools parses everything; the tests
            hold the two to the same results).
    """

    def __init__(self, body_limit: BodyLimit, max_header_bytes: int = MAX_HEADER_BYTES,
                 fast_parse: bool = True) -> None:
        self._body_limit = body_limit
        self._max_header_bytes = max_header_bytes
        self._fast_parse = fast_parse
        self._after_close = False  # httptools ended a message that closes the connection
        self._parser = httptools.HttpRequestParser(self)
        self._ready: collections.deque[Request] = collections.deque()
        self._body: list[bytes] = []
        self._reset_message()
        self.in_request = False  # some bytes of a request are in: its read deadline runs
        self.requests_begun = 0  # a new value means a new request's deadline starts
        self._fed_in_headers = 0
        self.headers_done = False
        self.closed = False
        self._to_send = b""

    # --- feeding -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer (b"" at EOF).

        Raises:
            ProtocolError: malformed request (400), headers too large (431),
                body over its limit (413), upgrade requested (400). The
                connection is unusable afterwards: answer the requests
                completed before the error (still in `next_request()`), then
                the error, and close.
        """
        if self.closed:
            raise ProtocolError(400, "data after the connection was closed")
        if not data:
            self.closed = True
            if self.in_request:
                raise ProtocolError(400, "the connection closed in the middle of a request")
            return
        if self._fast_parse and not self.in_request and not self._after_close:
            data = self._whole_requests(data)
            if not data:
                return
        in_headers = self.in_request and not self.headers_done
        begun = self.requests_begun
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self.closed = True
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                raise cause from None
            raise ProtocolError(400, f"malformed request: {cause or exc}") from None
        except httptools.HttpParserUpgrade:
            self.closed = True
            raise ProtocolError(400, "protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            self.closed = True
            raise ProtocolError(400, f"malformed request: {exc}") from None
        if in_headers and self.requests_begun == begun and not self.headers_done:
            # llhttp hands over a header only once its line ends: count what
            # is still unparsed too, or one endless header line is never refused.
            self._fed_in_headers += len(data)
            if self._fed_in_headers > self._max_header_bytes:
                self.closed = True
                raise ProtocolError(431, f"request headers exceed {self._max_header_bytes} bytes")

    def _whole_requests(self, data: bytes) -> bytes:
        """Take the requests in their common form at the start of `data`, each parsed
        in one C call into the Request httptools' callbacks would build; the rest
        (a request in any other form, or not whole yet) is httptools'."""
        pos, size = 0, len(data)
        while pos < size:
            got = _native.parse_request(data, pos, self._max_header_bytes, MAX_HEADERS,
                                        FAST_BODY_MAX)
            if got is None:
                break
            method, target, headers, body, pos = got
            self.requests_begun += 1
            self.headers_done = True
            if body:
                limit = self._body_limit(method, target.partition(b"?")[0])
                if len(body) > limit:  # refused as on_headers_complete refuses it
                    self.closed = self.in_request = True
                    raise ProtocolError(
                        413, f"the request body is {len(body)} bytes; the limit is {limit}")
            self._ready.append(Request(method, target, headers, body, True))
        return data[pos:] if pos else data

    def takes_whole(self) -> bool:
        """Whether the next bytes may start a request in its common form (no request
        begun, nothing for httptools): what `receive_data` tries `_native.parse_request`
        on, and what a caller may parse itself instead (see `took_whole`)."""
        return self._fast_parse and not self.in_request and not self._after_close

    def took_whole(self) -> None:
        """The caller read one whole request in the common form from the peer and
        answers it itself, as `next_request` would have given it (see `takes_whole`)."""
        self.requests_begun += 1
        self.headers_done = True

    def quiet(self) -> bool:
        """Nothing to answer or send and nothing begun: the connection is between
        requests, and usable."""
        return not (self._ready or self.in_request or self.closed or self._to_send)

    def next_request(self) -> Request | None:
        """The next complete request, in order, or None."""
        return self._ready.popleft() if self._ready else None

    def data_to_send(self) -> bytes:
        """Interim bytes the protocol owes the peer (a `100 Continue`)."""
        data, self._to_send = self._to_send, b""
        return data

    # --- httptools callbacks ---------------------------------------------------

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        # One list of body chunks per connection, emptied after each request: a new
        # one per request outlived young collections while its connection waited (one
        # per idle keep-alive connection to walk at each: 512 in the Zipf benchmark).
        self._body.clear()
        self._body_size = 0
        self._limit = 0
        self._header_bytes = 0
        self._header_lines = 0

    def on_message_begin(self) -> None:
        self.in_request = True
        self.headers_done = False
        self.requests_begun += 1
        self._fed_in_headers = 0

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._max_header_bytes:
            raise ProtocolError(431, f"request headers exceed {self._max_header_bytes} bytes")

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_lines += 1
        if self._header_bytes > self._max_header_bytes or self._header_lines > MAX_HEADERS:
            if self._header_lines > MAX_HEADERS:
                raise ProtocolError(431, f"more than {MAX_HEADERS} request headers")
            raise ProtocolError(431, f"request headers exceed {self._max_header_bytes} bytes")
        name = name.lower()
        if name in self._headers:
            if name in (b"content-length", b"host", b"authorization"):
                raise ProtocolError(400, f"repeated {name.decode()} header")
            self._headers[name] += b", " + value
        else:
            self._headers[name] = value

    def on_headers_complete(self) -> None:
        self.headers_done = True
        method = self._parser.get_method()
        path = self._url.partition(b"?")[0]
        self._limit = self._body_limit(method, path)
        length = self._headers.get(b"content-length")
        if length is not None and int(length) > self._limit:
            raise ProtocolError(
                413, f"the request body is {int(length)} bytes; the limit is {self._limit}")
        if self._headers.get(b"expect", b"").lower() == b"100-continue":
            self._to_send += b"HTTP/1.1 100 Continue\r\n\r\n"

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limit:
            raise ProtocolError(413, f"the request body exceeds the limit of {self._limit} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep_alive = self._parser.should_keep_alive()
        self._after_close = self._after_close or not keep_alive  # more is httptools' to refuse
        self._ready.append(Request(self._parser.get_method(), self._url, self._headers, body,
                                   keep_alive))
        self.in_request = False
        self._reset_message()


_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}
_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason)
                        for code, reason in _REASONS.items()}


def encode_response(status: int, headers: list[tuple[bytes, bytes]], body: bytes,
                    keep_alive: bool = True, head: bool = False) -> bytes:
    """A whole response with Content-Length (and `Connection: close` when not keep_alive).

    `head`: the answer to a HEAD request: the headers the body would have, no body.
    """
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    # A 204 carries no Content-Length (RFC 9110, 8.6).
    return _native.response_bytes(line, headers, body, status != 204, keep_alive, head)


def _unquote_path(path: bytes) -> str:
    if b"%" not in path:
        return path.decode("latin-1")
    from urllib.parse import unquote_to_bytes

    return unquote_to_bytes(path).decode("utf-8", errors="replace")
