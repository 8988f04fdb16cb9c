"""Shared fixtures: a real Runtime over real processes and (where writable) real cgroups."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

import fastfaas
from fastfaas.runtime.cgroups import Cgroups

REQUIRE_CGROUPS = os.environ.get("FASTFAAS_REQUIRE_CGROUPS") == "1"
CGROUPS_MODE = "require" if REQUIRE_CGROUPS else "auto"


def _cgroups_writable() -> bool:
    probe = Cgroups("auto")
    probe.start()
    ok = probe.enabled
    probe.close()
    return ok


CGROUPS_WRITABLE = _cgroups_writable()

# The suite's runtimes and servers run at `standard` (the capacity tests hand
# their functions sockets and files on the host); tests of the strict level
# (test_sandbox.py) ask for it.
os.environ["FASTFAAS_ISOLATION"] = (
    "standard" if CGROUPS_WRITABLE or REQUIRE_CGROUPS else "none")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CGROUPS_WRITABLE or REQUIRE_CGROUPS:
        return  # with FASTFAAS_REQUIRE_CGROUPS=1 such tests run, and fail, instead of skipping
    skip = pytest.mark.skip(reason="needs writable cgroups (run as root)")
    for item in items:
        if "cgroups" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cgroups_mode() -> str:
    return CGROUPS_MODE


@pytest.fixture
def make_function(tmp_path: Path) -> Callable[..., Path]:
    """make_function(app="def handler(e, c): ...", **other_files) -> a code directory."""
    counter = iter(range(1_000_000))

    def make(**files: str) -> Path:
        d = tmp_path / f"fn{next(counter)}"
        d.mkdir()
        for name, source in files.items():
            path = d / (name if "." in name else f"{name}.py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return d

    return make


@pytest.fixture
async def runtime(tmp_path: Path, cgroups_mode: str) -> AsyncIterator[fastfaas.Runtime]:
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        yield rt


# --- a real `fastfaas serve` process ---------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _only_child(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        (child,) = (int(c) for c in f.read().split())
    return child


class ServerProcess:
    """`python -m fastfaas serve --port 0` in a subprocess, ready when it says so."""

    def __init__(self, data_dir: Path, cgroups_mode: str, *args: str,
                 env: dict[str, str] | None = None, prefix: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        cmd = [*prefix, sys.executable, "-m", "fastfaas", "serve", "--port", "0", "--data-dir",
               str(data_dir), "--cgroups", cgroups_mode, *args]
        self.log_path = data_dir.parent / f"{data_dir.name}.stderr"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env={**os.environ, **(env or {})})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until ready or dead (pytest-timeout)
        if "listening on" not in line:
            self.proc.wait()
            self.proc.stdout.close()
            raise RuntimeError(f"the server did not start: {line!r}\n{self.stderr()}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])
        # Under a prefix (`unshare --pid --fork ...`) the server is the prefix's
        # child, and the one to signal: unshare does not pass SIGTERM on.
        self.pid = self.proc.pid if not prefix else _only_child(self.proc.pid)

    def stderr(self) -> str:
        """What the server wrote on stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the server, wait for it; every process it started must be gone."""
        if self.proc.poll() is not None:
            self._close_pipe()
            return self.proc.returncode
        below = descendants(self.proc.pid)
        os.kill(self.pid, sig)
        code = self.proc.wait(timeout)
        self._close_pipe()
        if sig != signal.SIGKILL:
            left = [p for p in below if alive(p)]
            assert not left, f"processes left behind after the server stopped: {left}"
        return code

    def _close_pipe(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def start_server(tmp_path: Path, cgroups_mode: str) -> Iterator[Callable[..., ServerProcess]]:
    """start_server(*serve_args, data_dir=..., env=..., prefix=...) -> a running ServerProcess.

    Every server started is stopped (SIGTERM) at the end of the test.
    """
    servers: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None,
              prefix: Sequence[str] = ()) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / "server-data", cgroups_mode, *args,
                               env=env, prefix=prefix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def module_server(tmp_path_factory: pytest.TempPathFactory, name: str,
                  *args: str) -> Iterator[ServerProcess]:
    """For a module-scoped fixture: one `fastfaas serve *args` on a fresh data directory,
    stopped at the module's end (every child gone)."""
    srv = ServerProcess(tmp_path_factory.mktemp(name) / "data", CGROUPS_MODE, *args)
    try:
        yield srv
    finally:
        srv.stop()


# --- HTTP helpers ----------------------------------------------------------------------


def zip_of(**files: str | bytes) -> bytes:
    """A code zip in memory: name -> source (dedented; ".py" added to a bare name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, source in files.items():
            data = source if isinstance(source, bytes) else textwrap.dedent(source).encode()
            zf.writestr(name if "." in name else f"{name}.py", data)
    return buf.getvalue()


def invoke(client: httpx.Client, name: str, event: Any = None,
           **kwargs: Any) -> httpx.Response:
    return client.post(f"/v1/functions/{name}/invoke", json={} if event is None else event,
                       **kwargs)
