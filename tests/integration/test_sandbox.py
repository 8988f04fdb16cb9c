"""The strict isolation level, attacked: one function per misdeed, one server for all.

The server runs at `--isolation strict` under `unshare --pid --fork --kill-child`:
it is PID 1 of a PID namespace of its own, so whatever a failed sandbox let out
dies with it and not on the test machine. Its data directory lies in
directories any user may traverse (under /run), beside a world-readable file
holding a secret, so that the refusals below are the sandbox's doing and not
the file modes'. The gates and a world-writable directory beside it are shown
to functions with --sandbox-expose (read-only).

Each case is a function from sandbox_cases/, zipped with sandbox_cases/common.py.
For each, the server keeps serving a canary function (while the offender is at
work, where a gate shows that it is, and after), the offender gets a clear
error (X-Fastfaas-Function-Error, errorType and errorMessage) or reports the
refusals it met, and nothing of it reaches the canary. The last test stops the
server and checks that no process, cgroup, mount or file of it is left.

Gates are Unix sockets in an exposed directory (a read-only mount does not stop
a connect): a handler connects
to say "I am here" (and, where it must be held, waits for a byte). Where strict
is unavailable (not root, no user namespaces, no unshare) these tests fail:
they never skip.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import select
import shutil
import socket
import stat
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from fastfaas import wire
from fastfaas.runtime.cgroups import INSTANCE_PIDS_MAX, PREFIX, detect
from fastfaas.runtime.runtime import strict_unavailable
from fastfaas.worker.sandbox import runtime_paths
from tests.conftest import ServerProcess, alive, descendants, invoke

CASES = Path(__file__).parent / "sandbox_cases"
UNSHARE = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
CGROUPS_MODE = "require"  # strict needs them: without, the server refuses to start
HTTP_TIMEOUT = 30.0
WAIT_S = 10.0  # the bound of every wait below: far above what a healthy server needs
MARK = "ffsbx-"  # sandbox_cases/common.py: every file it writes and process it names
ZIP = {"content-type": "application/zip"}
SANDBOX_UID = 65534  # `fastfaas serve --sandbox-uid` default: function code, seen from here
INSIDE_UID = 1000


# --- the server, its canary, and the checks after each case -------------------------


@dataclass
class Sandboxed:
    """The module's strict server and what the checks need to know of it."""

    server: ServerProcess
    client: httpx.Client
    base: Path  # the data directory's and the gates' parent: traversable by anyone
    secret: str  # in the server's environment and in a file of its data directory
    server_pid: int  # on the host (1 in its own PID namespace)
    mountinfo: list[str]  # the host's, before the server started
    canary_zygote: int
    canary_code: Path
    pid_namespaces: set[int] = field(default_factory=set)  # every one seen below the server

    @property
    def gates(self) -> Path:
        return self.base / "gates"

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def tree(self) -> set[int]:
        """The server's processes, seen from the host (noting their PID namespaces)."""
        found = descendants(self.server.proc.pid)
        for pid in found:
            with contextlib.suppress(OSError):
                self.pid_namespaces.add(pidns(pid))
        return found


# The interpreter's own directories that lie under /tmp (a checkout there, as CI
# makes) are shown again read-only inside the sandbox's /tmp: their top names.
RUNTIME_UNDER_TMP = frozenset(p.split("/")[2] for p in runtime_paths() if p.startswith("/tmp/"))

def code_zip(module: str) -> bytes:
    """sandbox_cases/<module>.py and sandbox_cases/common.py as a code zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in (f"{module}.py", "common.py"):
            zf.write(CASES / name, name)
    return buf.getvalue()


def deploy(client: httpx.Client, name: str, module: str, handler: str = "handler",
           **config: Any) -> dict[str, Any]:
    params = {"handler": f"{module}.{handler}", **{k: str(v) for k, v in config.items()}}
    r = client.put(f"/v1/functions/{name}", params=params, content=code_zip(module),
                   headers=ZIP)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def ok(r: httpx.Response) -> Any:
    """The result of an invocation that must have succeeded."""
    assert r.status_code == 200, r.text
    assert "x-fastfaas-function-error" not in r.headers, r.text
    return r.json()


def function_error(r: httpx.Response, kind: str, error_type: str, *words: str) -> dict[str, Any]:
    """A function error of `kind` whose body has `error_type` and says each of `words`."""
    assert r.status_code == 200, r.text
    assert r.headers.get("x-fastfaas-function-error") == kind, (dict(r.headers), r.text[:2000])
    body: dict[str, Any] = r.json()
    assert body["errorType"] == error_type, body
    for word in words:
        assert word in body["errorMessage"], (word, body)
    return body


def describe(client: httpx.Client, name: str) -> dict[str, Any]:
    r = client.get(f"/v1/functions/{name}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def pidns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/pid").st_ino


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def status_field(pid: int, name: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1:]
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def host_pid(sbx: Sandboxed, server_ns_pid: int) -> int:
    """A pid as the server knows it (in its namespace), as the host knows it."""
    for pid in sbx.tree():
        with contextlib.suppress(OSError, AssertionError):
            if int(status_field(pid, "NSpid")[1]) == server_ns_pid:
                return pid
    raise AssertionError(f"no process {server_ns_pid} below the server")


def wait_until_none(sbx: Sandboxed, what: str, pick: Callable[[int], bool]) -> None:
    """Until no live process below the server is picked by `pick`.

    Waits on the exits themselves (pidfds turn readable), looking again for
    processes started meanwhile (a fork bomb's); at most WAIT_S in all.
    """
    deadline = time.monotonic() + WAIT_S
    while True:
        left = [p for p in sbx.tree() if pick(p) and alive(p)]
        if not left:
            return
        fds = []
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                fds.append(os.pidfd_open(pid))
        poller = select.poll()  # not select(): the suite holds descriptors past 1024
        for fd in fds:
            poller.register(fd, select.POLLIN)
        try:
            remaining = set(fds)
            while remaining:
                timeout = deadline - time.monotonic()
                assert timeout > 0, f"{what} still running: {sorted(left)[:20]}"
                for fd, _ in poller.poll(timeout * 1000):
                    poller.unregister(fd)
                    remaining.discard(fd)
        finally:
            for fd in fds:
                os.close(fd)


def host_marks() -> list[str]:
    """Files a case made (MARK...) that reached the host's temporary directories."""
    found = []
    for top in ("/tmp", "/var/tmp", "/dev/shm"):
        with contextlib.suppress(OSError):
            found += [os.path.join(top, n) for n in os.listdir(top) if n.startswith(MARK)]
    return found


def mountinfo() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(f.read().splitlines())


def server_cgroups(server_ns: int) -> list[Path]:
    """The cgroup subtrees the server made: `fastfaas-<its pid namespace>-...`."""
    found: list[Path] = []
    for hierarchy in set(detect().values()):
        found += hierarchy.own.glob(f"{PREFIX}{server_ns}-*")
    return sorted(found)


@pytest.fixture(scope="module")
def sbx() -> Iterator[Sandboxed]:
    why = strict_unavailable()
    if not why and shutil.which("unshare") is None:
        why = "no unshare(1) to give the server a PID namespace of its own"
    if why:
        pytest.fail(f"strict isolation cannot be tested here: {why}. These tests need root, "
                    "user and PID namespaces, seccomp and unshare(1); they fail, never skip.")
    before = mountinfo()
    base = Path(tempfile.mkdtemp(prefix="fastfaas-sandbox-test-", dir="/run"))
    base.chmod(0o755)
    data = base / "server" / "data"
    data.mkdir(parents=True)
    for d in (base / "server", data):
        d.chmod(0o755)
    (base / "gates").mkdir(mode=0o755)
    (base / "shared").mkdir()
    (base / "shared").chmod(0o1777)  # writable by anyone (as /run/lock is), were it not read-only
    secret = secrets.token_hex(16)
    planted = data / "planted-secret"
    planted.write_text(secret)
    planted.chmod(0o644)  # any user could read it, were the data directory not hidden
    (base / "server" / "data.stderr").touch(mode=0o600)  # the server's log: not for them
    try:
        # /run is hidden in the sandbox: the gates (sockets, which a read-only
        # mount does not stop), the shared directory and the data directory's
        # parent are shown to functions, so that the data directory is hidden by
        # its own tmpfs here, not by /run's.
        server = ServerProcess(data, CGROUPS_MODE, "--isolation", "strict",
                               "--sandbox-expose", str(base / "server"),
                               "--sandbox-expose", str(base / "gates"),
                               "--sandbox-expose", str(base / "shared"),
                               env={"FASTFAAS_TEST_SECRET": secret}, prefix=UNSHARE)
    except RuntimeError as exc:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"the strict server did not start: {exc}")
    client = httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT)
    try:
        health = client.get("/healthz").json()
        assert health["isolation"]["default"] == "strict", health
        canary = deploy(client, "canary", "canary")
        first = ok(invoke(client, "canary", {"nonce": "first"}))
        assert first["nonce"] == "first" and first["uid"] == INSIDE_UID, first
        yield Sandboxed(server, client, base, secret, server.pid, before,
                        describe(client, "canary")["state"]["zygote"]["id"],
                        data / "code" / canary["code_sha256"] / "canary.py")
    finally:
        client.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def assert_unharmed(sbx: Sandboxed, *offenders: httpx.Response) -> None:
    """The server serves the canary, whose zygote never changed and which sees
    nothing of the offenders (no file, no process, not their instance)."""
    assert alive(sbx.server_pid), f"the server died:\n{sbx.server.stderr()[-4000:]}"
    nonce = secrets.token_hex(4)
    r = invoke(sbx.client, "canary", {"nonce": nonce})
    view = ok(r)
    assert view["nonce"] == nonce and view["uid"] == INSIDE_UID, view
    assert all(n.startswith("instance-") or n in RUNTIME_UNDER_TMP for n in view["tmp"]), view
    assert view["shm"] == [] and view["marked"] == [], view
    assert describe(sbx.client, "canary")["state"]["zygote"]["id"] == sbx.canary_zygote
    for offender in offenders:
        assert r.headers["x-fastfaas-instance"] != offender.headers.get("x-fastfaas-instance")
    sbx.tree()


class Gate:
    """A Unix socket the handlers can reach: `wait_arrival()` returns when one
    connected; `release()` sends each a byte."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / f"{secrets.token_hex(4)}.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o777)  # the sandbox's uid is no owner of it
        self.listener.listen(16)
        self.listener.settimeout(WAIT_S)
        self.conns: list[socket.socket] = []

    def wait_arrival(self) -> None:
        conn, _ = self.listener.accept()
        conn.settimeout(WAIT_S)
        self.conns.append(conn)
        assert conn.recv(2, socket.MSG_WAITALL) == b"in"

    def release(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.sendall(b"x")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.listener.close()
        os.unlink(self.path)


@contextlib.contextmanager
def open_gate(sbx: Sandboxed) -> Iterator[Gate]:
    gate = Gate(sbx.gates)
    try:
        yield gate
    finally:
        gate.close()


@contextlib.contextmanager
def in_background(sbx: Sandboxed, name: str, event: Any) -> Iterator[Future[httpx.Response]]:
    """Invoke `name` on another connection while the block runs."""

    def call() -> httpx.Response:
        with httpx.Client(base_url=sbx.server.url, timeout=HTTP_TIMEOUT) as client:
            r = invoke(client, name, event)
            r.read()
            return r

    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(call)


def offend_while_canary_serves(sbx: Sandboxed, name: str,
                               event: dict[str, Any] | None = None) -> httpx.Response:
    """Invoke the offender; once it says it is at work, the canary must answer."""
    with open_gate(sbx) as gate, in_background(sbx, name, {**(event or {}),
                                                            "gate": gate.path}) as call:
        gate.wait_arrival()
        assert_unharmed(sbx)
        return call.result(timeout=HTTP_TIMEOUT)


# --- what a function can see and reach ----------------------------------------------


def test_the_sandbox_as_the_function_sees_it(sbx: Sandboxed) -> None:
    deploy(sbx.client, "identity", "probes", "identity")
    r = invoke(sbx.client, "identity")
    seen = ok(r)
    assert (seen["uid"], seen["gid"], seen["euid"]) == (INSIDE_UID,) * 3
    assert seen["cwd"] == seen["task_root"] == "/var/task"
    assert seen["tmpdir"].startswith("/tmp/instance-")
    assert seen["hostname"] == "fastfaas"
    assert seen["interfaces"] == ["lo"]  # no network but its own loopback
    assert int(seen["cap_eff"], 16) == 0 and int(seen["cap_bnd"], 16) == 0
    assert seen["no_new_privs"] == "1" and seen["seccomp"] == "2"  # 2: a filter
    assert seen["dumpable"] == 0
    assert seen["uids"] == [INSIDE_UID]  # every process it can see is its function's own
    assert seen["write_task_root"] in ("EROFS", "EACCES")
    kinds = [kind for _, kind, _ in seen["fds"]]
    assert kinds.count("socket") == 1, seen["fds"]  # its channel; no zygote's, no server's
    assert "dir" not in kinds, seen["fds"]  # nothing to openat() its way out of
    assert not [t for _, _, t in seen["fds"] if t.startswith(str(sbx.base))], seen["fds"]

    # From the host: its processes (its zygote's PID namespace) run as the sandbox uid.
    zygote = host_pid(sbx, describe(sbx.client, "identity")["state"]["zygote"]["pid"])
    ns = pidns(zygote)
    assert ns != pidns(sbx.server_pid)
    members = [p for p in sbx.tree() if pidns(p) == ns]
    assert zygote in members and len(members) >= 2, members
    assert status_field(zygote, "NSpid")[-1] == "1"  # its PID namespace's init
    for pid in members:
        assert status_field(pid, "Uid") == [str(SANDBOX_UID)] * 4, pid
    assert_unharmed(sbx, r)


def test_reading_the_data_directory_other_code_and_the_servers_environ(sbx: Sandboxed) -> None:
    # What there is to find, and that file modes alone would not stop it.
    with open(f"/proc/{sbx.server_pid}/environ", "rb") as f:
        assert sbx.secret.encode() in f.read()
    for path in [*sbx.canary_code.parents, sbx.canary_code]:
        if str(path).startswith(str(sbx.base)):
            mode = path.stat().st_mode
            assert mode & (stat.S_IXOTH if path.is_dir() else stat.S_IROTH), path
    assert (sbx.data_dir / "planted-secret").stat().st_mode & stat.S_IROTH
    deploy(sbx.client, "reader", "probes", "reads")
    r = invoke(sbx.client, "reader", {"data_dir": str(sbx.data_dir), "secret": sbx.secret,
                                      "other_code": str(sbx.canary_code),
                                      "server_pid": sbx.server_pid})
    seen = ok(r)
    for pid in sbx.tree() - {sbx.server_pid}:  # the template's environment is filtered
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            assert sbx.secret.encode() not in f.read(), (pid, comm(pid))
    assert seen["list_data_dir"] == "EACCES", seen  # an empty tmpfs, mode 000, over it
    assert seen["list_code"] == "EACCES", seen
    assert seen["read_db"] == "EACCES", seen
    assert seen["read_planted"] == "EACCES", seen
    assert seen["read_other_code"] == "EACCES", seen
    assert seen["read_server_environ"] == "ENOENT", seen  # not in its PID namespace
    assert seen["read_zygote_environ"] == "EACCES", seen  # not dumpable
    assert seen["secret_in"] == [], seen
    assert seen["environs_read"] >= 1
    assert seen["task_root"] == ["common.py", "probes.py"]
    assert_unharmed(sbx, r)


def test_connecting_to_the_servers_listener_and_zygote_sockets(sbx: Sandboxed) -> None:
    deploy(sbx.client, "connector", "probes", "connects")
    r = invoke(sbx.client, "connector", {"port": sbx.server.port})
    seen = ok(r)
    assert seen["server_listener"] == "ECONNREFUSED", seen  # its own network namespace
    assert "ok" not in seen["unix"].values(), seen
    assert seen["zygote_fds"] == "EACCES" and seen["zygote_fd3"] == "EACCES", seen
    assert len(seen["own_sockets"]) == 1, seen
    assert_unharmed(sbx, r)


def test_ptrace_of_the_zygote_and_the_filtered_system_calls(sbx: Sandboxed) -> None:
    deploy(sbx.client, "tracer", "probes", "ptrace")
    ok(invoke(sbx.client, "tracer"))  # one more instance: a sibling to try too
    r = invoke(sbx.client, "tracer")
    seen = ok(r)
    assert seen.pop("clone3") == "ENOSYS", seen  # glibc falls back to clone, which is filtered
    assert seen.pop("zygote_mem") == "EACCES", seen
    assert seen.pop("attach_siblings") in (["EPERM"], []), seen
    assert seen.pop("setuid_0") == "EINVAL", seen  # root has no uid in its user namespace
    assert seen == dict.fromkeys(seen, "EPERM"), seen
    assert_unharmed(sbx, r)


def test_signals_to_the_zygote_and_the_server(sbx: Sandboxed) -> None:
    deploy(sbx.client, "signaller", "probes", "signals")
    assert sbx.client.post("/v1/functions/signaller/warm").json()["ready"] is True
    zygote = describe(sbx.client, "signaller")["state"]["zygote"]
    r = invoke(sbx.client, "signaller", {"server_pid": sbx.server_pid})
    seen = ok(r)
    # Its zygote is PID 1 of the namespace: signals it does not handle are dropped,
    # SIGKILL and SIGSTOP included; kill() itself succeeds.
    assert set(seen["zygote"].values()) == {"ok"}, seen
    assert seen["zygote_state"] in ("S", "R"), seen
    assert seen["server_kill"] == seen["server_term"] == "ESRCH", seen
    assert seen["server_pidfd"] == seen["server_group"] == "ESRCH", seen
    after = describe(sbx.client, "signaller")["state"]["zygote"]
    assert after["id"] == zygote["id"], (zygote, after)
    with open(f"/proc/{host_pid(sbx, after['pid'])}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("S", "R")  # not stopped
    again = ok(invoke(sbx.client, "signaller", {"server_pid": sbx.server_pid}))
    assert again["zygote_state"] in ("S", "R"), again
    assert_unharmed(sbx, r)


def test_kill_of_every_process_it_can_see(sbx: Sandboxed) -> None:
    """kill(-1, SIGKILL) reaches its own function's other instances and nothing else."""
    deploy(sbx.client, "killer", "probes", "killall")
    with open_gate(sbx) as gate, in_background(sbx, "killer", {"hold": True,
                                                              "gate": gate.path}) as held:
        gate.wait_arrival()
        r = invoke(sbx.client, "killer")
        seen = ok(r)
        victim = held.result(timeout=HTTP_TIMEOUT)
    assert seen["kill"] == "ok" and seen["zygote_state"] in ("S", "R"), seen
    assert seen["victims"] and set(seen["victims"].values()) <= {"gone", "exited"}, seen
    # The held sibling died in its invocation: a crash of its own function's making.
    function_error(victim, "Crashed", "Runtime.ExitError", "SIGKILL")
    again = ok(invoke(sbx.client, "killer"))  # ESRCH: no sibling left to kill this time
    assert again["kill"] in ("ok", "ESRCH") and again["zygote_state"] in ("S", "R"), again
    assert_unharmed(sbx, r, victim)


def test_writing_to_the_hosts_world_writable_directories(sbx: Sandboxed) -> None:
    """Every directory a function can write to must be its own (a tmpfs of its
    sandbox): nothing it writes reaches the host or another function. The test
    makes one world-writable directory of its own (as /run/lock, /var/crash or
    /dev/mqueue are on many machines) so that the case never depends on the host."""
    shared = sbx.base / "shared"
    deploy(sbx.client, "writer", "probes", "writable")
    tag = secrets.token_hex(4)
    made: list[str] = []
    try:
        r = invoke(sbx.client, "writer", {"tag": tag})
        seen = ok(r)
        made = seen["made"]
        assert "/tmp" in made, seen  # it did look...
        assert str(shared) in seen["seen"] and str(shared) not in made, seen  # ...everywhere
        files = [os.path.join(d, MARK + tag) for d in made]
        on_host = [f for f in files if os.path.lexists(f)]
        in_canary = ok(invoke(sbx.client, "canary", {"look": files}))["seen"]
        assert (on_host, in_canary) == ([], []), f"written where it can: {made}"
    finally:
        for d in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, MARK + tag))  # what leaked, on the host
    assert_unharmed(sbx, r)


# --- resources ----------------------------------------------------------------------


def test_fork_bomb(sbx: Sandboxed) -> None:
    """The shell's fork bomb fills its instance's pids limit while the canary
    answers. The handler returns with the bomb still going: the freezer stops
    it and its shells die. A bomb whose handler never returns ends in a
    Timeout, and its shells die as well."""
    deploy(sbx.client, "bomb", "offenders", "bomb", memory_mb=1769, timeout_s=30)
    with open_gate(sbx) as gate, in_background(sbx, "bomb", {"gate": gate.path}) as call:
        gate.wait_arrival()  # the pids limit is (nearly) full
        shells = [p for p in sbx.tree() if comm(p) == "sh"]
        assert 0 < len(shells) <= INSTANCE_PIDS_MAX, len(shells)
        assert_unharmed(sbx)
        gate.release()
        r = call.result(timeout=HTTP_TIMEOUT)
    seen = ok(r)
    assert seen["limit"] == INSTANCE_PIDS_MAX and seen["peak"] <= seen["limit"], seen
    wait_until_none(sbx, "the fork bomb", lambda p: comm(p) == "sh")
    assert ok(invoke(sbx.client, "bomb", {"count": True})) == {"shells": 0}

    deploy(sbx.client, "bomb-forever", "offenders", "bomb", memory_mb=1769, timeout_s=1)
    forever = invoke(sbx.client, "bomb-forever")
    function_error(forever, "Timeout", "Timeout", "timed out after 1.00 seconds")
    wait_until_none(sbx, "the fork bomb past its timeout", lambda p: comm(p) == "sh")
    assert_unharmed(sbx, r, forever)


def test_memory_hog(sbx: Sandboxed) -> None:
    deploy(sbx.client, "hog", "offenders", "hog", memory_mb=128, timeout_s=30)
    r = offend_while_canary_serves(sbx, "hog")
    function_error(r, "OutOfMemory", "Runtime.OutOfMemory", "memory_mb=128")
    assert_unharmed(sbx, r)


def test_cpu_spin_past_the_timeout(sbx: Sandboxed) -> None:
    deploy(sbx.client, "spin", "offenders", "spin", timeout_s=1)
    r = offend_while_canary_serves(sbx, "spin")
    function_error(r, "Timeout", "Timeout", "timed out after 1.00 seconds")
    assert_unharmed(sbx, r)


def test_sleep_past_the_timeout(sbx: Sandboxed) -> None:
    deploy(sbx.client, "sleeper", "offenders", "sleep", timeout_s=1)
    r = offend_while_canary_serves(sbx, "sleeper")
    function_error(r, "Timeout", "Timeout", "timed out after 1.00 seconds")
    assert_unharmed(sbx, r)


def test_writing_past_the_tmp_limit(sbx: Sandboxed) -> None:
    deploy(sbx.client, "filler", "offenders", "tmpfill", tmp_mb=1)
    first = invoke(sbx.client, "filler")
    before = ok(first)
    assert 900 * 1024 <= before["size"] <= 1024 * 1024, before  # tmp_mb=1
    full = invoke(sbx.client, "filler", {"mb": 2})
    function_error(full, "Unhandled", "OSError", "No space left on device")
    # The instance ends: its TMPDIR, and the megabyte in it, go with it.
    crash = invoke(sbx.client, "filler", {"exit": True})
    function_error(crash, "Crashed", "Runtime.ExitError", "exit status 3")
    assert {r.headers["x-fastfaas-instance"] for r in (first, full, crash)} == {
        first.headers["x-fastfaas-instance"]}
    after = ok(invoke(sbx.client, "filler"))
    assert after["tmpdir"] != before["tmpdir"], after
    assert os.path.basename(before["tmpdir"]) not in after["tmp"], after
    assert after["free"] >= after["size"] - 64 * 1024, after
    assert_unharmed(sbx, first, full, crash)


def test_result_over_the_size_limit(sbx: Sandboxed) -> None:
    deploy(sbx.client, "bigresult", "offenders", "bigresult", memory_mb=256)
    r = invoke(sbx.client, "bigresult", {"size": wire.MAX_PAYLOAD})
    function_error(r, "ResultTooLarge", "ResultTooLarge",
                   f"({wire.MAX_PAYLOAD + 2} bytes) exceeded maximum allowed payload size")
    assert ok(invoke(sbx.client, "bigresult", {"size": 3})) == "xxx"
    assert_unharmed(sbx, r)


def test_result_over_the_size_limit_sent_past_the_instances_own_check(sbx: Sandboxed) -> None:
    deploy(sbx.client, "oversize", "offenders", "channel", memory_mb=256)
    r = invoke(sbx.client, "oversize", {"mode": "oversize"})
    assert len(r.content) <= wire.MAX_PAYLOAD + 4096, len(r.content)
    function_error(r, "ResultTooLarge", "ResultTooLarge")
    assert_unharmed(sbx, r)


def test_a_forged_result_with_a_huge_log_tail_is_cut_to_the_tail(sbx: Sandboxed) -> None:
    """Its own invocation's id, so it answers; the server keeps only the last 4 KB of
    its log, whatever the instance claims (logs are kept per function, in memory)."""
    deploy(sbx.client, "biglog", "offenders", "channel", memory_mb=256)
    r = invoke(sbx.client, "biglog", {"mode": "biglog"})
    assert ok(r) == "forged log"
    logs = sbx.client.get("/v1/functions/biglog/logs").json()["entries"]
    assert logs and all(len(e["log"]) <= wire.LOG_TAIL for e in logs), [len(e["log"]) for e in logs]
    assert_unharmed(sbx, r)


def test_unbounded_stdout(sbx: Sandboxed) -> None:
    deploy(sbx.client, "chatty", "offenders", "stdout", memory_mb=128, timeout_s=2)
    r = offend_while_canary_serves(sbx, "chatty")
    function_error(r, "OutOfMemory", "Runtime.OutOfMemory", "memory_mb=128")
    logs = sbx.client.get("/v1/functions/chatty/logs").json()["entries"]
    assert logs and all(len(e["log"]) <= wire.LOG_TAIL for e in logs), [len(e["log"]) for e in logs]
    assert_unharmed(sbx, r)


# --- processes that outlive their handler -------------------------------------------


def test_daemonised_grandchildren_die_with_the_invocation(sbx: Sandboxed) -> None:
    deploy(sbx.client, "daemons", "offenders", "daemons")
    r = invoke(sbx.client, "daemons")
    seen = ok(r)
    assert seen.pop("comm") == MARK + "daemon", seen  # so the host can tell them
    pids = seen
    assert set(pids) == {"daemon", "hopper"}, pids
    wait_until_none(sbx, "the daemons", lambda p: comm(p).startswith(MARK))
    check = ok(invoke(sbx.client, "daemons", {"pids": pids}))  # its instance, warm
    assert set(check["pids"].values()) <= {"gone", "exited"}, check  # exited: not yet reaped
    assert set(check["named"].values()) <= {"gone", "exited"}, check
    assert_unharmed(sbx, r)


# --- the instance's channel to the server -------------------------------------------


@pytest.mark.parametrize(("name", "mode", "error_type", "message"), [
    ("closer", "close", "Runtime.ExitError", "exit status 70"),  # closes its channel
    ("garbler", "garbage", "Runtime.InvalidResponse", "malformed message"),  # writes junk
])
def test_instance_channel_closed_or_garbage(sbx: Sandboxed, name: str, mode: str,
                                            error_type: str, message: str) -> None:
    deploy(sbx.client, name, "offenders", "channel")
    r = invoke(sbx.client, name, {"mode": mode})
    function_error(r, "Crashed", error_type, message)
    assert ok(invoke(sbx.client, name, {"mode": "none", "tag": "next"}))["tag"] == "next"
    assert_unharmed(sbx, r)


def test_instance_channel_forged_result(sbx: Sandboxed) -> None:
    """A handler that writes a Result of its own before returning its real one:
    whichever the server takes, the next invocation must get its own result."""
    deploy(sbx.client, "forger", "offenders", "channel")
    r = invoke(sbx.client, "forger", {"mode": "forge", "tag": "first"})
    # The forged Result carries no request id: refused, and its instance killed.
    function_error(r, "Crashed", "Runtime.InvalidResponse", "not this invocation's")
    second = invoke(sbx.client, "forger", {"mode": "none", "tag": "second"})
    assert ok(second)["tag"] == "second", second.text
    assert_unharmed(sbx, r, second)


# --- imports that never finish or kill their zygote ---------------------------------


def assert_next_deploy_works(sbx: Sandboxed, name: str) -> None:
    deploy(sbx.client, name, "good")
    assert ok(invoke(sbx.client, name, {"nonce": name})) == {"good": name}


def test_import_that_never_returns(sbx: Sandboxed) -> None:
    deploy(sbx.client, "stuck", "init_stuck", init_timeout_s=1)
    r = invoke(sbx.client, "stuck")
    function_error(r, "InitError", "Init.Timeout", "init_timeout_s=1s")
    wait_until_none(sbx, "the stuck import", lambda p: comm(p) == MARK + "stuck")
    assert_next_deploy_works(sbx, "stuck")
    assert_unharmed(sbx, r)


@pytest.mark.parametrize(("name", "message"), [
    ("exits", "exit status 3"),  # the import calls os._exit(3)
    ("segv", "SIGSEGV"),  # the import crashes the interpreter
])
def test_import_that_ends_its_zygote(sbx: Sandboxed, name: str, message: str) -> None:
    deploy(sbx.client, name, f"init_{name}")
    r = invoke(sbx.client, name)
    function_error(r, "InitError", "Init.Crashed", message)
    assert_next_deploy_works(sbx, name)
    assert_unharmed(sbx, r)


def test_import_that_sigkills_its_zygote(sbx: Sandboxed) -> None:
    """The zygote is PID 1 of its PID namespace: the kernel drops a SIGKILL it
    sends itself, the import goes on, and the function works."""
    deploy(sbx.client, "selfkill", "init_selfkill")
    r = invoke(sbx.client, "selfkill")
    assert ok(r) == {"survived": True, "pid": 1}
    assert_next_deploy_works(sbx, "selfkill")
    assert_unharmed(sbx, r)


def test_import_that_leaves_a_daemon(sbx: Sandboxed) -> None:
    """A daemon forked at import lives in the zygote's PID namespace: it dies
    with the zygote when a new version replaces it."""
    deploy(sbx.client, "impdaemon", "init_daemon")
    r = invoke(sbx.client, "impdaemon")
    assert ok(r)["daemon"] > 1
    assert [p for p in sbx.tree() if comm(p) == MARK + "impdaemon" and alive(p)]
    assert_next_deploy_works(sbx, "impdaemon")
    wait_until_none(sbx, "the import's daemon", lambda p: comm(p) == MARK + "impdaemon")
    assert_unharmed(sbx, r)


def test_import_that_writes_to_inherited_descriptors(sbx: Sandboxed) -> None:
    deploy(sbx.client, "scribbler", "init_stderr")
    r = invoke(sbx.client, "scribbler")
    wrote = ok(r)["wrote"]
    assert MARK + "import-wrote-here" not in sbx.server.stderr()
    assert wrote == [], wrote
    assert_unharmed(sbx, r)


# --- afterwards ---------------------------------------------------------------------


def test_zz_nothing_is_left_after_the_server_stops(sbx: Sandboxed) -> None:
    """Last: stop the server; no process, cgroup, mount or file of it remains."""
    assert_unharmed(sbx)
    server_ns = pidns(sbx.server_pid)
    namespaces = set(sbx.pid_namespaces)
    assert len(namespaces) >= 2, namespaces  # the server's, and one per strict zygote seen
    assert server_cgroups(server_ns), "the server made no cgroups: strict needs them"
    assert sbx.server.stop() == 0, sbx.server.stderr()[-4000:]
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if pidns(int(entry)) in namespaces:
                    left.append((int(entry), comm(int(entry))))
    assert not left, f"processes of the server's PID namespaces outlived it: {left}"
    assert not server_cgroups(server_ns)
    assert mountinfo() == sbx.mountinfo
    assert host_marks() == []
    marks = [str(p) for p in sbx.base.rglob(f"{MARK}*")]
    assert marks == [], marks
