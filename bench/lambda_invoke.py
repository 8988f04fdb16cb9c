#!/usr/bin/env python3
"""Warm Invoke through boto3 against fastfaas, next to boto3's own client-side cost.

    .venv/bin/python bench/lambda_invoke.py [--quick] [--out PATH]

One `fastfaas serve --port 0` subprocess (the machine's default isolation),
the trivial Lambda handler created with boto3's CreateFunction
(`MemorySize=1769`: a full vCPU under the CPU-quota rule). Measured in the
same run, in alternating blocks so that a noisy spell hits each alike:

- `boto3_invoke`: `client.invoke(FunctionName=..., Payload=b"{}")` and reading
  the payload, timed with perf_counter_ns (warm starts: checked per call in
  X-Fastfaas-Start);
- `boto3_no_network`: the same call on a client whose `before-send` hook
  answers a canned 200 at once: what boto3 costs by itself (parameter
  validation, serialisation, SigV4 signing, parsing), with no server;
- `native_httpx`: `POST /v1/functions/NAME/invoke` with an httpx.Client on a
  kept-alive connection: the same function through the native API;
- then, against a server built in this process (so that the benchmark can
  retire the idle instances, spares included, before each sample, as
  bench/starts.py does), warm and forked starts through boto3, alternating.

Prints one JSON document (percentiles nearest-rank, ms) and the ratios.
"""

from __future__ import annotations

import datetime
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import _common
import boto3
import httpx
import starts
import trio
from _common import log, summary
from botocore.awsrequest import AWSResponse

from fastfaas.http.native import NativeApi
from fastfaas.http.server import HttpServer
from fastfaas.runtime.runtime import Runtime
from fastfaas.runtime.store import Store

HANDLER = "def lambda_handler(event, context):\n    return {'ok': True}\n"
FULL = {"samples": 3000, "blocks": 6, "warmup": 100, "forked": 500}
QUICK = {"samples": 300, "blocks": 3, "warmup": 20, "forked": 30}


class _Raw(io.BytesIO):
    """A urllib3-like raw body for AWSResponse: read() and stream()."""

    def stream(self, *_: Any, **__: Any) -> Any:
        yield self.getvalue()


def create_bench_function(aws: Any) -> None:
    """The trivial handler as function `bench`, through CreateFunction."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("lambda_function.py", HANDLER)
    aws.create_function(FunctionName="bench", Runtime="python3.11", Role="r",
                        Handler="lambda_function.lambda_handler",
                        Code={"ZipFile": buf.getvalue()}, MemorySize=1769)


def start_server(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "fastfaas", "serve", "--port", "0",
                             "--data-dir", str(data_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


class InProcess:
    """A server built in this process (Runtime, NativeApi, HttpServer) on a trio thread,
    so that the benchmark can retire idle instances between samples (forked starts),
    as bench/starts.py does. The client and the server then share one GIL; the client
    waits in recv (without it) while the server works."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ready = threading.Event()
        self.box: dict[str, Any] = {}
        self.thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.thread.start()
        self.ready.wait(60)
        if "port" not in self.box:
            raise SystemExit(f"the in-process server did not start: {self.box.get('error')}")
        self.url = f"http://127.0.0.1:{self.box['port']}"

    async def _main(self) -> None:
        try:
            store = Store(self.data_dir / "fastfaas.db")
            async with Runtime(self.data_dir) as rt:
                api = NativeApi(rt, store, lambda: None)
                http = HttpServer(api, api.body_limit)
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                self.box.update(rt=rt, token=trio.lowlevel.current_trio_token(),
                                stop=trio.Event(), port=listeners[0].socket.getsockname()[1])
                self.ready.set()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(http.serve, listeners)
                    await self.box["stop"].wait()
                    http.close()
            store.close()
        except BaseException as exc:
            self.box["error"] = repr(exc)
            self.ready.set()
            raise

    def to_forked(self, name: str) -> None:
        """Retire every idle instance of `name` (spares too) once the runtime is quiet."""
        rt = self.box["rt"]

        async def prep() -> None:
            await starts.settle(rt)
            rt._drain_idle(rt._functions[name])
            await starts.settle(rt)

        trio.from_thread.run(prep, trio_token=self.box["token"])

    def stop(self) -> None:
        trio.from_thread.run_sync(self.box["stop"].set, trio_token=self.box["token"])
        self.thread.join(60)


def forked_through_boto3(counts: dict[str, int], data_dir: Path,
                         creds: dict[str, str]) -> dict[str, Any]:
    server = InProcess(data_dir)
    try:
        aws = boto3.client("lambda", endpoint_url=server.url, **creds)
        create_bench_function(aws)
        out: dict[str, list[int]] = {"warm": [], "forked": []}
        kinds: dict[str, int] = {}
        for i in range(counts["forked"] + counts["forked"] // 10):  # a tenth to warm up
            for want in ("warm", "forked"):
                if want == "forked":
                    server.to_forked("bench")
                t0 = time.perf_counter_ns()
                r = aws.invoke(FunctionName="bench", Payload=b"{}")
                r["Payload"].read()
                took = time.perf_counter_ns() - t0
                kind = r["ResponseMetadata"]["HTTPHeaders"].get("x-fastfaas-start", "?")
                kinds[kind] = kinds.get(kind, 0) + 1
                if i >= counts["forked"] // 10 and kind == want:
                    out[want].append(took)
        return {k: summary(v) for k, v in out.items()} | {"start_kinds_seen": kinds}
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    args = _common.quick_out_args(__doc__, argv)
    counts = QUICK if args.quick else FULL
    began = datetime.datetime.now(datetime.UTC)
    creds = {"region_name": "us-east-1", "aws_access_key_id": "local",
             "aws_secret_access_key": "local"}
    with tempfile.TemporaryDirectory(prefix="fastfaas-bench-") as tmp:
        proc, url = start_server(Path(tmp) / "data")
        try:
            aws = boto3.client("lambda", endpoint_url=url, **creds)
            create_bench_function(aws)
            stub = boto3.client("lambda", endpoint_url=url, **creds)
            canned = b'{"ok":true}'

            def answer(request: Any, **_: Any) -> AWSResponse:
                return AWSResponse(request.url, 200, {"Content-Type": "application/json",
                                                      "X-Amz-Executed-Version": "$LATEST"},
                                   _Raw(canned))  # a new body per call

            stub.meta.events.register("before-send.lambda.Invoke", answer)
            http = httpx.Client(base_url=url)
            starts: dict[str, int] = {}

            def boto3_invoke() -> None:
                r = aws.invoke(FunctionName="bench", Payload=b"{}")
                assert r["Payload"].read() == canned, r
                kind = r["ResponseMetadata"]["HTTPHeaders"].get("x-fastfaas-start", "?")
                starts[kind] = starts.get(kind, 0) + 1

            def boto3_no_network() -> None:
                r = stub.invoke(FunctionName="bench", Payload=b"{}")
                assert r["Payload"].read() == canned, r

            def native_httpx() -> None:
                r = http.post("/v1/functions/bench/invoke", content=b"{}")
                assert r.content == canned, r.text

            series = {"boto3_invoke": boto3_invoke, "boto3_no_network": boto3_no_network,
                      "native_httpx": native_httpx}
            samples: dict[str, list[int]] = {k: [] for k in series}
            for fn in series.values():
                for _ in range(counts["warmup"]):
                    fn()
            starts.clear()
            per_block = counts["samples"] // counts["blocks"]
            for block in range(counts["blocks"]):
                order = list(series) if block % 2 == 0 else list(reversed(series))
                for name in order:
                    fn, out = series[name], samples[name]
                    for _ in range(per_block):
                        t0 = time.perf_counter_ns()
                        fn()
                        out.append(time.perf_counter_ns() - t0)
                log(f"block {block + 1}/{counts['blocks']} done")
            http.close()
        finally:
            proc.terminate()
            proc.wait(60)
    with tempfile.TemporaryDirectory(prefix="fastfaas-bench-") as tmp:
        in_process = forked_through_boto3(counts, Path(tmp) / "data", creds)
    log(f"in process: warm {in_process['warm']['p50_ms']} ms,"
        f" forked {in_process['forked']['p50_ms']} ms at p50")
    figures = {name: summary(v) for name, v in samples.items()}
    p50 = {name: f["p50_ms"] for name, f in figures.items()}
    report = {
        "benchmark": "bench/lambda_invoke.py",
        "date_utc": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _common.machine_info(),
        "config": {"samples": counts, "memory_mb": 1769, "handler": HANDLER.strip(),
                   "isolation": os.environ.get("FASTFAAS_ISOLATION") or "the default"},
        "latency": figures,
        "start_kinds_seen": starts,
        "boto3_invoke_minus_no_network_p50_ms": round(p50["boto3_invoke"]
                                                      - p50["boto3_no_network"], 4),
        "boto3_invoke_over_no_network_p50": round(p50["boto3_invoke"]
                                                  / p50["boto3_no_network"], 3),
        "boto3_invoke_over_native_httpx_p50": round(p50["boto3_invoke"] / p50["native_httpx"], 3),
        "in_process_server": in_process | {
            "about": "the server built in this process (so that idle instances can be"
                     " retired before each forked sample); warm and forked samples"
                     " alternate; client and server share one GIL"},
        "elapsed_s": _common.elapsed_s(),
    }
    return _common.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
