"""Handlers that misbehave. Most first mark /tmp, /dev/shm and their TMPDIR (to
show that nothing of theirs reaches other functions) and, given a gate, tell
the test they are about to misbehave."""

import os
import select
import socket
import subprocess
import sys
import time

from common import MARK, arrive, channel_sockets, mark, name_process


def _start(event, tag):
    mark(tag)
    return arrive(event["gate"]) if "gate" in event else None


def spin(event, context):
    _start(event, "spin")
    while True:
        pass


def sleep(event, context):
    _start(event, "sleep")
    time.sleep(3600)


def hog(event, context):
    _start(event, "hog")
    chunks = []
    while True:
        chunks.append(b"\x01" * (1 << 20))  # touched: counted at once


def _pids_cgroup():
    """This process's pids cgroup directory (v1, else v2's unified one)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.split(":", 2) for line in f.read().splitlines()]
    for _, controllers, path in lines:
        if "pids" in controllers.split(","):
            return "/sys/fs/cgroup/pids" + path
    return "/sys/fs/cgroup" + next(path for _, controllers, path in lines if not controllers)


def _read_int(path):
    with open(path) as f:
        return int(f.read())


def _live(name):
    """Processes of this PID namespace called `name`, zombies aside."""
    found = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            command, _, rest = stat.partition(" (")[2].rpartition(") ")
            found += command == name and not rest.startswith("Z")
    return found


def bomb(event, context):
    """The shell's fork bomb. With a gate: once it fills the pids limit, hold
    there until the test has looked, then return (the bomb goes on). Without:
    never return. With "count": how many shells live here now."""
    if event.get("count"):
        return {"shells": _live("sh")}
    mark("bomb")
    # Niced: the handler, one task among a thousand in its cgroup, still gets the CPU.
    subprocess.Popen(["nice", "-n", "19", "/bin/sh", "-c", "b(){ b|b& };b"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    if "gate" not in event:
        select.select([], [], [])
    cgroup = _pids_cgroup()
    limit = _read_int(cgroup + "/pids.max")
    peak = 0
    while peak < limit - 8:
        peak = max(peak, _read_int(cgroup + "/pids.current"))
        select.select([], [], [], 0.005)  # leave the CPU to the bomb
    arrive(event["gate"]).recv(1)
    return {"peak": peak, "limit": limit}


def tmpfill(event, context):
    """Write `mb` MB under TMPDIR; or end the instance; or say what /tmp holds."""
    tmpdir = os.environ["TMPDIR"]
    if event.get("exit"):
        os._exit(3)
    if "mb" in event:
        mark("tmpfill")
        with open(os.path.join(tmpdir, MARK + "big"), "wb") as f:
            for _ in range(event["mb"] * 16):
                f.write(b"\0" * 65536)
        return "written"
    st = os.statvfs("/tmp")
    return {"tmpdir": tmpdir, "tmp": sorted(os.listdir("/tmp")),
            "free": st.f_bavail * st.f_frsize, "size": st.f_blocks * st.f_frsize}


def bigresult(event, context):
    mark("bigresult")
    return "x" * event["size"]


def stdout(event, context):
    _start(event, "stdout")
    chunk = "y" * 65536 + "\n"
    while True:
        sys.stdout.write(chunk)


def _daemon(name, hop, report):
    """In the child of a fork: setsid, fork again, the grandchild lives on."""
    os.setsid()
    if os.fork():
        os._exit(0)
    name_process(name)
    os.write(report, f"{os.getpid()}\n".encode())
    os.close(report)
    while True:
        if hop:  # a new pid every few milliseconds: no pid list catches it
            time.sleep(0.005)
            if os.fork():
                os._exit(0)
        else:
            time.sleep(3600)


def daemons(event, context):
    """Two daemonised grandchildren (double fork, setsid) that outlive the handler.
    Given their pids, what became of them instead."""
    if "pids" in event:
        return _check(event["pids"])
    mark("daemons")
    pids = {}
    for name, hop in (("daemon", False), ("hopper", True)):
        r, w = os.pipe()
        child = os.fork()
        if child == 0:
            os.close(r)
            _daemon(name, hop, w)
        os.close(w)
        os.waitpid(child, 0)
        with os.fdopen(r) as f:
            pids[name] = int(f.readline())
    with open(f"/proc/{pids['daemon']}/comm") as f:
        pids["comm"] = f.read().strip()
    return pids


def _fate(pid):
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "gone"
    try:
        return "exited" if select.select([fd], [], [], 5)[0] else "running"
    finally:
        os.close(fd)


def _check(pids):
    """After `daemons`: the fate of its pids, and who is named like them now."""
    named = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().startswith(MARK):
                        named.append(int(pid))
            except OSError:
                pass
    return {"pids": {name: _fate(pid) for name, pid in pids.items()},
            "named": {pid: _fate(pid) for pid in named}}


def channel(event, context):
    """Misuse the instance's own socket to the server."""
    from fastfaas import wire

    socks = channel_sockets()
    mode = event["mode"]
    if mode == "close":
        for fd in socks:
            os.close(fd)
    elif mode == "garbage":
        for fd in socks:
            os.write(fd, b"\xc1 this is not msgpack")
    elif mode == "forge":
        for fd in socks:
            os.write(fd, wire.encoder.encode(wire.Result(ok=True, payload=b'"forged"')))
    elif mode == "biglog":  # a result of its own, with the right id and a huge log tail
        result = wire.Result(ok=True, payload=b'"forged log"', request_id=context.aws_request_id,
                             log_tail=b"L" * (wire.MAX_PAYLOAD - 4096))
        data, fds, memfd = wire.outgoing(wire.encoder.encode(result), [])
        for fd in socks:
            s = socket.socket(fileno=fd)
            s.sendmsg([data], wire.ancillary(fds))
            s.detach()
        os.close(memfd)
        os._exit(0)
    elif mode == "oversize":  # a result past the limit, sent past the instance's own check
        body = b'"' + b"z" * (wire.MAX_PAYLOAD + 32 * 1024) + b'"'
        data, fds, memfd = wire.outgoing(wire.encoder.encode(wire.Result(ok=True, payload=body)),
                                         [])
        for fd in socks:
            s = socket.socket(fileno=fd)
            s.sendmsg([data], wire.ancillary(fds))
            s.detach()
        os.close(memfd)
        os._exit(0)  # the forged result is the only one: queued before the end of file
    return {"mode": mode, "sockets": socks, "tag": event.get("tag")}
