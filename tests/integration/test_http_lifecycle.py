"""`fastfaas serve` over its lifetime: kill -9 and restart, graceful stops, code
updates under load, and requirements.txt installed from a local wheelhouse.

Real `python -m fastfaas serve` processes, real HTTP on loopback (httpx), no
network. Handlers that must be caught mid-invocation wait for a gate file the
test creates, so nothing depends on a sleep being long enough.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import select
import signal
import socket
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from fastfaas.runtime.cgroups import detect
from fastfaas.runtime.code import zip_directory
from tests.conftest import CGROUPS_WRITABLE, alive, descendants

T = TypeVar("T")

ASYNC_CONCURRENCY = 32  # ServeOptions.async_concurrency; `fastfaas serve` has no flag for it

# Records each call's request id, then waits for the gate file.
GATED = """
import os
import time

STARTED = {started!r}
GATE = {gate!r}


def handler(event, context):
    with open(STARTED, "a") as f:
        f.write(context.aws_request_id + "\\n")
    while not os.path.exists(GATE):
        time.sleep(0.005)
    return {{"n": event.get("n"), "version": {version!r}}}
"""

REPORT_ENV = """
import os


def handler(event, context):
    return {"greeting": os.environ.get("GREETING"), "event": event}
"""


# --- helpers -------------------------------------------------------------------


def client_for(url: str, timeout: float = 30) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=timeout, trust_env=False)


def deploy(client: httpx.Client, name: str, code: Path, handler: str = "app.handler",
           **fields: Any) -> httpx.Response:
    """PUT a directory as a zip body, the configuration in the query string."""
    params = {"handler": handler}
    for key, value in fields.items():
        params[key] = json.dumps(value) if key == "env" else str(value)
    return client.put(f"/v1/functions/{name}", params=params, content=zip_directory(code),
                      headers={"content-type": "application/zip"})


def invoke(url: str, name: str, event: Any) -> httpx.Response:
    """One invocation on a client of its own (safe to run in a thread)."""
    with client_for(url, timeout=60) as client:
        return client.post(f"/v1/functions/{name}/invoke", json=event)


def gated(make_function: Callable[..., Path], tmp_path: Path, version: str = "v1",
          ) -> tuple[Path, Path, Path]:
    """A function waiting for a gate file: (code dir, started file, gate file)."""
    started, gate = tmp_path / f"started-{version}", tmp_path / f"gate-{version}"
    code = make_function(app=GATED.format(started=str(started), gate=str(gate),
                                          version=version))
    return code, started, gate


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except FileNotFoundError:
        return []


def wait_for(condition: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `condition` until it is truthy. Only for state behind HTTP or in files
    written by other processes, which offer no event to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout} s for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def pidfds(pids: Iterable[int]) -> Iterator[dict[int, int]]:
    """pidfd -> pid for the pids still running; opened now, so a reused pid cannot fool us."""
    fds: dict[int, int] = {}
    try:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                fds[os.pidfd_open(pid)] = pid
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def still_running_after(fds: dict[int, int], timeout: float) -> list[int]:
    """Wait on the pidfds (readable once a process exits) for up to `timeout`;
    the pids that have not exited by then."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    waiting = set(fds)
    deadline = time.monotonic() + timeout
    while waiting:
        left = max(0.0, deadline - time.monotonic())
        for fd, _events in poller.poll(left * 1000):
            poller.unregister(fd)
            waiting.discard(fd)
        if left == 0:
            break
    return sorted(fds[fd] for fd in waiting)


def server_cgroups(server_pid: int) -> list[Path]:
    """The `fastfaas-<pidns>-<pid>-...` subtrees of one server under our own cgroups."""
    found: list[Path] = []
    for hierarchy in set(detect().values()):
        found += hierarchy.own.glob(f"fastfaas-*-{server_pid}-*")
    return sorted(found)


def metric(client: httpx.Client, line_prefix: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_prefix!r} in /metrics")


def wait_pool_ready(client: httpx.Client, ready: int) -> None:
    """A restarted server's warming pool fills in the background; a claim before
    that is a `cold` start, which is right but not what these tests look at."""
    wait_for(lambda: client.get("/healthz").json()["warming_pool"] >= ready, 10,
             f"{ready} generic zygotes in the warming pool")


# --- restart persistence ----------------------------------------------------------


def test_functions_survive_kill_9_and_the_dead_servers_processes_and_cgroups_go(
    start_server, make_function, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = start_server(data_dir=data)
    plain = make_function(app=REPORT_ENV)
    configured = make_function(app=REPORT_ENV + "\n# another bundle\n")
    with client_for(server.url) as client:
        assert deploy(client, "plain", plain).status_code == 201
        assert deploy(client, "configured", configured, env={"GREETING": "hello"},
                      memory_mb=192, timeout_s=7, description="kept across restarts",
                      idle_timeout_s=30).status_code == 201
        r = client.patch("/v1/functions/plain", json={"timeout_s": 5, "description": "patched"})
        assert r.status_code == 200, r.text
        for name in ("plain", "configured"):  # zygotes and instances to be orphaned
            assert client.post(f"/v1/functions/{name}/invoke", json={}).status_code == 200
        before = {f["name"]: (f["config"], f["code_sha256"])
                  for f in client.get("/v1/functions").json()["functions"]}
    assert set(before) == {"plain", "configured"}
    assert before["configured"][0]["env"] == {"GREETING": "hello"}
    assert before["configured"][0]["memory_mb"] == 192
    assert before["plain"][0]["timeout_s"] == 5

    tree = descendants(server.proc.pid)
    # template, generic zygotes, two function zygotes, their warm and spare instances
    assert len(tree) >= 7, tree
    stale = server_cgroups(server.proc.pid)
    with pidfds(tree) as fds:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        left = still_running_after(fds, timeout=5)
    assert not left, f"the killed server's processes outlived it: {left}"
    if CGROUPS_WRITABLE:
        assert stale and all(p.is_dir() for p in stale), stale  # nothing removed them yet

    restarted = start_server(data_dir=data)
    if CGROUPS_WRITABLE:
        assert not [p for p in stale if p.exists()], "the dead server's cgroups were kept"
        assert server_cgroups(restarted.proc.pid)
    with client_for(restarted.url) as client:
        after = {f["name"]: (f["config"], f["code_sha256"])
                 for f in client.get("/v1/functions").json()["functions"]}
        assert after == before
        wait_pool_ready(client, 2)
        for name, greeting in (("plain", None), ("configured", "hello")):
            r = client.post(f"/v1/functions/{name}/invoke", json={"x": 1})
            assert r.status_code == 200, r.text
            assert "x-fastfaas-function-error" not in r.headers, r.text
            assert r.headers["x-fastfaas-start"] == "claimed"
            assert r.json() == {"greeting": greeting, "event": {"x": 1}}


# --- async events across kill -9 ----------------------------------------------------


def test_accepted_events_run_after_kill_9_at_least_once(
    start_server, make_function, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    code, started, gate = gated(make_function, tmp_path)
    server = start_server(data_dir=data)
    total = ASYNC_CONCURRENCY + 4  # a full poller: some running, the rest queued
    with client_for(server.url) as client:
        assert deploy(client, "slow", code, timeout_s=60).status_code == 201
        ids: dict[str, int] = {}
        for n in range(total):
            r = client.post("/v1/functions/slow/invoke", json={"n": n},
                            headers={"x-fastfaas-invocation-type": "Event"})
            assert r.status_code == 202, r.text
            assert r.json() == {"request_id": r.headers["x-fastfaas-request-id"]}
            ids[r.json()["request_id"]] = n
        wait_for(lambda: len(lines(started)) >= ASYNC_CONCURRENCY, 20,
                 f"{ASYNC_CONCURRENCY} handlers running")

        def statuses() -> dict[str, str]:
            return {i: client.get(f"/v1/invocations/{i}").json()["status"] for i in ids}

        at_kill = statuses()
    running = {i for i, s in at_kill.items() if s == "running"}
    queued = {i for i, s in at_kill.items() if s == "queued"}
    assert len(running) == ASYNC_CONCURRENCY and len(queued) == total - ASYNC_CONCURRENCY, at_kill
    assert set(lines(started)) == running

    tree = descendants(server.proc.pid)
    with pidfds(tree) as fds:
        server.stop(signal.SIGKILL)
        assert not still_running_after(fds, timeout=5)
    gate.touch()  # the runs after the restart finish at once

    restarted = start_server(data_dir=data)
    with client_for(restarted.url) as client:
        def finished() -> dict[str, dict[str, Any]] | None:
            rows = {i: client.get(f"/v1/invocations/{i}").json() for i in ids}
            done = all(row["status"] in ("succeeded", "failed") for row in rows.values())
            return rows if done else None

        rows = wait_for(finished, 30, "every accepted event to finish after the restart")
    for request_id, row in rows.items():
        assert row["status"] == "succeeded", row
        assert row["result"] == {"n": ids[request_id], "version": "v1"}
    runs = lines(started)
    for request_id in running:  # interrupted by the kill: run again
        assert runs.count(request_id) == 2, request_id
        assert rows[request_id]["attempts"] == 2
    for request_id in queued:  # never started before the kill: exactly once
        assert runs.count(request_id) == 1, request_id
        assert rows[request_id]["attempts"] == 1


# --- graceful shutdown -----------------------------------------------------------


def test_sigterm_finishes_the_call_in_flight_refuses_new_connections_and_cleans_up(
    start_server, make_function, tmp_path: Path
) -> None:
    code, started, gate = gated(make_function, tmp_path)
    server = start_server()
    with client_for(server.url) as client:
        assert deploy(client, "slow", code, timeout_s=30).status_code == 201
    with ThreadPoolExecutor(1) as pool:
        in_flight: Future[httpx.Response] = pool.submit(invoke, server.url, "slow", {"n": 7})
        wait_for(lambda: lines(started), 10, "the handler to start")
        tree = descendants(server.proc.pid)
        cgroups = server_cgroups(server.proc.pid)
        assert len(tree) >= 4, tree
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping" in server.stderr(), 10, "the server to begin its stop")

        def refused() -> bool:
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            except ConnectionRefusedError:
                return True
            return False

        wait_for(refused, 2, "the listening socket to close")
        assert not in_flight.done() and server.proc.poll() is None
        gate.touch()
        response = in_flight.result(timeout=30)
    assert response.status_code == 200
    assert "x-fastfaas-function-error" not in response.headers, response.text
    assert response.json() == {"n": 7, "version": "v1"}
    assert server.proc.wait(timeout=30) == 0
    assert not [p for p in tree if alive(p)], "processes left behind after a graceful stop"
    assert server.stderr().rstrip().endswith("fastfaas: stopped")
    if CGROUPS_WRITABLE:
        assert cgroups
        assert not server_cgroups(server.proc.pid)


def test_sigint_stops_gracefully_with_status_0(start_server, make_function) -> None:
    server = start_server()
    with client_for(server.url) as client:
        assert deploy(client, "hello", make_function(app=REPORT_ENV)).status_code == 201
        assert client.post("/v1/functions/hello/invoke", json={}).status_code == 200
    cgroups = server_cgroups(server.proc.pid)
    assert server.stop(signal.SIGINT, timeout=30) == 0  # it also checks no process is left
    if CGROUPS_WRITABLE:
        assert cgroups and not server_cgroups(server.proc.pid)


def test_the_graceful_timeout_bounds_a_stop_behind_a_long_handler(
    start_server, make_function, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    code = make_function(app=f"""
        import time

        def handler(event, context):
            open({str(started)!r}, "w").close()
            time.sleep(30)
            return "too late"
        """)
    server = start_server("--graceful-timeout-s", "1")
    with client_for(server.url) as client:
        assert deploy(client, "long", code, timeout_s=60).status_code == 201
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(invoke, server.url, "long", {})
        wait_for(started.exists, 10, "the handler to start")
        tree = descendants(server.proc.pid)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        status = server.proc.wait(timeout=25)
        elapsed = time.monotonic() - t0
        # The call still in flight at the deadline gets no result.
        with pytest.raises(httpx.TransportError):
            in_flight.result(timeout=10)
    assert status == 0
    assert elapsed < 6, f"the stop took {elapsed:.1f} s with --graceful-timeout-s 1"
    assert not [p for p in tree if alive(p)], "processes left behind after the deadline"
    if CGROUPS_WRITABLE:
        assert not server_cgroups(server.proc.pid)


def test_a_second_sigterm_during_the_graceful_stop_still_cleans_up(
    start_server, make_function, tmp_path: Path
) -> None:
    code, started, gate = gated(make_function, tmp_path)
    server = start_server()
    with client_for(server.url) as client:
        assert deploy(client, "slow", code, timeout_s=30).status_code == 201
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(invoke, server.url, "slow", {"n": 1})
        wait_for(lambda: lines(started), 10, "the handler to start")
        cgroups = server_cgroups(server.proc.pid)
        with pidfds(descendants(server.proc.pid)) as fds:
            server.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "stopping" in server.stderr(), 10, "the server to begin its stop")
            server.proc.send_signal(signal.SIGTERM)  # an impatient supervisor
            gate.touch()  # a server that keeps draining can finish now
            status = server.proc.wait(timeout=30)
            left = still_running_after(fds, timeout=5)
        with contextlib.suppress(httpx.TransportError):
            in_flight.result(timeout=30)
    problems = []
    if status != 0:
        problems.append(f"exit status {status}")
    if left:
        problems.append(f"processes left running: {left}")
    if CGROUPS_WRITABLE and [p for p in cgroups if p.exists()]:
        problems.append(f"cgroups left: {[str(p) for p in cgroups if p.exists()]}")
    assert not problems


# --- code updates with calls in flight ----------------------------------------------


def test_a_new_deploy_takes_new_calls_while_the_old_code_finishes_and_drains(
    start_server, make_function, tmp_path: Path
) -> None:
    v1, started, gate = gated(make_function, tmp_path, "v1")
    v2 = make_function(app="def handler(event, context):\n    return {'version': 'v2'}\n")
    server = start_server()
    with client_for(server.url) as client, ThreadPoolExecutor(1) as pool:
        assert deploy(client, "f", v1, timeout_s=30).status_code == 201
        in_flight = pool.submit(invoke, server.url, "f", {"n": 1})
        wait_for(lambda: lines(started), 10, "the v1 handler to start")
        state = client.get("/v1/functions/f").json()["state"]
        assert state["instances"]["busy"] == 1
        old_zygote = state["zygote"]["pid"]
        with pidfds([old_zygote]) as fds:
            r = deploy(client, "f", v2, timeout_s=30)
            assert r.status_code == 200, r.text
            assert r.json()["state"]["generation"] == state["generation"] + 1
            for _ in range(3):
                r = client.post("/v1/functions/f/invoke", json={})
                assert r.status_code == 200 and r.json() == {"version": "v2"}, r.text
            # The only place the old generation shows over HTTP: a gauge.
            assert metric(client, 'fastfaas_zygotes{state="draining"}') == 1
            assert not in_flight.done()
            assert still_running_after(fds, timeout=0) == [old_zygote], (
                "the old zygote died under its call")

            gate.touch()
            response = in_flight.result(timeout=30)
            assert response.status_code == 200
            assert response.json() == {"n": 1, "version": "v1"}
            assert not still_running_after(fds, timeout=5), "the old zygote did not drain"
        wait_for(lambda: metric(client, 'fastfaas_zygotes{state="draining"}') == 0, 5,
                 "the draining gauge to fall to 0")
        r = client.post("/v1/functions/f/invoke", json={})
        assert r.json() == {"version": "v2"}
        assert r.headers["x-fastfaas-start"] in ("warm", "prewarmed")
        state = client.get("/v1/functions/f").json()["state"]
        assert state["zygote"]["pid"] != old_zygote


# --- requirements.txt from a local wheelhouse ----------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def build_wheel(wheelhouse: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel written by hand (no build backend, no network).

    Its members are mode 0600: the server must make the installed files readable.
    """
    dist_info = f"{name}-{version}.dist-info"
    members = {path: text.encode() for path, text in files.items()}
    members[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n").encode()
    members[f"{dist_info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: fastfaas-tests\n"
                                     b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in members.items()]
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = wheelhouse / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in members.items():
            info = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o600) << 16
            zf.writestr(info, data)
    return wheel


def build_sdist(wheelhouse: Path, name: str, version: str) -> Path:
    """An sdist only (no wheel): installing it would run its setup.py."""
    base = f"{name}-{version}"
    files = {
        f"{base}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{base}/setup.py": "raise SystemExit('an sdist was built: source builds are off')\n",
    }
    sdist = wheelhouse / f"{base}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sdist


def assert_readable_by_others(root: Path) -> None:
    """Directories o+rx, files o+r, all the way down."""
    assert os.stat(root).st_mode & 0o005 == 0o005, root
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            mode = os.stat(os.path.join(dirpath, name)).st_mode
            assert mode & 0o005 == 0o005, (dirpath, name, oct(mode))
        for name in filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert mode & stat.S_IROTH, (dirpath, name, oct(mode))


def test_requirements_install_from_a_local_wheelhouse_once_per_requirements_file(
    start_server, make_function, tmp_path: Path
) -> None:
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    build_wheel(wheelhouse, "ffdemo", "1.0", {"ffdemo/__init__.py": "VALUE = 'from a wheel'\n"})
    build_sdist(wheelhouse, "ffsdist", "1.0")
    data = tmp_path / "data"
    old_umask = os.umask(0o077)  # pip then writes 0600 files: the server must fix the modes
    try:
        server = start_server("--pip-arg=--no-index", f"--pip-arg=--find-links={wheelhouse}",
                              data_dir=data)
    finally:
        os.umask(old_umask)
    requirements = {"requirements.txt": "ffdemo==1.0\n"}
    first = make_function(
        app="import ffdemo\ndef handler(e, c):\n    return ffdemo.VALUE\n", **requirements)
    second = make_function(
        app="import ffdemo\ndef handler(e, c):\n    return ffdemo.VALUE.upper()\n",
        **requirements)
    deps = data / "deps"
    with client_for(server.url, timeout=120) as client:
        r = deploy(client, "first", first)
        assert r.status_code == 201, r.text
        first_dir = data / "code" / r.json()["code_sha256"]
        cached = os.listdir(deps)
        assert len(cached) == 1, cached
        cached_module = deps / cached[0] / "ffdemo" / "__init__.py"
        # Before any import: what the import writes (__pycache__) is not the install.
        assert_readable_by_others(first_dir)
        assert_readable_by_others(deps / cached[0])
        r = client.post("/v1/functions/first/invoke", json={})
        assert r.status_code == 200 and r.json() == "from a wheel", r.text

        deps_mtime = deps.stat().st_mtime_ns
        r = deploy(client, "second", second)
        assert r.status_code == 201, r.text
        second_dir = data / "code" / r.json()["code_sha256"]
        assert second_dir != first_dir
        assert_readable_by_others(second_dir)
        # pip installs into a new temporary directory of deps/: none was made
        assert os.listdir(deps) == cached and deps.stat().st_mtime_ns == deps_mtime
        # both bundles link the one cached install
        for code_dir in (first_dir, second_dir):
            assert (code_dir / "ffdemo" / "__init__.py").stat().st_ino == (
                cached_module.stat().st_ino)
        r = client.post("/v1/functions/second/invoke", json={})
        assert r.status_code == 200 and r.json() == "FROM A WHEEL", r.text

        missing = make_function(app="def handler(e, c):\n    return 1\n",
                                **{"requirements.txt": "no-such-package-ff==1.0\n"})
        r = deploy(client, "missing", missing)
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["error"] == "InvalidRequest"
        assert "installing requirements.txt failed" in body["message"]
        assert "No matching distribution found for no-such-package-ff" in body["message"]

        sdist_only = make_function(app="def handler(e, c):\n    return 1\n",
                                   **{"requirements.txt": "ffsdist==1.0\n"})
        r = deploy(client, "sdist", sdist_only)
        assert r.status_code == 400, r.text
        message = r.json()["message"]
        assert "binary wheels" in message and "--allow-source-builds" in message, message
        assert "ffsdist" in message and "an sdist was built" not in message, message

        for name in ("missing", "sdist"):
            assert client.get(f"/v1/functions/{name}").status_code == 404
        assert os.listdir(deps) == cached  # failed installs leave nothing behind
        assert not [p for p in os.listdir(data / "code") if p.startswith(".")]


@contextlib.contextmanager
def silent_index() -> Iterator[tuple[str, socket.socket]]:
    """A package index on loopback that accepts connections and never answers:
    pip waits on it for its whole --timeout. Yields (its URL, the listener)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/", listener


def deploy_with_requirements(url: str, code: Path) -> httpx.Response:
    with client_for(url, timeout=120) as client:
        return deploy(client, "needs-index", code)


def _needs_index(make_function: Callable[..., Path]) -> Path:
    return make_function(app="def handler(e, c):\n    return 1\n",
                         **{"requirements.txt": "ffdemo\n"})


def test_the_graceful_timeout_also_bounds_a_stop_behind_a_pip_install(
    start_server, make_function
) -> None:
    with silent_index() as (index, listener), ThreadPoolExecutor(1) as pool:
        server = start_server("--graceful-timeout-s", "0.5", "--pip-arg=--no-index",
                              f"--pip-arg=--find-links={index}", "--pip-arg=--timeout=5",
                              "--pip-arg=--retries=0")
        deploying = pool.submit(deploy_with_requirements, server.url, _needs_index(make_function))
        conn, _ = listener.accept()  # pip is asking the index, which will not answer
        with conn, pidfds(descendants(server.proc.pid)) as fds:
            t0 = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            status = server.proc.wait(timeout=60)
            elapsed = time.monotonic() - t0
            left = still_running_after(fds, timeout=5)
        with contextlib.suppress(httpx.TransportError):
            deploying.result(timeout=30)
    assert status == 0 and not left, (status, left)
    assert elapsed < 3, f"the stop took {elapsed:.1f} s with --graceful-timeout-s 0.5"


def test_a_kill_9_during_a_pip_install_leaves_no_process_and_no_temporary_directory(
    start_server, make_function, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    machine_tmp = tmp_path / "tmp"  # the server's TMPDIR: pip's scratch must not go there
    machine_tmp.mkdir()
    with silent_index() as (index, listener), ThreadPoolExecutor(1) as pool:
        server = start_server("--pip-arg=--no-index", f"--pip-arg=--find-links={index}",
                              "--pip-arg=--timeout=30", "--pip-arg=--retries=0",
                              data_dir=data, env={"TMPDIR": str(machine_tmp)})
        deploying = pool.submit(deploy_with_requirements, server.url, _needs_index(make_function))
        conn, _ = listener.accept()  # pip is asking the index, which will not answer
        with conn, pidfds(descendants(server.proc.pid)) as fds:
            server.stop(signal.SIGKILL)
            left = still_running_after(fds, timeout=3)
            for fd, pid in fds.items():  # what that server started is ours to end
                if pid in left:
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
            assert not still_running_after(fds, timeout=5)
        with contextlib.suppress(httpx.TransportError):
            deploying.result(timeout=30)
    start_server(data_dir=data)
    leftovers = [*(data / "deps").glob(".pip-*"), *(data / "code").glob(".unpack-*")]
    problems = []
    if left:
        problems.append(f"processes outlived the killed server: {left}")
    if leftovers:
        problems.append(f"temporary directories after the restart: {leftovers}")
    if list(machine_tmp.iterdir()):  # a killed pip cannot remove its own
        problems.append(f"left in the server's TMPDIR: {list(machine_tmp.iterdir())}")
    assert not problems
