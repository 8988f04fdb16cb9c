"""A lean HTTP/1.1 keep-alive client on raw sockets, for load generation.

httpx manages ~1k req/s here; this does tens of thousands: the request bytes
are built once, the socket is used directly (waiting in trio only when a
call would block) and httptools parses the responses. Only what a load
report needs is kept of a response: status, the fastfaas headers, the body's
length.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Final

import httptools
import trio

from fastfaas.http.server import send_all

RECEIVE_BYTES: Final = 256 * 1024


class Response:
    __slots__ = ("body_bytes", "complete", "duration_us", "function_error", "keep_alive",
                 "server_us", "start", "status")

    def __init__(self) -> None:
        self.status = 0
        self.start = ""
        self.function_error = ""
        self.duration_us = -1
        self.server_us = -1
        self.body_bytes = 0
        self.complete = False
        self.keep_alive = True


class _Parsing:
    """httptools callbacks filling the current Response."""

    __slots__ = ("parser", "response")

    def __init__(self) -> None:
        self.response = Response()
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not name.startswith((b"x-fastfaas-", b"X-Fastfaas-")):
            return
        key = name.lower()
        r = self.response
        if key == b"x-fastfaas-start":
            r.start = value.decode("ascii", "replace")
        elif key == b"x-fastfaas-duration-us":
            r.duration_us = int(value)
        elif key == b"x-fastfaas-server-us":
            r.server_us = int(value)
        elif key == b"x-fastfaas-function-error":
            r.function_error = value.decode("ascii", "replace")

    def on_body(self, body: bytes) -> None:
        self.response.body_bytes += len(body)

    def on_message_complete(self) -> None:
        r = self.response
        r.status = self.parser.get_status_code()
        r.keep_alive = self.parser.should_keep_alive()
        r.complete = True


class ConnectionClosed(Exception):
    """The server closed the connection (or reset it) before answering.

    `before_response`: no byte of the response had arrived, so the server may
    have closed an idle keep-alive connection just as the request went out.
    """

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


# What a peer's close or reset looks like on send or recv.
_PEER_CLOSED = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class Connection:
    """One keep-alive connection; one request at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._parsing = _Parsing()
        self.closed = False
        self.timed_out = False  # closed by a watchdog while a request waited
        self.busy_since = 0.0  # when the request in flight was sent (the watchdog's clock)
        self.answered = 0  # responses received on this connection
        # Open and unused before the request now going out (kept alive after an
        # answer, or opened ahead of time): the server may have closed it as idle.
        self.was_idle = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            try:
                sock.connect((host, port))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connecting to {host}:{port} failed") from None
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def request(self, data: bytes) -> Response:
        """Send one whole request, return its response.

        Raises:
            ConnectionClosed: the server closed or reset the connection first
                (`before_response` says whether any of the response had come).
            OSError: the socket failed otherwise.
            trio.ClosedResourceError: close() was called meanwhile (a timeout).
        """
        sock = self.sock
        try:
            await send_all(sock, data)
        except _PEER_CLOSED as exc:
            self.close()
            raise ConnectionClosed(f"sending failed: {exc}", before_response=True) from None
        parsing = self._parsing
        response = parsing.response = Response()
        received = False
        while not response.complete:
            try:
                chunk = sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except _PEER_CLOSED as exc:
                self.close()
                raise ConnectionClosed(f"receiving failed: {exc}",
                                       before_response=not received) from None
            if not chunk:
                self.close()
                raise ConnectionClosed("the server closed the connection",
                                       before_response=not received)
            received = True
            try:
                parsing.parser.feed_data(chunk)
            except httptools.HttpParserError as exc:
                self.close()
                raise ConnectionClosed(f"bad response: {exc}", before_response=False) from None
        self.answered += 1
        self.was_idle = True
        if not response.keep_alive:
            self.close()
        return response

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(RuntimeError):  # outside trio
                trio.lowlevel.notify_closing(self.sock)
            self.sock.close()


def build_request(host: str, port: int, method: str, path: str, body: bytes,
                  headers: dict[str, str] | None = None) -> bytes:
    """The bytes of one request, built once and sent many times."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}"]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
