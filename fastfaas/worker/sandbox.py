"""The strict isolation level, from inside: namespaces, a filesystem view, credentials.

Two steps, both in the zygote that will run the user's code:

1. `isolate_generic`, in a generic zygote just forked by the template (which
   made it PID 1 of a new PID namespace), still root: new mount, IPC, UTS and
   (unless the function opts into the host's) network namespaces, a new
   /proc, and the filesystem view. The view hides what a function has no
   business reading behind tmpfs (/root, /home, /tmp, /var, /run, /dev/shm
   and fastfaas's data directory) and shows again, read-only, what the
   interpreter itself needs when it lives under one of those (pyenv under
   /root, a virtualenv under /tmp), the host's resolv.conf and the paths the
   operator exposes. Everything else of the host is read-only: the only
   places a function can write are tmpfs of its own zygote. The network namespace (~0.7 ms) is made
   here, ahead of need, never on a request's path.
2. `enter_function`, at the claim, before the import: the function's code
   read-only at /var/task, /tmp sized for it; then a new user namespace in
   which the zygote is an unprivileged uid with no capabilities, not
   dumpable, and under the seccomp filter. The mounts were made by root
   outside that namespace, so the function cannot undo them.

Instances inherit all of it through fork; each gets its own TMPDIR under
/tmp, which the zygote removes when the instance ends.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import sys
from typing import Any

from fastfaas import _native
from fastfaas.wire import Sandbox

HIDDEN = ("/root", "/home", "/tmp", "/var", "/run", "/dev/shm")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
TASK_ROOT = "/var/task"
INSIDE_UID = 1000
INSIDE_GID = 1000
HOSTNAME = "fastfaas"

_MOUNT_FLAGS = _native.NOSUID | _native.NODEV


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def runtime_paths(expose: tuple[str, ...] = ()) -> list[str]:
    """What this interpreter reads after the fork (its prefixes, its import
    path), the resolver's configuration, and what the operator exposes."""
    import fastfaas

    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(os.path.abspath(fastfaas.__file__))),
             "/etc/resolv.conf", *expose}
    found.update(p for p in sys.path if p)
    real = sorted({os.path.realpath(p) for p in found if os.path.isabs(p) and os.path.exists(p)})
    # Outermost only: a bind of /a brings /a/b with it.
    return [p for p in real if not any(q != p and _under(p, q) for q in real)]


def _readonly_everything() -> None:
    """Every mount of this (private) namespace read-only: the host's
    world-writable directories (/run/lock, /dev/mqueue, ...) are not the
    function's to fill. The tmpfs mounted afterwards are its only writable places."""
    try:
        _native.readonly_tree("/")
        return
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
    with open("/proc/self/mountinfo", "rb") as f:  # before Linux 5.12: one by one
        points = [os.fsdecode(_unescape(line.split()[4])) for line in f]
    for point in points:
        try:
            _native.mount(None, point, None, _native.REMOUNT | _native.BIND | _native.RDONLY)
        except FileNotFoundError:
            continue  # under another mount that hides it: not reachable anyway


def _unescape(field: bytes) -> bytes:
    """mountinfo's octal escapes (\\040 for a space) undone."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def _minimal_dev(devices: list[tuple[str, int]]) -> None:
    """A /dev of its own: the host's (device nodes work on a read-only mount: ptys,
    /dev/kvm, /dev/kmsg...) replaced by a tmpfs holding the harmless devices."""
    _tmpfs("/dev", "size=64k,mode=755")
    for name, fd in devices:
        _mountpoint(f"/dev/{name}", False)
        _native.mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, _native.BIND)
        os.close(fd)
    for name, to in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                     ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(to, f"/dev/{name}")
    os.mkdir("/dev/shm")  # its own tmpfs follows, with the other hidden directories


def _tmpfs(target: str, options: str) -> None:
    _native.mount("tmpfs", target, "tmpfs", _MOUNT_FLAGS, options)


def _bind_readonly(fd: int, target: str) -> None:
    _native.mount(f"/proc/self/fd/{fd}", target, None, _native.BIND | _native.REC)
    _native.mount(None, target, None,
                  _native.REMOUNT | _native.BIND | _native.RDONLY | _MOUNT_FLAGS)


def _mountpoint(path: str, is_dir: bool) -> None:
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def isolate_generic(sandbox: Sandbox) -> int:
    """In a new generic zygote (PID 1 of its PID namespace, root): namespaces
    and the filesystem view. Returns an O_PATH descriptor of the code root
    (the data directory's code/), which is hidden from then on."""
    flags = _native.NEWNS | _native.NEWIPC | _native.NEWUTS
    if not sandbox.network:
        flags |= _native.NEWNET
    _native.unshare(flags)
    _native.mount(None, "/", None, _native.REC | _native.PRIVATE)  # nothing leaks back out
    _readonly_everything()
    _native.mount("proc", "/proc", "proc", _MOUNT_FLAGS | _native.NOEXEC)
    data_dir = os.path.realpath(sandbox.data_dir)
    code_root = os.open(os.path.join(data_dir, "code"),
                        os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    devices = [(name, os.open(f"/dev/{name}", os.O_PATH | os.O_CLOEXEC))
               for name in DEVICES if os.path.exists(f"/dev/{name}")]
    _minimal_dev(devices)
    hidden = [h for h in HIDDEN if os.path.isdir(h) and not os.path.islink(h)]
    keep = [(p, os.open(p, os.O_PATH | os.O_CLOEXEC), os.path.isdir(p))
            for p in runtime_paths(sandbox.expose)
            if any(_under(p, h) and p != h for h in hidden)]  # never a hidden root itself
    for h in hidden:
        mode = "1777" if h in ("/tmp", "/dev/shm") else "755"
        _tmpfs(h, f"size={'64m' if h != '/tmp' else '1m'},mode={mode}")
    for path, fd, is_dir in keep:
        _mountpoint(path, is_dir)
        _bind_readonly(fd, path)
        os.close(fd)
    if os.path.isdir(data_dir):
        _tmpfs(data_dir, "size=4k,mode=000")
    if "/var" in hidden:
        os.makedirs(TASK_ROOT, exist_ok=True)
        for name, to in (("tmp", "/tmp"), ("run", "/run"), ("lock", "/run/lock")):
            with contextlib.suppress(FileExistsError):
                os.symlink(to, f"/var/{name}")
    if "/run" in hidden:
        os.makedirs("/run/lock", exist_ok=True)
        os.chmod("/run/lock", 0o1777)
    if not sandbox.network:
        _native.loopback_up()
    socket.sethostname(HOSTNAME)
    return code_root


def enter_function(sandbox: Sandbox, code_root: int, code_dir: str, tmp_mb: int) -> str:
    """At the claim, before the import: the code at /var/task, /tmp sized,
    and the unprivileged, capability-less, filtered process. Returns the
    task root to import from."""
    rel = os.path.relpath(os.path.realpath(code_dir),
                          os.path.realpath(os.path.join(sandbox.data_dir, "code")))
    if rel.startswith(".."):
        raise ValueError(f"code directory {code_dir!r} is outside the data directory")
    code = os.open(rel, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=code_root)
    try:
        _bind_readonly(code, TASK_ROOT)
    finally:
        os.close(code)
        os.close(code_root)
    _native.mount(None, "/tmp", None, _native.REMOUNT | _MOUNT_FLAGS,
                  f"size={tmp_mb}m,mode=1777")
    _native.enter_user_namespace(INSIDE_UID, sandbox.uid, INSIDE_GID, sandbox.gid)
    _native.drop_capabilities()
    _native.set_dumpable(False)
    _native.seccomp_install()
    return TASK_ROOT


def instance_tmpdir(instance_id: int) -> str:
    return f"/tmp/instance-{instance_id}"


def make_instance_tmpdir(instance_id: int) -> None:
    """In a new instance: its own TMPDIR."""
    path = instance_tmpdir(instance_id)
    os.mkdir(path, 0o700)
    os.environ["TMPDIR"] = path
    tempfile: Any = sys.modules.get("tempfile")
    if tempfile is not None:
        tempfile.tempdir = None  # gettempdir() looks again


def remove_instance_tmpdir(instance_id: int) -> None:
    """In the zygote, when the instance has ended: what can be removed is (not shutil,
    whose import brings bz2, lzma and zlib into every zygote)."""
    root = instance_tmpdir(instance_id)
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(top, name))
        for name in dirs:
            path = os.path.join(top, name)
            with contextlib.suppress(OSError):
                os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    with contextlib.suppress(OSError):
        os.rmdir(root)
