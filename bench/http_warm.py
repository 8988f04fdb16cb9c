#!/usr/bin/env python3
"""Warm invocations over HTTP: `fastfaas serve` against uvicorn on the same handler.

    .venv/bin/python bench/http_warm.py [--quick] [--rounds N] [--duration S]
                                        [--requests N] [--out PATH] [--only TARGET]

Two servers run side by side on 127.0.0.1, both started here as subprocesses:

- fastfaas: `python -m fastfaas serve --port 0`, the trivial handler
  (bench/functions/ok/app.py, `return {"ok": True}`) deployed as a zip and
  invoked with `POST /v1/functions/NAME/invoke`, body `{}`;
- uvicorn: the same handler module called in-process by a raw ASGI app
  (bench/baselines/asgi_ok.py), `uvicorn --loop uvloop --http httptools`, one
  worker, no access log: what a user would run instead, with no isolation.

Measured for both, in the same run, alternately so that a noisy spell hits
both alike:

1. throughput at 32 connections: `wrk -t2 -c32 -d<duration>` with a Lua
   script (POST, body `{}`) whose `done` hook prints a JSON line; after a
   warm-up run per server, `rounds` rounds, each measuring both servers back
   to back (order alternating); the ratio fastfaas/uvicorn per round, and
   the median of the rounds and of the ratios; per round and server, from
   /proc around the wrk run, the server's CPU per request (all its threads),
   its child processes' (instances, zygotes), the involuntary context
   switches of its main thread (the event loop) per request, that thread's
   share of the wall time on a CPU and its wait for one per request
   (/proc/PID/task/PID/schedstat), and how busy the machine's CPUs were
   (/proc/stat: all but idle and iowait);
2. latency at 1 connection: a raw-socket HTTP/1.1 keep-alive client (blocking
   socket, TCP_NODELAY, the request bytes built once, the response read to
   its Content-Length), `requests` sequential requests in blocks alternating
   between the servers, each request timed with perf_counter_ns; p50, p90,
   p99, max and the ratio to uvicorn, plus fastfaas's own
   X-Fastfaas-Server-Us and X-Fastfaas-Duration-Us;
3. the X-Fastfaas-Start kinds seen in fastfaas's latency run (all warm, once
   warmed up).

Prints a table (stdout; progress on stderr) and writes a JSON report to
bench/results/http-warm-<date>-<git short sha>.json (or --out; a --quick run
writes only with --out). Targets are reported as booleans, not asserted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import gc
import http.client
import importlib.metadata
import importlib.util
import io
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import _common
from _common import BenchError, log, ms, nearest_rank, summary

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
HANDLER_DIR = BENCH / "functions" / "ok"  # app.py: handler(event, context) -> {"ok": True}
ASGI_DIR = BENCH / "baselines"  # asgi_ok.py: the uvicorn baseline's ASGI app
HOST = "127.0.0.1"
FUNCTION = "bench-http-ok"
# One full vCPU under the CPU-quota rule (CPU ∝ memory, 1769 MB = 1 vCPU):
# at 128 MB an instance gets 7% of a CPU and the quota, not the server, would
# be measured. uvicorn runs with no limit at all.
MEMORY_MB = 1769
EVENT_BODY = b"{}"
EXPECTED = {"ok": True}
TARGETS = ("fastfaas", "uvicorn")

TARGET_RPS = 10_000.0
TARGET_P50_MS = 0.25
TARGET_RATIO = 0.8

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 40
LEFTOVER_GRACE_S = 2.0

WRK_SCRIPT = r"""
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "stdev": %.1f, "p50": %d, "p90": %d, "p99": %d, ' ..
    '"max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


@dataclasses.dataclass(frozen=True)
class Params:
    rounds: int  # throughput rounds; each measures both servers
    duration_s: int  # wrk's -d per server per round
    warmup_s: int  # one wrk run per server before the rounds
    connections: int  # wrk's -c
    threads: int  # wrk's -t
    requests: int  # latency samples per server, split into blocks
    warmup_requests: int  # per server, on a fresh connection, before the first block
    block_warmup: int  # per block, on the block's fresh connection
    blocks: int  # latency blocks per server, alternating with the other server's
    memory_mb: int


# 15 rounds: one round's ratio swings from 0.5 to 1.0 on this shared machine
# (bench/README.md); a median of five did not settle between runs.
FULL = Params(rounds=15, duration_s=4, warmup_s=3, connections=32, threads=2,
              requests=20_000, warmup_requests=2_000, block_warmup=200, blocks=4,
              memory_mb=MEMORY_MB)
QUICK = Params(rounds=2, duration_s=1, warmup_s=1, connections=32, threads=2,
               requests=2_000, warmup_requests=200, block_warmup=50, blocks=2,
               memory_mb=MEMORY_MB)

latency_summary = summary


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


# --- server processes -------------------------------------------------------------------


class Server:
    """One server under test, started as a subprocess in its own session.

    Readiness is a line the server prints on `ready_stream` (stdout or
    stderr), matched by `ready_re` whose group 1 is the port: the pipe is read
    until it appears (no sleeps), then a thread keeps draining it so the
    server never blocks on a full pipe. The other stream goes to a log file.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], ready_stream: str,
                 ready_re: bytes, log_path: Path, invoke_path: str) -> None:
        self.name = name
        self.argv = argv
        self.invoke_path = invoke_path
        self.log_path = log_path
        self.port = 0
        self.ready_line = ""
        self.exit: dict[str, Any] = {}
        self._lines: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._log_file = log_path.open("wb")
        piped = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        others = {"stdout": self._log_file, "stderr": self._log_file}
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL,
            stdout=piped["stdout"] if ready_stream == "stdout" else others["stdout"],
            stderr=piped["stderr"] if ready_stream == "stderr" else others["stderr"],
            start_new_session=True,  # a ^C here reaches us only; stop() sends SIGTERM
        )
        pipe = self.proc.stdout if ready_stream == "stdout" else self.proc.stderr
        assert pipe is not None
        self._pipe: IO[bytes] = pipe
        self._drainer: threading.Thread | None = None
        try:
            self.port = self._wait_ready(re.compile(ready_re))
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, ready: re.Pattern[bytes]) -> int:
        fd = self._pipe.fileno()
        buf = b""
        deadline = time.monotonic() + READY_TIMEOUT_S
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: not ready after {READY_TIMEOUT_S:g} s "
                                     f"(no line matching {ready.pattern!r})\n{self.log_tail()}")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(STOP_TIMEOUT_S)
                    raise BenchError(f"{self.name}: exited with {self.proc.returncode} before "
                                     f"it was ready: {self.argv}\n{self.log_tail()}")
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._lines.append(line.decode(errors="replace"))
                    m = ready.search(line)
                    if m:
                        self.ready_line = line.decode(errors="replace").strip()
                        self._drainer = threading.Thread(
                            target=self._drain, args=(buf,), daemon=True,
                            name=f"drain-{self.name}")
                        self._drainer.start()
                        return int(m.group(1))

    def _drain(self, rest: bytes) -> None:
        buf = rest
        while chunk := os.read(self._pipe.fileno(), 65536):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            self._lines.extend(line.decode(errors="replace") for line in lines)
        if buf:
            self._lines.append(buf.decode(errors="replace"))

    def log_tail(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        logged: list[str] = []
        with contextlib.suppress(OSError):
            logged = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([*logged[-LOG_TAIL_LINES:], *self._lines])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.proc.returncode} during the "
                             f"run\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL after STOP_TIMEOUT_S. Records how it went in .exit.

        The server's descendants are listed before the SIGTERM; any still alive
        LEFTOVER_GRACE_S after the server exited is reported and killed by pid.
        """
        if self.exit:
            return
        died_early = self.proc.poll() is not None
        descendants = {} if died_early else _common.descendants(self.proc.pid)
        if not died_early:
            self.proc.send_signal(signal.SIGTERM)
        t0 = time.perf_counter()
        try:
            self.proc.wait(STOP_TIMEOUT_S)
            killed = False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            killed = True
        stop_s = time.perf_counter() - t0
        deadline = time.monotonic() + LEFTOVER_GRACE_S
        while (left := _still_alive(descendants)) and time.monotonic() < deadline:
            time.sleep(0.01)  # a bounded wait for the children to finish exiting
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._drainer is not None:
            self._drainer.join(STOP_TIMEOUT_S)
        self._pipe.close()
        self._log_file.close()
        self.exit = {
            "returncode": self.proc.returncode,
            "exited_before_stop": died_early,
            "killed_after_timeout": killed,
            "stop_s": round(stop_s, 3),
            "descendants_at_stop": len(descendants),
            "descendants_left_after_exit": [
                {"pid": pid, "cmdline": _cmdline(pid)} for pid in left],
            "log_tail": self.log_tail().splitlines()[-LOG_TAIL_LINES:],
        }


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def _still_alive(pids: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in pids.items():
        fields = _common.proc_stat(pid)
        if fields is not None and fields[0] != "Z" and fields[19] == start:
            alive.append(pid)
    return alive


def start_uvicorn(tmp: Path) -> Server:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(HANDLER_DIR)
    env.pop("WEB_CONCURRENCY", None)  # would set uvicorn's worker count
    argv = [
        sys.executable, "-m", "uvicorn", "asgi_ok:app", "--app-dir", str(ASGI_DIR),
        "--host", HOST, "--port", "0", "--workers", "1",
        "--loop", "uvloop", "--http", "httptools", "--lifespan", "off", "--no-access-log",
        # info, not warning, only so that "Uvicorn running on ...:PORT" is printed;
        # with the access log off nothing is logged per request at either level.
        "--log-level", "info",
    ]
    return Server("uvicorn", argv, env, "stderr", rb"Uvicorn running on http://[\d.]+:(\d+)",
                  tmp / "uvicorn.log", "/")


def start_fastfaas(tmp: Path, extra: Sequence[str] = ()) -> Server:
    data_dir = tmp / "fastfaas-data"
    data_dir.mkdir()
    argv = [sys.executable, "-m", "fastfaas", "serve", "--host", HOST, "--port", "0",
            "--data-dir", str(data_dir), *extra]
    return Server("fastfaas", argv, dict(os.environ), "stdout",
                  rb"fastfaas: listening on http://[\d.]+:(\d+)", tmp / "fastfaas.log",
                  f"/v1/functions/{FUNCTION}/invoke")


def http_call(port: int, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT_S)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def handler_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(HANDLER_DIR / "app.py", "app.py")
    return buf.getvalue()


def deploy_fastfaas(server: Server, memory_mb: int) -> dict[str, Any]:
    """Deploy the handler and make the first (claiming) invocation, outside the figures."""
    path = f"/v1/functions/{FUNCTION}?handler=app.handler&memory_mb={memory_mb}"
    status, _, body = http_call(server.port, "PUT", path, handler_zip(),
                                {"Content-Type": "application/zip"})
    if status not in (200, 201):
        raise BenchError(f"deploy: PUT {path} answered {status}: {body[:500]!r}\n"
                         f"{server.log_tail()}")
    out: dict[str, Any] = {"deploy_status": status}
    with contextlib.suppress(ValueError):
        out["deploy_response"] = json.loads(body)
    status, headers, body = http_call(server.port, "POST", server.invoke_path, EVENT_BODY,
                                      {"Content-Type": "application/json"})
    if status != 200 or json.loads(body) != EXPECTED:
        raise BenchError(f"first invoke answered {status}: {body[:500]!r}\n{server.log_tail()}")
    out["first_invoke"] = {k: v for k, v in headers.items() if k.startswith("x-fastfaas-")}
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        status, _, body = http_call(server.port, "GET", "/healthz")
        out["healthz"] = json.loads(body) if status == 200 else {"status": status}
    return out


def check_uvicorn(server: Server) -> None:
    status, _, body = http_call(server.port, "POST", server.invoke_path, EVENT_BODY,
                                {"Content-Type": "application/json"})
    if status != 200 or json.loads(body) != EXPECTED:
        raise BenchError(f"uvicorn answered {status}: {body[:500]!r}\n{server.log_tail()}")


# --- throughput: wrk --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CpuSample:
    """What the server and the processes below it have used so far."""

    server_ticks: int  # utime + stime of the server process, all its threads
    below: dict[tuple[int, str], int]  # (pid, start time) -> utime + stime, per descendant
    preempted: int  # involuntary context switches of the server's main (event loop) thread
    loop_run_ns: int  # the main thread's time on a CPU (/proc/PID/task/PID/schedstat)
    loop_wait_ns: int  # its time runnable on a run queue, waiting for a CPU
    wall_ns: int  # time.monotonic_ns() when sampled


def cpu_sample(pid: int) -> CpuSample | None:
    fields = _common.proc_stat(pid)
    if fields is None:
        return None
    below: dict[tuple[int, str], int] = {}
    for child, start in _common.descendants(pid).items():
        if (its := _common.proc_stat(child)) is not None:
            below[child, start] = int(its[11]) + int(its[12])
    preempted = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("nonvoluntary_ctxt_switches:"):
                preempted = int(line.split()[1])
    run_ns = wait_ns = 0
    with contextlib.suppress(OSError, ValueError):
        run, wait, _slices = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
        run_ns, wait_ns = int(run), int(wait)
    return CpuSample(int(fields[11]) + int(fields[12]), below, preempted, run_ns, wait_ns,
                     time.monotonic_ns())


def cpu_per_request(before: CpuSample | None, after: CpuSample | None,
                    requests: int) -> dict[str, float | None]:
    """Per request over a round: the server's CPU (us), its descendants' (instances,
    zygotes; a process that started during the round counts whole), and how often the
    event loop's thread was preempted; and the share of the round's wall time that
    thread ran (near 1: the loop is the limit), and how long it waited for a CPU per
    request (us)."""
    if before is None or after is None or requests <= 0:
        return {"server_cpu_us": None, "below_cpu_us": None, "preemptions": None,
                "loop_running": None, "loop_wait_us": None}
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    below = sum(ticks - before.below.get(key, 0) for key, ticks in after.below.items())
    return {
        "server_cpu_us": round((after.server_ticks - before.server_ticks) * tick_us / requests, 1),
        "below_cpu_us": round(below * tick_us / requests, 1),
        "preemptions": round((after.preempted - before.preempted) / requests, 3),
        "loop_running": (round((after.loop_run_ns - before.loop_run_ns) / wall, 3)
                         if (wall := after.wall_ns - before.wall_ns) > 0 and after.loop_run_ns
                         else None),
        "loop_wait_us": (round((after.loop_wait_ns - before.loop_wait_ns) / 1000 / requests, 2)
                         if after.loop_run_ns else None),
    }


def run_wrk(server: Server, seconds: int, p: Params, script: Path) -> dict[str, Any]:
    url = f"http://{HOST}:{server.port}{server.invoke_path}"
    argv = ["wrk", f"-t{p.threads}", f"-c{p.connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(script), url]
    before, machine_before = cpu_sample(server.proc.pid), _common.cpu_times()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          timeout=seconds + 60)
    after, machine_after = cpu_sample(server.proc.pid), _common.cpu_times()
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {argv}\n{proc.stdout}\n{proc.stderr}")
    r: dict[str, Any] = json.loads(line.removeprefix("WRK_JSON "))
    seconds_run = r["duration_us"] / 1e6
    failed = r["errors"]["status"]  # non-2xx/3xx answers, counted in "requests" too
    r["rps"] = round(r["requests"] / seconds_run, 1)
    r["ok_rps"] = round((r["requests"] - failed) / seconds_run, 1)
    r["errors_total"] = sum(r["errors"].values())
    r.update(cpu_per_request(before, after, r["requests"]))
    r["machine_busy"] = _common.busy_share(machine_before, machine_after)
    server.check_alive()
    return r


def bench_throughput(servers: dict[str, Server], p: Params, script: Path) -> dict[str, Any]:
    for name, server in servers.items():
        w = run_wrk(server, p.warmup_s, p, script)
        log(f"throughput warm-up {name}: {w['rps']:.0f} req/s, errors {w['errors']}")
    rounds: list[dict[str, Any]] = []
    order = list(servers)
    for i in range(p.rounds):
        row: dict[str, Any] = {"order": order[:]}
        for name in order:
            row[name] = run_wrk(servers[name], p.duration_s, p, script)
        if len(servers) == 2:
            row["ratio"] = ratio(row["fastfaas"]["ok_rps"], row["uvicorn"]["ok_rps"])
        rounds.append(row)
        log(f"throughput round {i + 1}/{p.rounds}: "
            + ", ".join(f"{n} {row[n]['ok_rps']:.0f} req/s" for n in order)
            + (f", ratio {row['ratio']}" if "ratio" in row else ""))
        order.reverse()  # ABBA: neither server always goes first
    out: dict[str, Any] = {"rounds": rounds}
    for name in servers:
        rps = [r[name]["ok_rps"] for r in rounds]
        out[name] = {
            "median_rps": round(statistics.median(rps), 1),
            "min_rps": min(rps), "max_rps": max(rps),
            "median_latency_p50_ms": round(statistics.median(
                r[name]["latency_us"]["p50"] for r in rounds) / 1000, 4),
            "median_latency_p99_ms": round(statistics.median(
                r[name]["latency_us"]["p99"] for r in rounds) / 1000, 4),
            "errors_total": sum(r[name]["errors_total"] for r in rounds),
        }
        for key in ("server_cpu_us", "below_cpu_us", "preemptions", "loop_running",
                    "loop_wait_us", "machine_busy"):
            values = [r[name][key] for r in rounds if r[name].get(key) is not None]
            out[name][f"median_{key}"] = statistics.median(values) if values else None
    if len(servers) == 2:
        ratios = [r["ratio"] for r in rounds]
        out["ratio_median_of_rounds"] = round(statistics.median(ratios), 3)
        out["ratio_of_medians"] = ratio(out["fastfaas"]["median_rps"],
                                        out["uvicorn"]["median_rps"])
    return out


# --- latency: one raw-socket keep-alive connection ---------------------------------------


def request_bytes(server: Server) -> bytes:
    return (f"POST {server.invoke_path} HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(EVENT_BODY)}\r\n\r\n"
            ).encode() + EVENT_BODY


def round_trip(sock: socket.socket, request: bytes) -> bytes:
    """Send one request, return the whole response (head and Content-Length body)."""
    sock.sendall(request)
    buf = sock.recv(65536)
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed mid-response: {buf[:300]!r}")
        buf += chunk
    head = buf[:end].lower()
    i = head.find(b"\r\ncontent-length:")
    if i < 0:
        raise BenchError(f"response without Content-Length: {buf[:300]!r}")
    j = head.find(b"\r\n", i + 2)
    total = end + 4 + int(head[i + 17: j if j >= 0 else None])
    while len(buf) < total:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"connection closed mid-body: {buf[:300]!r}")
        buf += chunk
    if len(buf) != total:
        raise BenchError(f"{len(buf) - total} bytes after the response: {buf[:300]!r}")
    return buf


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class LatencySeries:
    """Sequential requests on one connection per block; each request timed alone."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.request = request_bytes(server)
        self.samples: list[int] = []
        self.blocks_p50_ms: list[float] = []
        self.starts: collections.Counter[str] = collections.Counter()
        self.server_us: list[int] = []
        self.duration_us: list[int] = []
        self.connection_closed: list[str] = []

    def block(self, n: int, warmup: int) -> None:
        sock = socket.create_connection((HOST, self.server.port), timeout=REQUEST_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = self.request
        times: list[int] = []
        responses: list[bytes] = []
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for _ in range(warmup):
                round_trip(sock, request)
            clock = time.perf_counter_ns
            for _ in range(n):
                t0 = clock()
                raw = round_trip(sock, request)
                t1 = clock()
                times.append(t1 - t0)
                responses.append(raw)
        finally:
            if gc_was_enabled:
                gc.enable()
            sock.close()
        for raw in responses:
            self._check(raw)
        self.samples += times
        self.blocks_p50_ms.append(ms(nearest_rank(sorted(times), 50)))
        self.server.check_alive()

    def _check(self, raw: bytes) -> None:
        status, headers, body = parse_response(raw)
        if status != 200 or json.loads(body) != EXPECTED:
            raise BenchError(f"{self.server.name} answered {status}: {raw[:500]!r}")
        if headers.get("connection", "").lower() == "close":
            self.connection_closed.append(raw[:300].decode("latin-1"))
        if "x-fastfaas-start" in headers:
            self.starts[headers["x-fastfaas-start"]] += 1
        with contextlib.suppress(KeyError, ValueError):
            self.server_us.append(int(headers["x-fastfaas-server-us"]))
        with contextlib.suppress(KeyError, ValueError):
            self.duration_us.append(int(headers["x-fastfaas-duration-us"]))

    def result(self) -> dict[str, Any]:
        out = latency_summary(self.samples) | {"blocks_p50_ms": self.blocks_p50_ms}
        if self.server.name == "fastfaas":
            out["starts"] = dict(self.starts)
            out["all_warm"] = set(self.starts) == {"warm"}
            for key, values in (("server_us", self.server_us),
                                ("duration_us", self.duration_us)):
                if values:
                    s = sorted(values)
                    out[f"x_fastfaas_{key}"] = {"n": len(s), "p50": nearest_rank(s, 50),
                                                "p99": nearest_rank(s, 99), "max": s[-1]}
        if self.connection_closed:
            out["connection_close_responses"] = len(self.connection_closed)
        return out


def bench_latency(servers: dict[str, Server], p: Params) -> dict[str, Any]:
    series = {name: LatencySeries(server) for name, server in servers.items()}
    per_block = max(1, p.requests // p.blocks)
    for name, s in series.items():
        # One warm-up block, not counted: the first requests after the wrk runs
        # (or after a deploy) are not what a warm 1-connection client sees.
        s.block(1, p.warmup_requests)
        s.samples.clear()
        s.blocks_p50_ms.clear()
        s.starts.clear()
        s.server_us.clear()
        s.duration_us.clear()
        log(f"latency warm-up {name}: {p.warmup_requests} requests")
    order = list(series)
    for i in range(p.blocks):
        n = per_block if i < p.blocks - 1 else p.requests - per_block * (p.blocks - 1)
        for name in order:
            series[name].block(n, p.block_warmup)
        log(f"latency block {i + 1}/{p.blocks}: "
            + ", ".join(f"{name} p50 {series[name].blocks_p50_ms[-1]} ms" for name in order))
        order.reverse()
    out: dict[str, Any] = {name: s.result() for name, s in series.items()}
    if len(series) == 2:
        out["ratios_fastfaas/uvicorn"] = {
            key: ratio(out["fastfaas"][key], out["uvicorn"][key])
            for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")
        }
    return out


# --- the report ------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in ("uvicorn", "uvloop", "httptools", "trio", "msgspec"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    versions["wrk"] = (wrk.stdout + wrk.stderr).splitlines()[0] if wrk.stdout + wrk.stderr \
        else None
    return {**_common.machine_info(), "uid": os.getuid(), "versions": versions}


def targets(throughput: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    ff_rps = throughput["fastfaas"]["median_rps"]
    ff_p50 = latency["fastfaas"]["p50_ms"]
    out: dict[str, Any] = {
        f"throughput_ge_{TARGET_RPS:g}_rps": {"value": ff_rps, "pass": ff_rps >= TARGET_RPS},
        f"p50_le_{TARGET_P50_MS:g}_ms": {"value": ff_p50, "pass": ff_p50 <= TARGET_P50_MS},
    }
    if "ratio_median_of_rounds" in throughput:
        r = throughput["ratio_median_of_rounds"]
        out[f"throughput_ge_{TARGET_RATIO:g}x_uvicorn"] = {"value": r, "pass": r >= TARGET_RATIO}
    out["all_warm"] = {"value": latency["fastfaas"]["starts"],
                       "pass": latency["fastfaas"]["all_warm"]}
    out["all_pass"] = all(v["pass"] for v in out.values())
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.3f}"
    return str(value)


def table(report: dict[str, Any]) -> str:
    names = [n for n in TARGETS if n in report["latency"]]
    both = len(names) == 2
    cols = [*names, "fastfaas/uvicorn"] if both else names
    thr, lat = report["throughput"], report["latency"]
    rows: list[tuple[str, list[Any]]] = []
    conn = report["params"]["connections"]
    rows.append((f"throughput, {conn} conn, median req/s",
                 [thr[n]["median_rps"] for n in names]
                 + ([thr["ratio_median_of_rounds"]] if both else [])))
    for i, r in enumerate(thr["rounds"], 1):
        rows.append((f"  round {i}", [r[n]["ok_rps"] for n in names]
                     + ([r["ratio"]] if both else [])))
    rows.append((f"  wrk p50 / p99 ms at {conn} conn",
                 [f"{thr[n]['median_latency_p50_ms']:.3f} / {thr[n]['median_latency_p99_ms']:.3f}"
                  for n in names] + ([""] if both else [])))
    rows.append(("  errors (all rounds)", [thr[n]["errors_total"] for n in names]
                 + ([""] if both else [])))
    for key, label in (("server_cpu_us", "  server CPU us / request"),
                       ("below_cpu_us", "  its child processes' CPU us / request"),
                       ("preemptions", "  loop thread preempted / request"),
                       ("loop_running", "  loop thread running, share of wall time"),
                       ("loop_wait_us", "  loop thread waiting for a CPU, us / request"),
                       ("machine_busy", "  machine busy, share of all CPUs")):
        values = [thr[n].get(f"median_{key}") for n in names]
        rows.append((label, [*values, *([ratio(values[0], values[1])] if both else [])]))
    for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        rows.append((f"latency, 1 conn, {key.replace('_ms', '')} ms",
                     [lat[n][key] for n in names]
                     + ([lat["ratios_fastfaas/uvicorn"][key]] if both else [])))
    rows.append(("  blocks p50 ms", [" ".join(f"{x:.3f}" for x in lat[n]["blocks_p50_ms"])
                                     for n in names] + ([""] if both else [])))
    if "fastfaas" in lat:
        ff = lat["fastfaas"]
        server_us = ff.get("x_fastfaas_server_us", {})
        duration_us = ff.get("x_fastfaas_duration_us", {})
        pad = [""] * (len(cols) - 1)
        rows.append(("  X-Fastfaas-Server-Us p50 / p99",
                     [f"{server_us.get('p50', '-')} / {server_us.get('p99', '-')}", *pad]))
        rows.append(("  X-Fastfaas-Duration-Us p50 / p99",
                     [f"{duration_us.get('p50', '-')} / {duration_us.get('p99', '-')}", *pad]))
        rows.append(("  X-Fastfaas-Start", [json.dumps(ff["starts"]), *pad]))
    width = max(len(label) for label, _ in rows)
    colw = [max(len(c), *(len(_fmt(vals[i])) for _, vals in rows)) + 3
            for i, c in enumerate(cols)]
    lines = ["".ljust(width) + "".join(c.rjust(w) for c, w in zip(cols, colw, strict=True))]
    lines += [label.ljust(width) + "".join(_fmt(v).rjust(w)
                                           for v, w in zip(vals, colw, strict=True))
              for label, vals in rows]
    if "targets" in report:
        lines.append("")
        lines += [f"target {k}: {'pass' if v['pass'] else 'FAIL'} ({v['value']})"
                  for k, v in report["targets"].items() if k != "all_pass"]
    return "\n".join(lines)


def default_out(began: datetime.datetime) -> Path:
    sha = _common.git("rev-parse", "--short", "HEAD") or "nogit"
    return RESULTS / f"http-warm-{began:%Y-%m-%d}-{sha}.json"


def check_prerequisites(names: list[str]) -> None:
    missing = []
    if shutil.which("wrk") is None:
        missing.append("wrk (apt-get install -y wrk)")
    if "uvicorn" in names:
        missing += [f"{m} (.venv/bin/pip install uvicorn uvloop)" for m in ("uvicorn", "uvloop")
                    if importlib.util.find_spec(m) is None]
    if missing:
        raise BenchError("missing prerequisites: " + "; ".join(missing))


def run(params: Params, names: list[str], tmp: Path,
        fastfaas_args: Sequence[str] = ()) -> dict[str, Any]:
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT)
    servers: dict[str, Server] = {}
    out: dict[str, Any] = {}
    try:
        # Started in TARGETS order, so fastfaas is measured first in round 1.
        if "fastfaas" in names:
            servers["fastfaas"] = start_fastfaas(tmp, fastfaas_args)
            log(f"fastfaas listening on port {servers['fastfaas'].port}")
            out["fastfaas_setup"] = deploy_fastfaas(servers["fastfaas"], params.memory_mb)
            log(f"deployed {FUNCTION}; first invoke {out['fastfaas_setup']['first_invoke']}")
        if "uvicorn" in names:
            servers["uvicorn"] = start_uvicorn(tmp)
            check_uvicorn(servers["uvicorn"])
            log(f"uvicorn listening on port {servers['uvicorn'].port}")
        out["throughput"] = bench_throughput(servers, params, script)
        out["latency"] = bench_latency(servers, params)
    finally:
        for server in servers.values():
            server.stop()
        out["servers"] = {name: {"argv": s.argv, "port": s.port, "ready_line": s.ready_line,
                                 "exit": s.exit}
                          for name, s in servers.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run, ~10 s, figures meaningless; writes only with --out")
    parser.add_argument("--rounds", type=int, help="throughput rounds (default 15)")
    parser.add_argument("--duration", type=int, help="seconds per wrk round (default 4)")
    parser.add_argument("--requests", type=int,
                        help="latency samples per server (default 20000)")
    parser.add_argument("--out", type=Path, help="the JSON report's path (default "
                        "bench/results/http-warm-<date>-<git short sha>.json)")
    parser.add_argument("--only", choices=TARGETS, help="measure one server alone")
    parser.add_argument("--server-cpus", metavar="LIST",
                        help="fastfaas serve --server-cpus LIST: the server on these CPUs,"
                             " its functions on the others (uvicorn runs anywhere)")
    parser.add_argument("--function-sched", choices=("batch", "normal"),
                        help="fastfaas serve --function-sched: the function processes'"
                             " scheduling policy (default: the server's default, batch)")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    overrides = {k: v for k, v in (("rounds", args.rounds), ("duration_s", args.duration),
                                   ("requests", args.requests)) if v is not None}
    if any(v < 1 for v in overrides.values()):
        parser.error("--rounds, --duration and --requests must be at least 1")
    params = dataclasses.replace(params, **overrides)
    params = dataclasses.replace(params, blocks=min(params.blocks, params.requests))
    names = [args.only] if args.only else list(TARGETS)
    began = datetime.datetime.now(datetime.UTC)
    try:
        check_prerequisites(names)
        machine = machine_info()
        with tempfile.TemporaryDirectory(prefix="fastfaas-http-bench-") as tmp:
            fastfaas_args: tuple[str, ...] = ()
            if args.server_cpus:
                fastfaas_args += ("--server-cpus", args.server_cpus)
            if args.function_sched:
                fastfaas_args += ("--function-sched", args.function_sched)
            measured = run(params, names, Path(tmp), fastfaas_args)
    except BenchError as exc:
        print(f"http_warm: {exc}", file=sys.stderr)
        return 1
    machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["steal_share_during_run"] = _common.steal_during_run()
    report: dict[str, Any] = {
        "benchmark": "bench/http_warm.py",
        "date_utc": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "elapsed_s": _common.elapsed_s(),
        "machine": machine,
        "params": dataclasses.asdict(params) | {"memory_mb_why": (
            "1769 MB = one full vCPU under fastfaas's CPU-quota rule, so the instance "
            "cgroup's quota does not throttle the benchmark; uvicorn runs unlimited")},
        "config": {
            "handler": "bench/functions/ok/app.py: handler(event, context) -> {'ok': True}",
            "request": "POST, Content-Type: application/json, body {}",
            "fastfaas_server_cpus": args.server_cpus,
            "fastfaas_function_sched": args.function_sched or "batch",
            "fastfaas": f"python -m fastfaas serve; PUT /v1/functions/{FUNCTION} (zip of "
                        "app.py, handler=app.handler); POST .../invoke",
            "uvicorn": "raw ASGI app bench/baselines/asgi_ok.py calling the same handler "
                       "in-process; uvloop, httptools, 1 worker, no access log",
            "throughput": f"wrk -t{params.threads} -c{params.connections} "
                          f"-d{params.duration_s}s per server per round, rounds alternating "
                          "which server goes first; ok_rps = (requests - non-2xx/3xx) / "
                          "duration",
            "latency": "raw-socket HTTP/1.1 keep-alive client, blocking, TCP_NODELAY; "
                       "perf_counter_ns around send + read to Content-Length; a fresh "
                       "connection and block_warmup unmeasured requests per block; blocks "
                       "alternate between servers; gc disabled within a block",
            "percentiles": "nearest rank over the sorted samples",
        },
        **{k: v for k, v in measured.items() if k != "servers"},
        "servers": measured["servers"],
    }
    if "fastfaas" in names:
        report["targets"] = targets(report["throughput"], report["latency"])
    out = args.out if args.out is not None or args.quick else default_out(began)
    print(table(report))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {out}")
    for name, server in measured["servers"].items():
        exit_ = server["exit"]
        # uvicorn re-raises the SIGTERM it handled once it has shut down: -15 is its clean exit
        clean = (0, -signal.SIGTERM) if name == "uvicorn" else (0,)
        if exit_.get("returncode") not in clean or exit_.get("descendants_left_after_exit"):
            print(f"note: {name} stopped with {exit_.get('returncode')}, leaving "
                  f"{exit_.get('descendants_left_after_exit')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
