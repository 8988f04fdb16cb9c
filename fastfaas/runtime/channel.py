"""The server's end of a SOCK_SEQPACKET socket to a zygote or an instance."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from typing import Any

import msgspec
import trio

from fastfaas import wire


class AsyncChannel:
    """Messages (msgspec structs) with descriptors, over a SOCK_SEQPACKET socket.

    Several tasks may send on one channel (a datagram is sent whole, and a
    send that must wait for buffer space waits its turn); one task receives.
    On the invocation path a send that fits in the socket buffer goes out
    at once, without a trip through trio's scheduler: the receive that
    follows is the checkpoint.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._raw = sock
        self.fd = sock.fileno()
        self._buf = bytearray(wire.INLINE_MAX + 1)
        self._view = memoryview(self._buf)
        self._send_lock = trio.StrictFIFOLock()
        # Sends that hold or wait for the lock (`_send_lock.locked()` while any is
        # in: trio hands the lock to the next waiter), read without a call.
        self.waiting_sends = 0
        self.closed = False

    async def send(self, msg: msgspec.Struct, fds: list[int] | None = None) -> None:
        """Send one message. Raises OSError (BrokenPipeError...) if the peer is gone."""
        await self.send_bytes(wire.encoder.encode(msg), fds or [])

    async def send_bytes(self, data: bytes, fds: list[int]) -> None:
        if self.closed:
            raise BrokenPipeError("the channel is closed")
        if not fds and self.send_nowait(data):  # the invocation path
            return
        payload, out_fds, memfd = wire.outgoing(data, fds)
        anc = wire.ancillary(out_fds)
        try:
            if not self.waiting_sends:
                try:
                    self._raw.sendmsg([payload], anc)
                    return
                except BlockingIOError:
                    pass
            self.waiting_sends += 1
            try:
                async with self._send_lock:
                    while True:
                        await self._wait(trio.lowlevel.wait_writable)
                        try:
                            self._raw.sendmsg([payload], anc)
                            return
                        except BlockingIOError:
                            pass
            finally:
                self.waiting_sends -= 1
        finally:
            if memfd >= 0:
                os.close(memfd)

    def send_nowait(self, data: bytes) -> bool:
        """Send a message that needs no descriptor, if it can go at once; False
        when it cannot (too large to go inline, the buffer full, the peer gone,
        another send waiting): `send_bytes` then sends it, or reports why not."""
        if self.closed or len(data) > wire.INLINE_MAX or self.waiting_sends:
            return False
        try:
            self._raw.send(data)
        except OSError:
            return False
        return True

    def recv_nowait(self, spin_ns: int = 0) -> tuple[bytes, list[int]] | None:
        """`recv` without waiting (after polling for up to `spin_ns`, as `recv`
        does): one frame, or None at EOF or a reset.

        Raises BlockingIOError when nothing has arrived, wire.FrameError for a
        malformed frame.
        """
        if self.closed:
            return None
        if spin_ns:
            got = self._spin(spin_ns)
            if got is None:
                raise BlockingIOError(errno.EAGAIN, "no reply within the poll")
            return self._frame(*got)
        try:
            n, anc, flags, _ = self._raw.recvmsg_into(
                [self._view], wire._CMSG_SPACE, wire.RECV_FLAGS
            )
        except (ConnectionResetError, BrokenPipeError):
            return None
        return self._frame(n, anc, flags)

    async def _wait(self, wait: Any) -> None:
        if self.closed:
            raise BrokenPipeError("the channel is closed")
        try:
            await wait(self.fd)
        except trio.ClosedResourceError:
            raise BrokenPipeError("the channel is closed") from None

    async def recv(self, spin_ns: int = 0) -> tuple[bytes, list[int]] | None:
        """One frame and its descriptors (the caller owns them); None at EOF.

        The socket is tried once before waiting: a short handler has often
        answered already (the instance woke on this CPU during our send).
        With `spin_ns`, the socket is polled for up to that long while no
        other task is runnable: a reply expected within microseconds then
        does not pay for waking an idle CPU. A reply found at once costs no
        trip through the scheduler (only a cancellation check): the caller's
        next wait is the checkpoint.

        Raises wire.FrameError for a malformed frame.
        """
        if not self.closed:
            try:
                got = self.recv_nowait(spin_ns)
            except OSError:  # nothing yet (or an error the wait below reports)
                pass
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
                return got
        while True:
            try:
                await self._wait(trio.lowlevel.wait_readable)
                n, anc, flags, _ = self._raw.recvmsg_into(
                    [self._view], wire._CMSG_SPACE, wire.RECV_FLAGS
                )
                break
            except BlockingIOError:
                continue
            except (ConnectionResetError, BrokenPipeError):
                return None
        return self._frame(n, anc, flags)

    def _spin(self, spin_ns: int) -> tuple[int, Any, int] | None:
        stats = trio.lowlevel.current_statistics
        end = time.perf_counter_ns() + spin_ns
        while stats().tasks_runnable == 0:
            try:
                n, anc, flags, _ = self._raw.recvmsg_into(
                    [self._view], wire._CMSG_SPACE, wire.RECV_FLAGS
                )
                return n, anc, flags
            except BlockingIOError:
                if time.perf_counter_ns() > end:
                    return None
            except OSError:
                return None
        return None

    def _frame(self, n: int, anc: Any, flags: int) -> tuple[bytes, list[int]] | None:
        if not anc and n > 1 and not flags & wire._TRUNCATED:
            return bytes(self._view[:n]), []  # the common case: a whole message, inline
        fds = wire.parse_fds(anc)
        if n == 0 and not fds:
            return None
        return wire.incoming(bytes(self._view[:n]), fds, flags)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(RuntimeError):  # outside trio: a late collection
                trio.lowlevel.notify_closing(self.fd)
            self._raw.close()
