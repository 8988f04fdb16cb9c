"""The pre-fork pool's worker: imports the handler once, then one invocation at a time.

prefork_server.py starts it through multiprocessing's forkserver with `serve`
as the target and one end of a stream socketpair. Frames both ways: a request
is REQUEST (the event's length) and the event; a reply is REPLY (payload
length, kind, handler duration in us, -1 if none ran) and the payload. The
first reply says READY, or INIT_ERROR with the import's error. The worker
exits at EOF.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
from typing import Final

import _baseline

REQUEST: Final = struct.Struct("!I")
REPLY: Final = struct.Struct("!IBq")
# Reply kinds.
READY, OK, UNHANDLED, BAD_REQUEST, INIT_ERROR = range(5)


def serve(sock: socket.socket, code_dir: str, spec: str, function_name: str,
          timeout_s: float) -> None:
    """The worker's life: ends at EOF, or quietly when the front end has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front end decides when the pool stops
    sock.setblocking(True)
    with contextlib.suppress(ConnectionError):
        _serve(sock, code_dir, spec, function_name, timeout_s)


def _serve(sock: socket.socket, code_dir: str, spec: str, function_name: str,
           timeout_s: float) -> None:
    try:
        handler, two_args = _baseline.load_handler(code_dir, spec)
    except Exception as exc:
        _send(sock, INIT_ERROR, -1, _baseline.error_body(exc))
        return
    _send(sock, READY, -1, b"")
    frames = sock.makefile("rb")
    while True:
        head = frames.read(REQUEST.size)
        if len(head) < REQUEST.size:
            return  # EOF: the front end closed the pool
        (size,) = REQUEST.unpack(head)
        body = frames.read(size)
        if len(body) < size:
            return
        outcome = _baseline.invoke(handler, two_args, function_name, body, timeout_s)
        kind = (BAD_REQUEST if outcome.status == 400
                else OK if outcome.error is None else UNHANDLED)
        _send(sock, kind, outcome.duration_us, outcome.body)


def _send(sock: socket.socket, kind: int, duration_us: int, payload: bytes) -> None:
    sock.sendall(REPLY.pack(len(payload), kind, duration_us) + payload)
