"""Isolation levels: what `strict` gives a function, per-function levels, and refusals.

The attacks (fork bombs, escapes, signals, ...) are test_sandbox.py's; these
tests check the level's parts one by one through the embedded Runtime, with
real namespaces, credentials and seccomp.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import trio

import fastfaas
from fastfaas.errors import InvalidRequestError, IsolationError

pytestmark = pytest.mark.cgroups

INSIDE = """
import os, socket
def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as exc:
        return exc.strerror
def write_devnull():
    with open("/dev/null", "w") as f:
        f.write("x")
def write_usr():
    with open("/usr/fastfaas-probe", "w") as f:
        f.write("x")
def write_task_root():
    with open("/var/task/new.txt", "w") as f:
        f.write("x")
def handler(event, context):
    st = status()
    return {
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "cap_eff": st["CapEff"], "cap_prm": st["CapPrm"], "cap_bnd": st["CapBnd"],
        "no_new_privs": st["NoNewPrivs"], "seccomp": st["Seccomp"],
        "pid": os.getpid(), "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "hostname": socket.gethostname(), "cwd": os.getcwd(),
        "task_root": os.environ["LAMBDA_TASK_ROOT"], "tmpdir": os.environ.get("TMPDIR"),
        "code": sorted(os.listdir(".")),
        "write_code": attempt(write_task_root),
        "write_devnull": attempt(write_devnull), "write_usr": attempt(write_usr),
        "data_dir": attempt(lambda: os.listdir(event["data_dir"])),
        "home": sorted(os.listdir("/home")), "root": sorted(os.listdir("/root")),
        "var": sorted(os.listdir("/var")), "dev": sorted(os.listdir("/dev")),
        "ptmx": attempt(lambda: os.close(os.open("/dev/ptmx", os.O_RDWR))),
    }
"""

SYSCALLS = """
import ctypes, errno, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
def call(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    return "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()]
# x86_64 numbers
CALLS = {"ptrace": (101, 16, 1, 0, 0), "mount": (165, 0, 0, 0, 0, 0), "umount2": (166, 0, 0),
         "unshare": (272, 0x40000000), "setns": (308, 0, 0), "bpf": (321, 0, 0, 0),
         "perf_event_open": (298, 0, 0, -1, -1, 0), "keyctl": (250, 0, 0, 0, 0),
         "init_module": (175, 0, 0, 0), "reboot": (169, 0, 0, 0, 0),
         "kexec_load": (246, 0, 0, 0, 0),
         "process_vm_readv": (310, 1, 0, 0, 0, 0, 0), "clone3": (435, 0, 0),
         "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0), "io_uring_setup": (425, 1, 0)}
def family(domain):
    import socket
    try:
        socket.socket(domain, socket.SOCK_STREAM).close()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
def handler(event, context):
    out = {name: call(*args) for name, args in CALLS.items()}
    out["families"] = {d: family(d) for d in (1, 2, 10, 40, 38)}  # unix inet inet6 vsock alg
    box = []
    t = threading.Thread(target=lambda: box.append("thread"))
    t.start(); t.join()
    out["thread"] = box[0]
    out["subprocess"] = subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return out
"""

NETWORK = """
import socket
def handler(event, context):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", event["port"]))
        s.sendall(b"hello")
        return "connected"
    except OSError as exc:
        return exc.strerror
    finally:
        s.close()
"""

TMP = """
import os
def handler(event, context):
    tmpdir = os.environ["TMPDIR"]
    with open(os.path.join(tmpdir, "mine"), "w") as f:
        f.write("x")
    seen = sorted(os.listdir("/tmp"))
    if event.get("exit"):
        os._exit(3)
    return {"tmpdir": tmpdir, "tmp": seen}
"""


def host_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


@pytest.fixture
async def strict(tmp_path: Path, cgroups_mode: str):
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode,
                                isolation="strict") as rt:
        yield rt


async def test_strict_runs_code_unprivileged_in_its_own_namespaces(strict, make_function) -> None:
    code = make_function(app=INSIDE)
    await strict.deploy("inside", source=code, handler="app.handler")
    r = await strict.invoke("inside", {"data_dir": str(strict.data_dir)})
    assert r.ok, r.payload
    v = r.value()
    assert (v["uid"], v["gid"], v["groups"]) == (1000, 1000, [])
    assert int(v["cap_eff"], 16) == int(v["cap_prm"], 16) == int(v["cap_bnd"], 16) == 0
    assert v["no_new_privs"] == "1" and v["seccomp"] == "2"  # 2: a filter
    # PID 1 is its function zygote; nothing of the host's is in view.
    assert v["procs"][0] == 1 and v["pid"] in v["procs"] and max(v["procs"]) < 100
    assert v["hostname"] == "fastfaas"
    assert v["cwd"] == v["task_root"] == "/var/task" and v["code"] == ["app.py"]
    assert v["write_code"] == "Read-only file system"
    # The host is read-only (only its own tmpfs are writable); devices still work.
    assert v["write_usr"] == "Read-only file system" and v["write_devnull"] == "ok"
    assert v["data_dir"] in ("No such file or directory", "Permission denied")
    # Hidden, but for what the interpreter itself needs (pyenv lives under /root here).
    assert v["home"] == [] and set(v["root"]) <= {".pyenv"}
    assert "task" in v["var"] and v["tmpdir"].startswith("/tmp/instance-")
    # A /dev of its own: the harmless devices, no ptys, no /dev/kvm or /dev/kmsg.
    assert set(v["dev"]) <= {"null", "zero", "full", "random", "urandom", "tty", "fd", "stdin",
                             "stdout", "stderr", "shm"} and "null" in v["dev"]
    assert v["ptmx"] == "No such file or directory"
    # From the host: the zygote is an unprivileged uid, PID 1 of its own namespace.
    z = strict.describe("inside")["state"]["zygote"]
    st = host_status(z["pid"])
    assert st["Uid"].split()[0] == "65534" and st["NSpid"].split()[-1] == "1"
    assert strict.describe("inside")["isolation"] == "strict"
    assert strict.statistics()["isolation"]["default"] == "strict"


async def test_seccomp_refuses_with_eperm_and_ordinary_calls_still_work(
        strict, make_function) -> None:
    if os.uname().machine != "x86_64":
        pytest.fail("this test's system call numbers are x86_64's")
    code = make_function(app=SYSCALLS)
    await strict.deploy("calls", source=code, handler="app.handler")
    r = await strict.invoke("calls")
    assert r.ok, r.payload
    v = r.value()
    refused = ["ptrace", "mount", "umount2", "unshare", "setns", "bpf", "perf_event_open",
               "keyctl", "init_module", "reboot", "kexec_load", "process_vm_readv",
               "clone_newuser", "io_uring_setup"]
    assert {name: v[name] for name in refused} == dict.fromkeys(refused, "EPERM")
    assert v["clone3"] == "ENOSYS"  # so that glibc falls back to clone, which the filter reads
    assert (v["thread"], v["subprocess"], v["fork"]) == ("thread", "hi\n", 7)
    # Sockets of the families a function has use for; AF_VSOCK (no network namespace
    # confines it) and AF_ALG are not available.
    assert v["families"] == {"1": "ok", "2": "ok", "10": "ok", "40": "EAFNOSUPPORT",
                             "38": "EAFNOSUPPORT"}


async def test_network_is_loopback_only_unless_the_function_opts_in(
        strict, make_function) -> None:
    code = make_function(app=NETWORK)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        while strict.statistics()["warming_pool"]["ready"] < 2:
            await strict.wait_changed()
        await strict.deploy("closed", source=code, handler="app.handler")
        await strict.deploy("open", source=code, handler="app.handler", network=True)
        closed = await strict.invoke("closed", {"port": port})
        opened = await strict.invoke("open", {"port": port})
        assert closed.value() == "Connection refused"  # its own loopback, nothing listening
        assert opened.value() == "connected"
        conn, _ = await trio.to_thread.run_sync(listener.accept)
        with conn:
            assert conn.recv(5) == b"hello"
        # The warming pool holds the default kind of zygote; the opt-in one is forked for it.
        assert closed.start == "claimed" and opened.start == "cold"
    finally:
        listener.close()


async def test_each_instance_has_its_own_tmpdir_removed_when_it_ends(
        strict, make_function) -> None:
    code = make_function(app=TMP)
    await strict.deploy("tmp", source=code, handler="app.handler", tmp_mb=8)
    first = await strict.invoke("tmp", {})
    assert first.ok, first.payload
    gone = first.value()["tmpdir"]
    assert first.value()["tmp"] != [] and gone.startswith("/tmp/instance-")
    crash = await strict.invoke("tmp", {"exit": True})  # the same, warm, instance ends
    assert crash.instance_id == first.instance_id
    assert crash.error is not None and crash.error.kind == "Crashed"
    # A Crashed result waits for the exit report, which the zygote sends after
    # removing the instance's directory.
    v = (await strict.invoke("tmp", {})).value()
    # Its own directory (and a new spare's, maybe), not the ended instance's.
    assert os.path.basename(v["tmpdir"]) in v["tmp"]
    assert os.path.basename(gone) not in v["tmp"] and v["tmpdir"] != gone


async def test_a_function_gets_no_less_than_the_servers_level_unless_allowed(
        strict, make_function) -> None:
    code = make_function(app=INSIDE)
    for level in ("standard", "none"):
        with pytest.raises(InvalidRequestError, match="weaker than this server's 'strict'"):
            await strict.deploy("weak", source=code, handler="app.handler", isolation=level)
    assert strict.functions() == []
    await strict.deploy("plain", source=code, handler="app.handler")
    with pytest.raises(InvalidRequestError, match="weaker"):
        await strict.update_config("plain", isolation="none")  # no way out by a change either
    assert strict.describe("plain")["isolation"] == "strict"


async def test_a_function_can_ask_for_another_level_where_allowed(
        tmp_path, cgroups_mode, make_function) -> None:
    code = make_function(app=INSIDE)
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode,
                                isolation="strict", allow_weaker_isolation=True) as strict:
        await _another_level(strict, code)


async def _another_level(strict: fastfaas.Runtime, code: Path) -> None:
    await strict.deploy("std", source=code, handler="app.handler", isolation="standard")
    r = await strict.invoke("std", {"data_dir": str(strict.data_dir)})
    v = r.value()
    assert v["uid"] == 0 and os.getpid() in v["procs"]  # the host's PID namespace
    assert r.start == "cold"  # not the warming pool's kind of zygote
    assert strict.describe("std")["isolation"] == "standard"
    with pytest.raises(InvalidRequestError, match="network applies to the strict level"):
        await strict.deploy("bad", source=code, handler="app.handler", isolation="standard",
                            network=True)


async def test_a_level_the_machine_cannot_give_is_a_clear_error(
        tmp_path, make_function, monkeypatch) -> None:
    monkeypatch.delenv("FASTFAAS_ISOLATION")  # the default: the strongest available
    code = make_function(app=TMP)
    with pytest.raises(IsolationError, match="must not be root's"):
        fastfaas.Runtime(data_dir=tmp_path / "z", sandbox_uid=0)
    with pytest.raises(IsolationError, match="'strict' is not available"):
        async with fastfaas.Runtime(data_dir=tmp_path / "a", cgroups="off", isolation="strict"):
            pass
    async with fastfaas.Runtime(data_dir=tmp_path / "b", cgroups="off") as rt:
        assert rt.isolation == "none"
        with pytest.raises(InvalidRequestError, match="isolation 'strict' is not available"):
            await rt.deploy("t", source=code, handler="app.handler", isolation="strict")
        assert rt.functions() == []


def test_the_strict_probe_makes_a_user_namespace_as_a_zygote_does() -> None:
    from fastfaas.runtime.runtime import strict_unavailable

    assert strict_unavailable(65534, 65534) == ""  # root here: it works
    # A machine whose security module refuses it looks like a failing probe.
    assert "refuses the sandbox's user namespace" in strict_unavailable(
        65534, 65534, python="/bin/false")
