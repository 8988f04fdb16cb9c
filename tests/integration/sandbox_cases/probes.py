"""What a function may find out or touch beyond itself: each handler tries, and
reports what happened ("ok" or the errno name), for the test to judge."""

import ctypes
import os
import select
import signal
import socket
import stat

from common import MARK, arrive, libc, outcome, syscall

SYS = {  # x86_64 numbers
    "ptrace": 101, "process_vm_readv": 310, "mount": 165, "umount2": 166,
    "unshare": 272, "setns": 308, "kexec_load": 246, "bpf": 321, "perf_event_open": 298,
    "keyctl": 250, "init_module": 175, "finit_module": 313, "reboot": 169,
    "io_uring_setup": 425, "clone3": 435, "clone": 56, "chroot": 161, "pidfd_getfd": 438,
    "open_by_handle_at": 304,
}
PTRACE_TRACEME, PTRACE_ATTACH = 0, 16
CLONE_NEWUSER, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x00020000, 17


def _read(path):
    with open(path, "rb") as f:
        f.read(1)


def _environs():
    """Every environment this process can read: its own and /proc/*/environ."""
    found = {"self": "\0".join(f"{k}={v}" for k, v in os.environ.items())}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    found[pid] = f.read().decode(errors="replace")
            except OSError:
                pass
    return found


def _status():
    with open("/proc/self/status") as f:
        return dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)


def _fds():
    """(fd, kind, target) of every open descriptor."""
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            mode = os.fstat(fd).st_mode
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor
        kind = ("socket" if stat.S_ISSOCK(mode) else "dir" if stat.S_ISDIR(mode)
                else "file" if stat.S_ISREG(mode) else "other")
        out.append([fd, kind, target])
    return out


def _uid(pid):
    """The real uid of a visible process (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def identity(event, context):
    status = _status()
    return {
        "uid": os.getuid(), "gid": os.getgid(), "euid": os.geteuid(),
        "cwd": os.getcwd(), "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
        "tmpdir": os.environ.get("TMPDIR"), "hostname": socket.gethostname(),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "cap_eff": status["CapEff"].strip(), "cap_bnd": status["CapBnd"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
        "dumpable": libc.prctl(3, 0, 0, 0, 0),  # PR_GET_DUMPABLE
        "uids": sorted({_uid(p) for p in os.listdir("/proc") if p.isdigit()} - {None}),
        "write_task_root": outcome(lambda: open("/var/task/new.py", "w").close()),
        "fds": _fds(),
    }


def reads(event, context):
    data = event["data_dir"]
    environs = _environs()
    return {
        "list_data_dir": outcome(os.listdir, data),
        "read_db": outcome(_read, os.path.join(data, "fastfaas.db")),
        "read_planted": outcome(_read, os.path.join(data, "planted-secret")),
        "read_other_code": outcome(_read, event["other_code"]),
        "list_code": outcome(os.listdir, os.path.join(data, "code")),
        "read_server_environ": outcome(_read, f"/proc/{event['server_pid']}/environ"),
        "read_zygote_environ": outcome(_read, "/proc/1/environ"),
        "secret_in": sorted(k for k, v in environs.items() if event["secret"] in v),
        "environs_read": len(environs),
        "task_root": sorted(os.listdir("/var/task")),
    }


def _connect(family, address):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(address)
    finally:
        s.close()


def _unix_sockets():
    """Named and abstract Unix sockets this network namespace lists."""
    found = []
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8:
                found.append(parts[7])
    return found


def connects(event, context):
    unix = {}
    for path in _unix_sockets():
        address = "\0" + path[1:] if path.startswith("@") else path
        unix[path] = outcome(_connect, socket.AF_UNIX, address)
    return {
        "server_listener": outcome(_connect, socket.AF_INET, ("127.0.0.1", event["port"])),
        "unix": unix,
        "zygote_fds": outcome(os.listdir, "/proc/1/fd"),
        "zygote_fd3": outcome(_read, "/proc/1/fd/3"),
        "own_sockets": [fd for fd, kind, _ in _fds() if kind == "socket"],
    }


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _process_vm_readv(pid):
    buf = ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = _IoVec(0x400000, 8)
    return syscall(SYS["process_vm_readv"], pid, ctypes.addressof(local), 1,
                   ctypes.addressof(remote), 1, 0)


def _pidfd_getfd(pid, fd):
    pidfd = os.pidfd_open(pid)
    try:
        return syscall(SYS["pidfd_getfd"], pidfd, fd, 0)
    finally:
        os.close(pidfd)


def ptrace(event, context):
    siblings = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    return {
        "attach_zygote": syscall(SYS["ptrace"], PTRACE_ATTACH, 1, 0, 0),
        "attach_siblings": sorted({syscall(SYS["ptrace"], PTRACE_ATTACH, p, 0, 0)
                                   for p in siblings}),
        "traceme": syscall(SYS["ptrace"], PTRACE_TRACEME, 0, 0, 0),
        "vm_readv_zygote": _process_vm_readv(1),
        "zygote_mem": outcome(_read, "/proc/1/mem"),
        "pidfd_getfd_zygote": _pidfd_getfd(1, 0),
        "mount": syscall(SYS["mount"], 0, 0, 0, 0, 0),
        "umount2": syscall(SYS["umount2"], 0, 0),
        "unshare_user": syscall(SYS["unshare"], CLONE_NEWUSER),
        "unshare_mount": syscall(SYS["unshare"], CLONE_NEWNS),
        "setns": syscall(SYS["setns"], 0, 0),
        "clone_newuser": syscall(SYS["clone"], CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
        "clone3": syscall(SYS["clone3"], 0, 0),
        "kexec_load": syscall(SYS["kexec_load"], 0, 0, 0, 0),
        "bpf": syscall(SYS["bpf"], 0, 0, 0),
        "perf_event_open": syscall(SYS["perf_event_open"], 0, 0, -1, -1, 0),
        "keyctl": syscall(SYS["keyctl"], 0, 0, 0, 0, 0),
        "init_module": syscall(SYS["init_module"], 0, 0, 0),
        "finit_module": syscall(SYS["finit_module"], -1, 0, 0),
        "reboot": syscall(SYS["reboot"], 0, 0, 0, 0),
        "io_uring_setup": syscall(SYS["io_uring_setup"], 1, 0),
        "chroot": syscall(SYS["chroot"], 0),
        "open_by_handle_at": syscall(SYS["open_by_handle_at"], -1, 0, 0),
        "setuid_0": outcome(os.setuid, 0),
    }


def _state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


SIGNALS = ("SIGKILL", "SIGTERM", "SIGINT", "SIGHUP", "SIGSTOP", "SIGSEGV", "SIGUSR1",
           "SIGALRM", "SIGCHLD")


def signals(event, context):
    """Signal the zygote (PID 1 here) and the server (not in this PID namespace)."""
    sent = {name: outcome(os.kill, 1, getattr(signal, name)) for name in SIGNALS}
    server = event["server_pid"]
    return {
        "zygote": sent,
        "zygote_state": _state(1),
        "server_kill": outcome(os.kill, server, signal.SIGKILL),
        "server_term": outcome(os.kill, server, signal.SIGTERM),
        "server_pidfd": outcome(os.pidfd_open, server),
        "server_group": outcome(os.killpg, server, signal.SIGKILL),
    }


def killall(event, context):
    """kill(-1, SIGKILL): every process of this namespace it may signal, but itself.
    With "hold", wait at the gate instead (the sibling to be killed)."""
    if event.get("hold"):
        arrive(event["gate"]).recv(1)
        return "released"
    victims = [int(p) for p in os.listdir("/proc")
               if p.isdigit() and int(p) not in (1, os.getpid())]
    result = outcome(os.kill, -1, signal.SIGKILL)
    waited = {}
    for pid in victims:  # their exits, as events (a pidfd turns readable)
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            waited[pid] = "gone"
            continue
        try:
            waited[pid] = "exited" if select.select([fd], [], [], 5)[0] else "running"
        finally:
            os.close(fd)
    return {"kill": result, "victims": waited, "pid": os.getpid(),
            "zygote_state": _state(1)}


def _create(path):
    with open(path, "x") as f:
        f.write("left by a function")


def writable(event, context):
    """Create a file in every world-writable directory it can see, three levels down
    (`seen`); `made`: where it could."""
    name = MARK + event["tag"]
    made, seen = [], []
    for top, dirs, _ in os.walk("/"):
        depth = 0 if top == "/" else top.count("/")
        dirs[:] = [] if depth >= 3 else [d for d in dirs if os.path.join(top, d) not in (
            "/proc", "/sys")]
        try:
            mode = os.stat(top).st_mode
        except OSError:
            continue
        if mode & stat.S_IWOTH:
            seen.append(top)
            if outcome(_create, os.path.join(top, name)) == "ok":
                made.append(top)
    return {"made": made, "seen": seen, "tmpdir": os.environ["TMPDIR"]}
