"""The template zygote: started once per runtime, forks generic zygotes.

    python -I -m fastfaas.worker.template CONTROL_FD LIVENESS_FD SERVER_PID

It preloads what every zygote needs, freezes its heap, and then only forks.
It exits when the liveness pipe reaches EOF (the server is gone) or its
control socket closes, and its children follow through their parent-death
signal.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import traceback
from typing import NoReturn

from fastfaas import _native, wire
from fastfaas.errors import SpawnError
from fastfaas.wire import ForkZygote, TemplateReady, ZygoteExited, ZygoteForked
from fastfaas.worker import instance, sandbox, zygote  # noqa: F401  (preloaded for every zygote)

# A reserved status: a template that fails to boot is not restarted.
EXIT_BOOT_FAILED = 78


def main(argv: list[str]) -> None:
    try:
        ctl_fd, liveness_fd, server_pid = (int(a) for a in argv)
    except ValueError:
        print("usage: python -m fastfaas.worker.template CONTROL_FD LIVENESS_FD SERVER_PID",
              file=sys.stderr)
        os._exit(EXIT_BOOT_FAILED)
    _native.set_pdeathsig(signal.SIGKILL)
    if os.getppid() != server_pid:
        os._exit(EXIT_BOOT_FAILED)
    _native.set_child_subreaper(True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    chan = wire.BlockingChannel(socket.socket(fileno=ctl_fd))
    wakeup = zygote.SignalWakeup(signal.SIGCHLD)
    _native.seccomp_length()  # the filter is built here, once, for every zygote forked
    gc.collect()
    gc.freeze()
    chan.send(TemplateReady(os.getpid()))

    children: dict[int, int] = {}
    poller = select.poll()
    poller.register(ctl_fd, select.POLLIN)
    poller.register(liveness_fd, select.POLLIN)
    poller.register(wakeup.r, select.POLLIN)
    # Strict zygotes are PID 1 of their own namespace: set before each such
    # fork, and this process's own namespace put back for children after it.
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    own = [ctl_fd, liveness_fd, *wakeup.fds(), own_pidns]

    def report_exit(zygote_id: int, pid: int, status: int) -> None:
        chan.send(ZygoteExited(zygote_id, pid, status))

    while True:
        for fd, _events in poller.poll():
            if fd == liveness_fd:
                _stop(children)
            if fd == wakeup.r:
                wakeup.drain()
                zygote.reap(children, report_exit)
                continue
            got = chan.recv()
            if got is None:
                _stop(children)
            data, fds = got
            msg = wire.template_in.decode(data)
            if not isinstance(msg, ForkZygote) or len(fds) != 1:
                wire.close_all(fds)
                continue
            (zctl,) = fds
            try:
                pid = _fork_zygote(own, own_pidns, msg.sandbox is not None)
            except (SpawnError, OSError):
                traceback.print_exc()
                os.close(zctl)
                chan.send(ZygoteForked(msg.zygote_id, 0))  # no pidfd: it failed
                continue
            if pid == 0:
                chan.sock.detach()
                signal.set_wakeup_fd(-1)
                zygote.generic_main(zctl, msg.sandbox)
                os._exit(0)
            children[pid] = msg.zygote_id
            os.close(zctl)
            pidfd = os.pidfd_open(pid)
            try:
                chan.send(ZygoteForked(msg.zygote_id, pid), [pidfd])
            finally:
                os.close(pidfd)
        zygote.reap(children, report_exit)


def _fork_zygote(own: list[int], own_pidns: int, new_pidns: bool) -> int:
    if new_pidns:
        _native.unshare(_native.NEWPID)  # for the next child only: undone below
    try:
        pid = _native.spawn((), own, (-1, -1, -1), (), new_session=False,
                            reset_signals=True, pdeathsig=signal.SIGKILL)
    except BaseException:
        if new_pidns:
            _native.setns(own_pidns, _native.NEWPID)
        raise
    if new_pidns and pid != 0:
        _native.setns(own_pidns, _native.NEWPID)
    return pid


def _stop(children: dict[int, int]) -> NoReturn:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
