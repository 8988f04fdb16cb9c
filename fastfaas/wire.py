"""The messages between the server, zygotes and instances, and their framing.

One message per SOCK_SEQPACKET datagram, msgpack-encoded msgspec structs
(tagged unions; encoders and decoders built once). Descriptors travel with a
message by SCM_RIGHTS and are received with MSG_CMSG_CLOEXEC. A message over
INLINE_MAX bytes goes as a sealed memfd and a one-byte marker instead.

This module imports only the standard library and msgspec: zygotes import it.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import stat
from typing import Final

import msgspec

INLINE_MAX: Final = 64 * 1024
MAX_PAYLOAD: Final = 6 * 1024 * 1024
MAX_FRAME: Final = MAX_PAYLOAD + 64 * 1024
MAX_FDS: Final = 16
LOG_TAIL: Final = 4096
_MEMFD_MARK: Final = b"M"  # msgpack for the integer 77: never a valid message
_FD_SIZE: Final = array.array("i").itemsize
_CMSG_SPACE: Final = socket.CMSG_SPACE(MAX_FDS * _FD_SIZE)
_SEALS: Final = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class _Msg(msgspec.Struct, tag=True, array_like=True):
    pass


# --- server <-> template -------------------------------------------------


class TemplateReady(_Msg):
    pid: int


class Sandbox(msgspec.Struct, frozen=True):
    """The strict level's namespaces and filesystem view for a generic zygote."""

    data_dir: str  # hidden (tmpfs over it); code is reached through its code/ directory
    network: bool  # the host's network namespace, or a new one with only loopback
    uid: int  # the unprivileged ids outside the user namespace
    gid: int
    expose: tuple[str, ...] = ()  # host paths shown read-only even under a hidden directory


class ForkZygote(_Msg):
    """fds: [the new zygote's end of its control socket]"""

    zygote_id: int
    sandbox: Sandbox | None = None  # None: `none` or `standard`


class ZygoteForked(_Msg):
    """fds: [pidfd of the zygote]"""

    zygote_id: int
    pid: int


class ZygoteExited(_Msg):
    zygote_id: int
    pid: int
    status: int


# --- server <-> zygote ---------------------------------------------------


class Claim(_Msg):
    """Become this function version's zygote. fds: the zygote cgroup's join files."""

    function_name: str
    version: str
    code_dir: str
    handler: str
    env: dict[str, str]
    memory_mb: int
    timeout_s: float
    rlimits: list[tuple[int, int, int]]
    self_usage: bool = True  # no cgroups: the instance measures its own CPU and memory
    tmp_mb: int = 512  # strict: the size of the zygote's own /tmp
    region: str = "us-east-1"  # AWS_REGION, and the region of its ARN


class Claimed(_Msg):
    ok: bool
    error_type: str = ""
    error_message: str = ""
    stack_trace: list[str] = []
    log_tail: bytes = b""
    threads: int = 1


class Spawn(_Msg):
    """Fork an instance, and hand it `first` (an encoded Invoke) to run at once.
    fds: [the instance's end of its socket to the server, *the cgroup join files]"""

    instance_id: int
    first: bytes = b""


class Spawned(_Msg):
    """fds: [pidfd of the instance]"""

    instance_id: int
    pid: int


class SpawnFailed(_Msg):
    instance_id: int
    errno: int
    step: str
    message: str


class InstanceExited(_Msg):
    instance_id: int
    pid: int
    status: int


# --- server <-> instance -------------------------------------------------


class Invoke(_Msg):
    request_id: str
    payload: bytes  # the event, JSON
    deadline: float  # time.monotonic() in the server; the clock is shared


class Warmup(_Msg):
    """Run the invocation path once with a no-op in place of the handler."""


class Result(_Msg):
    ok: bool
    payload: bytes = b""  # JSON result; for errors the Lambda-shaped error body
    error_type: str = ""
    error_message: str = ""
    too_large: bool = False
    duration_ns: int = 0
    cpu_ns: int = 0
    max_rss_kb: int = 0
    log_tail: bytes = b""
    request_id: str = ""  # the Invoke's: an answer to another invocation is refused


ToTemplate = ForkZygote
FromTemplate = TemplateReady | ZygoteForked | ZygoteExited
ToZygote = Claim | Spawn
FromZygote = Claimed | Spawned | SpawnFailed | InstanceExited
ToInstance = Invoke | Warmup
FromInstance = Result

encoder: Final = msgspec.msgpack.Encoder()
template_in: Final = msgspec.msgpack.Decoder(ToTemplate)
template_out: Final = msgspec.msgpack.Decoder(FromTemplate)
zygote_in: Final = msgspec.msgpack.Decoder(ToZygote)
zygote_out: Final = msgspec.msgpack.Decoder(FromZygote)
instance_in: Final = msgspec.msgpack.Decoder(ToInstance)
instance_out: Final = msgspec.msgpack.Decoder(FromInstance)


class FrameError(Exception):
    """A peer sent something that is not a valid frame."""


def new_seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)


def to_memfd(data: bytes) -> int:
    """A sealed memfd holding `data` (for messages over INLINE_MAX)."""
    fd = os.memfd_create("fastfaas-msg", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_memfd(fd: int, limit: int = MAX_FRAME) -> bytes:
    """The contents of a regular file sent by a peer, at most `limit` bytes."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise FrameError("large message: the descriptor is not a regular file")
    if st.st_size > limit:
        raise FrameError(f"large message of {st.st_size} bytes is over the {limit} byte limit")
    chunks = []
    offset = 0
    while offset < st.st_size:
        chunk = os.pread(fd, st.st_size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def outgoing(data: bytes, fds: list[int]) -> tuple[bytes, list[int], int]:
    """(bytes to send, fds to send, memfd to close after sending or -1)."""
    if len(data) <= INLINE_MAX:
        return data, fds, -1
    memfd = to_memfd(data)
    return _MEMFD_MARK, [memfd, *fds], memfd


def ancillary(fds: list[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


def parse_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % _FD_SIZE)])
            fds.extend(arr)
    return fds


def incoming(data: bytes, fds: list[int], flags: int) -> tuple[bytes, list[int]]:
    """Undo `outgoing`: read a memfd message; raise FrameError on a truncated one."""
    if flags & _TRUNCATED:
        close_all(fds)
        raise FrameError("message or its descriptors were truncated")
    if data == _MEMFD_MARK:
        if not fds:
            raise FrameError("large-message marker without a descriptor")
        try:
            data = read_memfd(fds[0])
        finally:
            os.close(fds[0])
        fds = fds[1:]
    return data, fds


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


RECV_FLAGS: Final = int(socket.MSG_CMSG_CLOEXEC)
_TRUNCATED: Final = int(socket.MSG_TRUNC | socket.MSG_CTRUNC)  # plain ints: enum ops are slow


class BlockingChannel:
    """A SOCK_SEQPACKET socket in a zygote or instance (blocking, one thread)."""

    def __init__(self, sock: socket.socket, buffer: bytearray | None = None) -> None:
        self.sock = sock
        # A forked instance reuses a buffer its zygote allocated: copy-on-write
        # then costs only the pages a message touches.
        self._buf = buffer if buffer is not None else bytearray(INLINE_MAX + 1)
        self._view = memoryview(self._buf)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: msgspec.Struct, fds: list[int] | None = None) -> None:
        data = encoder.encode(msg)
        if not fds and len(data) <= INLINE_MAX:  # an instance's Result, most often
            self.sock.send(data)
            return
        data, out_fds, memfd = outgoing(data, fds or [])
        try:
            self.sock.sendmsg([data], ancillary(out_fds))
        finally:
            if memfd >= 0:
                os.close(memfd)

    def recv(self) -> tuple[bytes, list[int]] | None:
        """One frame and its descriptors; None at EOF (or a reset: a peer that
        closed with a message of ours unread)."""
        try:
            n, anc, flags, _ = self.sock.recvmsg_into([self._view], _CMSG_SPACE, RECV_FLAGS)
        except ConnectionResetError:
            return None
        if not anc and n > 1 and not flags & _TRUNCATED:
            return bytes(self._view[:n]), []  # an instance's Invoke, most often
        fds = parse_fds(anc)
        if n == 0 and not fds:
            return None
        return incoming(bytes(self._view[:n]), fds, flags)
