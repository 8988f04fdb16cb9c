"""The server's end of a SOCK_SEQPACKET socket to a zygote or an instance."""

from __future__ import annotations

import os
import socket

import msgspec
import trio

from fastfaas import wire


class AsyncChannel:
    """Messages (msgspec structs) with descriptors, over a trio socket.

    Sends are serialised by a lock, so several tasks may share one channel;
    only one task may receive.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = trio.socket.from_stdlib_socket(sock)
        self._buf = bytearray(wire.INLINE_MAX + 1)
        self._view = memoryview(self._buf)
        self._send_lock = trio.StrictFIFOLock()
        self.closed = False

    async def send(self, msg: msgspec.Struct, fds: list[int] | None = None) -> None:
        """Send one message. Raises OSError (BrokenPipeError...) if the peer is gone."""
        await self.send_bytes(wire.encoder.encode(msg), fds or [])

    async def send_bytes(self, data: bytes, fds: list[int]) -> None:
        payload, out_fds, memfd = wire.outgoing(data, fds)
        try:
            async with self._send_lock:
                await self.sock.sendmsg([payload], wire.ancillary(out_fds))
        except trio.ClosedResourceError:
            raise BrokenPipeError("the channel is closed") from None
        finally:
            if memfd >= 0:
                os.close(memfd)

    async def recv(self) -> tuple[bytes, list[int]] | None:
        """One frame and its descriptors (the caller owns them); None at EOF.

        Raises wire.FrameError for a malformed frame.
        """
        try:
            n, anc, flags, _ = await self.sock.recvmsg_into(
                [self._view], wire._CMSG_SPACE, wire.RECV_FLAGS
            )
        except (ConnectionResetError, trio.ClosedResourceError):
            return None
        fds = wire.parse_fds(anc)
        if n == 0 and not fds:
            return None
        return wire.incoming(bytes(self._view[:n]), fds, flags)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()
