"""Helpers every sandbox case ships with (zipped beside it as common.py).

Only the standard library: this runs inside the strict sandbox.
"""

import ctypes
import errno
import os
import socket

MARK = "ffsbx-"  # every file a case writes, and every process it names, starts so
PR_SET_NAME = 15

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def outcome(call, *args):
    """"ok", or the errno name of the OSError that `call(*args)` raised."""
    try:
        call(*args)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "ok"


def syscall(nr, *args):
    """A raw system call: "ok" or the errno name (what seccomp answered, say)."""
    ctypes.set_errno(0)
    rc = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    if rc < 0:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return "ok"


def name_process(name):
    """/proc/<pid>/comm: how the test finds this process from the host."""
    libc.prctl(PR_SET_NAME, ctypes.c_char_p((MARK + name).encode()[:15]), 0, 0, 0)


def mark(tag):
    """Leave a file where a leak would show: /tmp, /dev/shm and TMPDIR."""
    written = []
    for where in ("/tmp", "/dev/shm", os.environ.get("TMPDIR", "/tmp")):
        path = os.path.join(where, MARK + tag)
        with open(path, "w") as f:
            f.write(tag)
        written.append(path)
    return written


def arrive(gate):
    """Tell the test (a Unix socket it listens on) that the handler got here."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.connect(gate)
    s.sendall(b"in")
    return s


def channel_sockets():
    """The instance's sockets among its inherited descriptors: its channel to the server."""
    import stat

    found = []
    for fd in range(3, 1024):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue
        if stat.S_ISSOCK(mode):
            found.append(fd)
    return found
