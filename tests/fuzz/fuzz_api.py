"""libFuzzer (atheris) harness for the whole front end: server.py and protocol.py in
front of the native API (native.py), over a real Runtime, in this process.

    python -m tests.fuzz.fuzz_api [libFuzzer flags] [CORPUS_DIR ...]

`fastfaas serve`'s own composition (`fastfaas.http.app.serve`: Runtime, Store,
poller, NativeApi, HttpServer) runs in a trio thread on 127.0.0.1 with cgroups
off (so isolation "none"), pip kept off the network and a memory budget, and
`echo` deployed. Each
input goes as raw bytes on a new loopback connection, then EOF: the answers
must be those the sans-IO connection predicts, each one the API means to give
(`http_checks`), and /healthz must answer after it. FASTFAAS_FUZZ_DATA_DIR
names the data directory (else a new temporary one). `--write-seeds DIR`
writes a small seed corpus.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import queue
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import atheris
import trio

with atheris.instrument_imports(include=["fastfaas.http", "fastfaas.config",
                                         "fastfaas.runtime.code"]):
    from fastfaas.http.app import ServeOptions, serve

from tests.fuzz.http_checks import api_body_limit, check_api_exchange, check_healthz, send_raw

MAX_BODY_MB = 1
BODY_LIMIT = api_body_limit(MAX_BODY_MB << 20)
START_TIMEOUT_S = 60.0


def code_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return event\n")
    return buf.getvalue()


def _request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz",
             *(f"{n.replace('_', '-')}: {v}" for n, v in headers.items())]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + body


SEEDS = [
    _request("GET", "/healthz"),
    _request("GET", "/metrics"),
    _request("GET", "/v1/functions"),
    _request("GET", "/v1/functions/echo"),
    _request("POST", "/v1/functions/echo/invoke", b'{"a": [1, 2.5, null]}'),
    _request("POST", "/v1/functions/echo/invoke", b'{"k": 1}', X_Fastfaas_Invocation_Type="Event"),
    _request("POST", "/v1/functions/echo/invoke", b"{}", X_Fastfaas_Invocation_Type="DryRun"),
    _request("POST", "/v1/functions/echo/invoke", b"{}", X_Fastfaas_Route_Key="user-1",
             X_Fastfaas_Route_Busy="fallback"),
    _request("POST", "/v1/functions/echo/warm"),
    _request("GET", "/v1/functions/echo/logs?limit=2"),
    _request("GET", "/v1/invocations/0123456789abcdef"),
    _request("PUT", "/v1/functions/other?handler=app.handler&timeout_s=2", code_zip(),
             Content_Type="application/zip"),
    _request("PUT", "/v1/functions/other", json.dumps({
        "handler": "app.handler", "memory_mb": 256, "env": {"A": "b"},
        "code_zip_b64": base64.b64encode(code_zip()).decode()}).encode(),
             Content_Type="application/json"),
    _request("PATCH", "/v1/functions/other?description=x&prewarm=1"),
    _request("PATCH", "/v1/functions/other", b'{"timeout_s": 5, "isolation": "standard"}',
             Content_Type="application/json"),
    _request("DELETE", "/v1/functions/other"),
    _request("GET", "/v1/functions/e%63ho") + _request("HEAD", "/healthz"),
]


class Front:
    """`fastfaas serve` in a trio thread; `port` once it listens."""

    def __init__(self, data_dir: Path) -> None:
        self.failure: BaseException | None = None
        self._ports: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._run, args=(data_dir,), daemon=True,
                         name="fastfaas-serve").start()
        port = self._ports.get(timeout=START_TIMEOUT_S)
        if port is None:
            raise RuntimeError("the server did not start") from self.failure
        self.port = port

    def _run(self, data_dir: Path) -> None:
        # No cgroups: libFuzzer ends the process with exit(), no cleanup would remove them.
        # Without them the only isolation level is "none".
        opts = ServeOptions(port=0, data_dir=data_dir, cgroups="off", isolation="none",
                            warm_pool_size=1, max_body_mb=MAX_BODY_MB, memory_budget_mb=512,
                            pip_args=("--no-index",))
        try:
            trio.run(self._serve, opts)
        except BaseException as exc:
            self.failure = exc
        finally:
            self._ports.put(None)

    async def _serve(self, opts: ServeOptions) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(functools.partial(serve, opts, stop=trio.Event()))
            self._ports.put(port)


FRONT: Front | None = None


def test_one_input(data: bytes) -> None:
    assert FRONT is not None
    if FRONT.failure is not None:
        raise AssertionError("the server stopped") from FRONT.failure
    check_api_exchange(FRONT.port, data, BODY_LIMIT)
    check_healthz(FRONT.port)


def write_seeds(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS):
        (directory / f"seed-{i}").write_bytes(seed)


def main() -> None:
    global FRONT
    if sys.argv[1:2] == ["--write-seeds"]:
        write_seeds(Path(sys.argv[2]))
        return
    data_dir = Path(os.environ.get("FASTFAAS_FUZZ_DATA_DIR") or tempfile.mkdtemp())
    FRONT = Front(data_dir / "data")
    code = code_zip()
    deployed = send_raw(FRONT.port, _request(
        "PUT", "/v1/functions/echo?handler=app.handler", code, Content_Type="application/zip"))
    assert deployed.startswith((b"HTTP/1.1 200 ", b"HTTP/1.1 201 ")), deployed
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
