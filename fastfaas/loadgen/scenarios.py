"""Scenarios: what `fastfaas bench` runs.

- `population`: M functions deployed by the harness, Zipf popularity, a
  closed or open loop; latency per start kind.
- `cold`: each start kind forced on purpose (in `cold.py`).
- `compare`: one closed-loop scenario against fastfaas and, in the same run,
  the baselines in bench/baselines/ (spawn-per-request, a forkserver pool,
  uvicorn), serving the same handler; ratios pair by pair.
- `validate`: the generator against wrk on a fixed-response server.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fastfaas.loadgen.engine import Plan, Target
from fastfaas.loadgen.stats import Stats

HANDLER_SOURCE = textwrap.dedent('''\
    """fastfaas bench: sleeps or computes for BENCH_MS, returns BENCH_RESULT_BYTES of padding."""
    import os
    import time

    MODE = os.environ.get("BENCH_MODE", "sleep")
    SECONDS = float(os.environ.get("BENCH_MS", "0")) / 1000
    PAD = "x" * int(os.environ.get("BENCH_RESULT_BYTES", "0"))


    def handler(event, context):
        if SECONDS and MODE == "cpu":
            end = time.perf_counter() + SECONDS
            while time.perf_counter() < end:
                pass
        elif SECONDS:
            time.sleep(SECONDS)
        return {"ok": True, "pad": PAD} if PAD else {"ok": True}
''')


def handler_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("app.py", date_time=(1980, 1, 1, 0, 0, 0))
        info.external_attr = 0o644 << 16
        zf.writestr(info, HANDLER_SOURCE)
    return buf.getvalue()


def payload_of(size: int) -> bytes:
    """A JSON event of about `size` bytes."""
    if size <= 2:
        return b"{}"
    return b'{"pad":"' + b"x" * max(0, size - 10) + b'"}'


# --- talking to a fastfaas server (deployments) ------------------------------------


class Api:
    """The few native API calls the harness needs, over httpx."""

    def __init__(self, url: str, token: str | None = None) -> None:
        import httpx

        headers = {"authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.Client(base_url=url, headers=headers, timeout=120)

    def deploy(self, name: str, *, memory_mb: int = 128, env: dict[str, str] | None = None,
               **config: Any) -> dict[str, Any]:
        params = {"handler": "app.handler", "memory_mb": str(memory_mb),
                  "env": json.dumps(env or {})}
        params.update({k: str(v) for k, v in config.items()})
        r = self.client.put(f"/v1/functions/{name}", params=params, content=handler_zip(),
                            headers={"content-type": "application/zip"})
        if r.status_code >= 400:
            raise RuntimeError(f"deploying {name} failed: {r.status_code} {r.text}")
        result: dict[str, Any] = r.json()
        return result

    def warm(self, name: str) -> None:
        r = self.client.post(f"/v1/functions/{name}/warm")
        r.raise_for_status()

    def delete(self, name: str) -> None:
        self.client.delete(f"/v1/functions/{name}")

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client.get("/healthz").json()
        return result

    def close(self) -> None:
        self.client.close()


def function_env(mode: str, ms: float, result_bytes: int) -> dict[str, str]:
    return {"BENCH_MODE": mode, "BENCH_MS": f"{ms:g}", "BENCH_RESULT_BYTES": str(result_bytes)}


def population_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(count)]


def deploy_population(api: Api, prefix: str, count: int, *, memory_mb: int, mode: str,
                      ms: float, result_bytes: int,
                      deployed: list[str] | None = None) -> list[str]:
    """`count` functions of the same handler, each its own function (own zygote).

    Each name is appended to `deployed` once deployed, so that a caller can
    delete them all even when a later deployment fails.
    """
    names = population_names(prefix, count)
    env = function_env(mode, ms, result_bytes)
    for name in names:
        api.deploy(name, memory_mb=memory_mb, env=env)
        if deployed is not None:
            deployed.append(name)
    return names


# --- servers started by the harness ----------------------------------------------------


def _die_with_parent() -> None:
    """In the server's child, before exec: SIGTERM it (a graceful stop) if the
    harness dies, even by SIGTERM or SIGKILL, when no `finally` of ours runs."""
    from fastfaas import _native

    _native.set_pdeathsig(signal.SIGTERM)


class ServerProcess:
    """A server subprocess that prints `... listening on http://HOST:PORT` when ready."""

    def __init__(self, cmd: Sequence[str], *, cwd: Path | None = None,
                 env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.cmd = list(cmd)
        self._log = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=cwd, env={**os.environ, **(env or {})},
                                     start_new_session=True, preexec_fn=_die_with_parent)
        assert self.proc.stdout is not None
        try:
            line = self.proc.stdout.readline().decode(errors="replace")
        except BaseException:  # e.g. Ctrl-C while it starts: it has its own session
            self.stop()
            raise
        if "listening on http://" not in line:
            self.stop()
            raise RuntimeError(f"{self.cmd[:4]} did not start: {line!r}" +
                               (f" (see {log})" if log else ""))
        self.url = line.split("listening on ", 1)[1].split()[0].rstrip(",")
        hostport = self.url.split("//", 1)[1]
        self.host, port = hostport.rsplit(":", 1)
        self.port = int(port)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the server left in its group
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]
        return self.proc.returncode


@contextlib.contextmanager
def fastfaas_server(*args: str, log: Path | None = None) -> Iterator[ServerProcess]:
    """`fastfaas serve --port 0` on a fresh data directory, stopped at the end."""
    with tempfile.TemporaryDirectory(prefix="fastfaas-bench-") as tmp:
        server = ServerProcess([sys.executable, "-m", "fastfaas", "serve", "--port", "0",
                                "--data-dir", str(Path(tmp) / "data"), *args], log=log)
        try:
            yield server
        finally:
            server.stop()


# --- wrk, for the generator's own validation ----------------------------------------------

_WRK_SCRIPT = textwrap.dedent('''\
    wrk.method = "POST"
    wrk.body = "{}"
    wrk.headers["Content-Type"] = "application/json"
    done = function(summary, latency, requests)
      io.write(string.format("WRKJSON {\\"requests\\": %d, \\"duration_us\\": %d, " ..
        "\\"p50_us\\": %d, \\"p99_us\\": %d, \\"errors\\": %d}\\n",
        summary.requests, summary.duration, latency:percentile(50),
        latency:percentile(99), summary.errors.status + summary.errors.connect +
        summary.errors.read + summary.errors.write + summary.errors.timeout))
    end
''')


def wrk(url: str, connections: int, seconds: float, threads: int = 2) -> dict[str, Any]:
    """Run wrk against `url` (POST {}); requests/s and p50/p99 (ms)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT)
        script = f.name
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}",
                              f"-d{max(1, round(seconds))}s", "-s", script, url],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    d = json.loads(line[len("WRKJSON "):])
    return {"rps": d["requests"] / (d["duration_us"] / 1e6), "p50_ms": d["p50_us"] / 1000,
            "p99_ms": d["p99_us"] / 1000, "requests": d["requests"], "errors": d["errors"]}


def plan_for(target: Target, functions: list[str], names: Mapping[str, str] | None = None,
             **kw: Any) -> Plan:
    """A checked Plan; `names` as for Plan.check (what to call fields in errors)."""
    plan = Plan(target=target, functions=functions, **kw)
    plan.check(names)
    return plan


def stats_ratio(a: Stats, b: Stats) -> dict[str, float]:
    """b relative to a: throughput ratio and p50 ratio."""
    ta = a.throughput
    tb = b.throughput or 0.0
    pa = a.all_latency().percentile(50) or 1
    pb = b.all_latency().percentile(50) or 1
    return {"throughput": round(tb / ta, 3) if ta else float("nan"),
            "p50": round(pb / pa, 3)}
