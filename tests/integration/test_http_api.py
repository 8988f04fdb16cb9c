"""`fastfaas serve` end to end: real HTTP on loopback against a real server process.

The client is httpx, or a raw socket where the point is bytes httpx would never
send (malformed requests, headers without their body, a client that hangs up).
Most tests share one module-scoped server (each uses its own function names);
tests that need other flags, or that may bring a server down, start their own.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import select
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
import pytest

from fastfaas.runtime.code import MAX_UNZIPPED_BYTES, zip_directory
from tests.conftest import CGROUPS_MODE, ServerProcess, invoke, module_server, zip_of

HTTP_TIMEOUT = 30.0
WAIT_S = 15.0  # the bound of every poll below: far above what a healthy server needs
ZIP = {"content-type": "application/zip"}
EVENT = {"x-fastfaas-invocation-type": "Event"}
CLIENT_ENV = {k: v for k, v in os.environ.items() if not k.startswith("FASTFAAS_")}

ECHO = """
import os

def handler(event, context):
    return {"event": event, "greeting": os.environ.get("GREETING")}
"""
RAISES = """
def handler(event, context):
    raise ValueError("bad thing: " + str(event.get("why")))
"""
LOOPS = """
def handler(event, context):
    while True:
        pass
"""
IMPORT_FAILS = """
def handler(event, context):
    return "unreachable"

raise RuntimeError("boom at import")
"""
MARKS = """
import os

def handler(event, context):
    with open(os.environ["MARK"], "a") as f:
        f.write("handler ran\\n")
    return "marked"
"""
CHATTY = """
def handler(event, context):
    print("chatty says", event["i"])
    return event["i"]
"""
MAYBE_RAISES = """
def handler(event, context):
    if event.get("fail"):
        raise KeyError("asked to fail")
    return "fine"
"""
SLOW_WRITER = """
import time

def handler(event, context):
    end = time.monotonic() + event["busy_s"]
    while time.monotonic() < end:
        pass
    with open(event["path"], "a") as f:
        f.write(event["line"] + "\\n")
    return event["line"]
"""


# --- helpers -----------------------------------------------------------------------


def deploy(client: httpx.Client, name: str, code: Path | bytes, handler: str = "app.handler",
           **fields: Any) -> httpx.Response:
    """PUT an `application/zip` body; the configuration goes in the query string."""
    data = zip_directory(code) if isinstance(code, Path) else code
    params = {"handler": handler}
    for key, value in fields.items():
        params[key] = json.dumps(value) if isinstance(value, dict) else str(value)
    return client.put(f"/v1/functions/{name}", params=params, content=data, headers=ZIP)


def deployed(client: httpx.Client, name: str, code: Path | bytes, **fields: Any) -> dict[str, Any]:
    r = deploy(client, name, code, **fields)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def assert_error(r: httpx.Response, status: int, *words: str) -> dict[str, str]:
    """A platform error: `status` and a JSON `{error, message}` body whose message has `words`."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/json"
    body: dict[str, str] = r.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] and body["message"]
    for word in words:
        assert word in body["message"], (word, body)
    return body


def assert_serves(client: httpx.Client) -> None:
    """The server still answers a normal invocation (of the module's `echo`)."""
    r = invoke(client, "echo", {"still": "serving"})
    assert r.status_code == 200, r.text
    assert "x-fastfaas-function-error" not in r.headers
    assert r.json()["event"] == {"still": "serving"}


def wait_for_warming_pool(client: httpx.Client) -> None:
    """Until a generic zygote is ready, so that the next first start is `claimed`."""
    deadline = time.monotonic() + WAIT_S
    while client.get("/healthz").json()["warming_pool"] < 1:
        assert time.monotonic() < deadline, "the warming pool did not refill"
        time.sleep(0.01)


def wait_invocation(client: httpx.Client, request_id: str) -> dict[str, Any]:
    """Poll an asynchronous invocation until it is done (no event crosses HTTP to wait on)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        r = client.get(f"/v1/invocations/{request_id}")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in ("succeeded", "failed"):
            return body
        assert body["status"] in ("queued", "running"), body
        assert time.monotonic() < deadline, f"invocation still {body['status']}: {body}"
        time.sleep(0.01)


class RawResponse(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def read_response(sock: socket.socket) -> RawResponse:
    """One response with a Content-Length, read from a blocking socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection without a response: {buf!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection in the middle of a response"
        body += chunk
    return RawResponse(int(status_line.split()[1]), headers, body[:length])


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection (EOF or reset), within a few seconds."""
    sock.settimeout(5)
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b"", "the server sent more after its final response"


def raw_exchange(port: int, data: bytes) -> RawResponse:
    """Send bytes, read the response, and check the server then closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(data)
        response = read_response(sock)
        assert_closed(sock)
    return response


def assert_raw_error(response: RawResponse, status: int, *words: str) -> None:
    assert response.status == status, response
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("connection") == "close"
    body = json.loads(response.body)
    assert set(body) == {"error", "message"}, body
    for word in words:
        assert word in body["message"], (word, body)


def zeros_zip(name: str, size: int) -> bytes:
    """A valid zip of one deflated entry of `size` zero bytes (~1 KB per MiB), built
    without compressing `size` bytes: after a full flush a deflate piece references
    nothing before it, so the piece for one MiB can be repeated."""
    chunk = bytes(1 << 20)
    count, rest = divmod(size, len(chunk))
    assert not rest
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = (comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)) * count + comp.flush()
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    fname = name.encode()
    dos_date = (1 << 5) | 1  # 1980-01-01: years count from 1980
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, dos_date, crc, len(data),
                        size, len(fname), 0) + fname
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, dos_date, crc,
                          len(data), size, len(fname), 0, 0, 0, 0, (stat.S_IFREG | 0o644) << 16,
                          0) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(data), 0)
    return local + data + central + end


def tree(root: Path) -> set[str]:
    """Every path under root, relative, links included (and not followed)."""
    return {os.path.relpath(os.path.join(d, n), root)
            for d, dirs, files in os.walk(root) for n in [*dirs, *files]}


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastfaas", *args], capture_output=True,
                          text=True, env=CLIENT_ENV, timeout=timeout, check=False)


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One `fastfaas serve` with default flags for the module; stopped (every child gone)."""
    yield from module_server(tmp_path_factory, "http-api")


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    """A client of the module's server, where `echo` (what `assert_serves` calls) is deployed."""
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT) as c:
        deployed(c, "echo", zip_of(app=ECHO), env={"GREETING": "hello"})
        yield c


# --- deploy, list, get, patch, delete ----------------------------------------------


def test_deploy_zip_body_with_query_string_then_replace(
    client: httpx.Client, server: ServerProcess, make_function: Callable[..., Path]
) -> None:
    data = zip_directory(make_function(app=ECHO))
    r = deploy(client, "zipped", data, memory_mb=256, timeout_s=5, description="from a zip",
               env={"GREETING": "hi there", "OTHER": "x"})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["name"] == "zipped"
    assert info["version"] == "$LATEST"
    assert info["code_sha256"] == hashlib.sha256(data).hexdigest()
    cfg = info["config"]
    assert (cfg["handler"], cfg["memory_mb"], cfg["timeout_s"], cfg["description"]) == (
        "app.handler", 256, 5, "from a zip")
    assert cfg["env"] == {"GREETING": "hi there", "OTHER": "x"}
    # Unpacked, content-addressed, readable by the sandbox.
    unpacked = server.data_dir / "code" / info["code_sha256"] / "app.py"
    assert unpacked.read_text() == textwrap.dedent(ECHO)
    assert stat.S_IMODE(unpacked.stat().st_mode) == 0o644

    r = deploy(client, "zipped", data, memory_mb=256, env={"GREETING": "again"})
    assert r.status_code == 200, r.text
    assert r.json()["config"]["env"] == {"GREETING": "again"}
    r = invoke(client, "zipped", {"k": [1, 2]})
    assert r.status_code == 200, r.text
    assert r.json() == {"event": {"k": [1, 2]}, "greeting": "again"}


def test_deploy_json_body_with_code_zip_b64(client: httpx.Client) -> None:
    data = zip_of(app=ECHO)
    r = client.put("/v1/functions/from-json", json={
        "code_zip_b64": base64.b64encode(data).decode(), "handler": "app.handler",
        "memory_mb": 192, "env": {"GREETING": "json"}})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["code_sha256"] == hashlib.sha256(data).hexdigest()
    assert info["config"]["memory_mb"] == 192
    r = invoke(client, "from-json", {"via": "json"})
    assert r.status_code == 200, r.text
    assert r.json() == {"event": {"via": "json"}, "greeting": "json"}


def test_list_and_get_show_configuration_code_and_state(client: httpx.Client) -> None:
    data = zip_of(app=ECHO)
    deployed(client, "listed", data, timeout_s=9, description="listed one")
    assert invoke(client, "listed").status_code == 200

    r = client.get("/v1/functions")
    assert r.status_code == 200
    functions = {f["name"]: f for f in r.json()["functions"]}
    assert {"echo", "listed"} <= set(functions)
    assert functions["listed"]["config"]["timeout_s"] == 9

    r = client.get("/v1/functions/listed")
    assert r.status_code == 200
    info = r.json()
    assert info["name"] == "listed"
    assert info["code_sha256"] == hashlib.sha256(data).hexdigest()
    assert info["config"]["description"] == "listed one"
    assert info["config"]["handler"] == "app.handler"
    state = info["state"]
    assert state["zygote"]["alive"] is True  # the invocation gave it a function zygote
    assert set(state["instances"]) >= {"busy", "warm", "spare"}
    assert state["instances"]["busy"] == 0
    assert state["instances"]["warm"] >= 1


def test_patch_changes_configuration_and_get_shows_it(client: httpx.Client) -> None:
    deployed(client, "patched", zip_of(app=ECHO), env={"GREETING": "before"})
    assert invoke(client, "patched").status_code == 200

    r = client.patch("/v1/functions/patched", json={"timeout_s": 7, "description": "new"})
    assert r.status_code == 200, r.text
    assert (r.json()["config"]["timeout_s"], r.json()["config"]["description"]) == (7, "new")
    assert invoke(client, "patched").status_code == 200
    # Configuration in the query string works too.
    r = client.patch("/v1/functions/patched", params={"description": "from the query"})
    assert r.status_code == 200, r.text
    cfg = client.get("/v1/functions/patched").json()["config"]
    assert (cfg["timeout_s"], cfg["description"]) == (7, "from the query")
    assert cfg["env"] == {"GREETING": "before"}  # untouched
    r = invoke(client, "patched")
    assert r.status_code == 200
    assert r.headers["x-fastfaas-start"] == "warm"  # a description does not change the zygote

    # An env change sends new calls to a new zygote, which sees the new env.
    r = client.patch("/v1/functions/patched", json={"env": {"GREETING": "after"}})
    assert r.status_code == 200, r.text
    r = invoke(client, "patched")
    assert r.status_code == 200, r.text
    assert r.json()["greeting"] == "after"
    assert r.headers["x-fastfaas-start"] in ("claimed", "cold")


def test_delete_then_invoke_is_404(client: httpx.Client) -> None:
    deployed(client, "doomed", zip_of(app=ECHO))
    assert invoke(client, "doomed").status_code == 200
    r = client.delete("/v1/functions/doomed")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "doomed", "deleted": True}
    assert_error(invoke(client, "doomed"), 404, "doomed")
    assert_error(client.get("/v1/functions/doomed"), 404)
    assert_error(client.delete("/v1/functions/doomed"), 404)
    assert "doomed" not in {f["name"] for f in client.get("/v1/functions").json()["functions"]}


# --- invoke ------------------------------------------------------------------------


def test_invoke_result_and_headers_first_claimed_then_warm(server: ServerProcess) -> None:
    # One connection, so that "the same connection" is what is measured.
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT,
                      limits=httpx.Limits(max_connections=1)) as one:
        deployed(one, "kinds", zip_of(app=ECHO), env={"GREETING": "from env"})
        wait_for_warming_pool(one)
        seen = []
        for i in range(2):
            r = invoke(one, "kinds", {"i": i})
            assert r.status_code == 200, r.text
            assert r.json() == {"event": {"i": i}, "greeting": "from env"}
            assert r.headers["content-type"] == "application/json"
            assert "x-fastfaas-function-error" not in r.headers
            handler_us = int(r.headers["x-fastfaas-duration-us"])
            server_us = int(r.headers["x-fastfaas-server-us"])
            assert 0 <= handler_us <= server_us
            seen.append((r.headers["x-fastfaas-start"], r.headers["x-fastfaas-request-id"],
                         r.headers["x-fastfaas-instance"]))
    (start1, rid1, inst1), (start2, rid2, inst2) = seen
    assert (start1, start2) == ("claimed", "warm")
    assert rid1 and rid2 and rid1 != rid2
    assert inst1 and inst1 == inst2  # the warm start reused the instance that served


def test_handler_exception_is_200_with_unhandled_and_lambda_body(client: httpx.Client) -> None:
    deployed(client, "raises", zip_of(app=RAISES))
    r = invoke(client, "raises", {"why": "testing"})
    assert r.status_code == 200, r.text
    assert r.headers["x-fastfaas-function-error"] == "Unhandled"
    assert r.headers["x-fastfaas-request-id"]
    body = r.json()
    assert set(body) == {"errorType", "errorMessage", "stackTrace"}
    assert body["errorType"] == "ValueError"
    assert body["errorMessage"] == "bad thing: testing"
    assert body["stackTrace"] and all(isinstance(s, str) for s in body["stackTrace"])
    assert any("app.py" in s for s in body["stackTrace"])
    assert_serves(client)


def test_timeout_is_function_error_timeout(client: httpx.Client) -> None:
    deployed(client, "loops", zip_of(app=LOOPS), timeout_s=1)
    t0 = time.monotonic()
    r = invoke(client, "loops")
    elapsed = time.monotonic() - t0
    assert r.status_code == 200, r.text
    assert r.headers["x-fastfaas-function-error"] == "Timeout"
    assert set(r.json()) == {"errorType", "errorMessage", "stackTrace"}
    assert 1.0 <= elapsed < 10, elapsed
    assert_serves(client)


def test_import_error_is_init_error_and_warm_reports_it(client: httpx.Client) -> None:
    deployed(client, "no-import", zip_of(app=IMPORT_FAILS))
    r = client.post("/v1/functions/no-import/warm")
    assert r.status_code == 200, r.text
    assert r.headers["x-fastfaas-function-error"] == "InitError"
    body = r.json()
    assert body["ready"] is False
    assert body["error"]["kind"] == "InitError"
    assert "boom at import" in body["error"]["errorMessage"]

    r = invoke(client, "no-import")
    assert r.status_code == 200, r.text
    assert r.headers["x-fastfaas-function-error"] == "InitError"
    error = r.json()
    assert set(error) == {"errorType", "errorMessage", "stackTrace"}
    assert "boom at import" in error["errorMessage"]


def test_warm_imports_the_code_without_running_the_handler(client: httpx.Client,
                                                           tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    deployed(client, "marks", zip_of(app=MARKS), env={"MARK": str(mark)})
    r = client.post("/v1/functions/marks/warm")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "marks", "ready": True}
    assert "x-fastfaas-function-error" not in r.headers
    assert client.get("/v1/functions/marks").json()["state"]["zygote"]["alive"] is True
    assert not mark.exists(), "warming ran the handler"
    r = invoke(client, "marks")
    assert r.status_code == 200, r.text
    assert r.headers["x-fastfaas-start"] in ("prewarmed", "forked")  # the zygote was ready
    assert mark.read_text() == "handler ran\n"


# --- bad input -----------------------------------------------------------------------

MALFORMED = {
    "garbage": b"GARBAGE\r\n\r\n",
    "bad-content-length": b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\n"
                          b"Content-Length: abc\r\n\r\n{}",
    "duplicate-content-length": b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\n"
                                b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "content-length-and-chunked": b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    "bad-byte-in-path": b"GET /v1/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_http_is_400_and_the_connection_closes(
    client: httpx.Client, server: ServerProcess, request_bytes: bytes
) -> None:
    assert_raw_error(raw_exchange(server.port, request_bytes), 400)
    assert_serves(client)


@pytest.mark.parametrize(("target", "length", "limit"), [
    ("POST /v1/functions/echo/invoke", 7_000_000, "6291456"),  # the default 6 MB
    ("PUT /v1/functions/echo?handler=app.handler", 100_000_000, ""),  # a deploy's own limit
])
def test_body_over_the_default_limit_is_413_before_the_body(
    client: httpx.Client, server: ServerProcess, target: str, length: int, limit: str
) -> None:
    head = f"{target} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    response = raw_exchange(server.port, head)  # the body is never sent
    assert_raw_error(response, 413, str(length), limit)
    assert_serves(client)


def test_body_over_a_configured_limit_is_413_without_reading_it(
    start_server: Callable[..., ServerProcess]
) -> None:
    small = start_server("--max-body-mb", "1")
    with httpx.Client(base_url=small.url, timeout=HTTP_TIMEOUT) as c:
        deployed(c, "echo", zip_of(app=ECHO))
        head = (b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
        t0 = time.monotonic()
        response = raw_exchange(small.port, head)  # only the headers: 2 MB never sent
        assert time.monotonic() - t0 < 5
        assert_raw_error(response, 413, "2097152", str(1 << 20))
        # Just under the limit is fine, on a new connection.
        r = invoke(c, "echo", {"pad": "x" * 900_000})
        assert r.status_code == 200, r.text
        assert len(r.json()["event"]["pad"]) == 900_000


def test_headers_trickled_past_the_header_timeout_close_the_connection(
    start_server: Callable[..., ServerProcess]
) -> None:
    header_timeout = 0.5  # the default is 10 s
    slow = start_server("--header-timeout-s", str(header_timeout))
    with socket.create_connection(("127.0.0.1", slow.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        received = b""
        closed_after = None
        sent = 0
        while time.monotonic() - t0 < 5:  # a header line every 0.1 s, never the blank line
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    closed_after = time.monotonic() - t0
                    break
                received += data
                continue
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"X-Slow-%d: 1\r\n" % sent)
                sent += 1
    assert closed_after is not None, "the server kept a trickling connection open"
    assert header_timeout * 0.8 <= closed_after < header_timeout + 2, closed_after
    assert sent >= 3
    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    # It still serves everyone else.
    with httpx.Client(base_url=slow.url, timeout=HTTP_TIMEOUT) as c:
        deployed(c, "echo", zip_of(app=ECHO))
        assert_serves(c)


@pytest.mark.parametrize("path", [
    "/", "/v1", "/v1/nothing", "/v2/functions", "/v1/functions/echo/nope",
    "/v1/functions/a/b", "/v1/functions/echo/invoke/more", "/healthz/extra",
])
def test_unknown_route_is_404(client: httpx.Client, path: str) -> None:
    assert_error(client.get(path), 404)
    assert_error(client.post(path, json={}), 404)
    assert_serves(client)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("GET", "/v1/functions/echo/invoke", {"POST"}),
    ("PUT", "/v1/functions/echo/invoke", {"POST"}),
    ("POST", "/v1/functions", {"GET"}),
    ("POST", "/v1/functions/echo", {"GET", "PUT", "PATCH", "DELETE"}),
    ("GET", "/v1/functions/echo/warm", {"POST"}),
    ("DELETE", "/v1/functions/echo/logs", {"GET"}),
    ("POST", "/v1/invocations/some-id", {"GET"}),
    ("POST", "/healthz", {"GET"}),
    ("DELETE", "/metrics", {"GET"}),
])
def test_wrong_method_is_405_with_allow(client: httpx.Client, method: str, path: str,
                                        allowed: set[str]) -> None:
    r = client.request(method, path)
    assert_error(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} == allowed
    assert_serves(client)


def test_head_is_answered_without_a_body_and_the_connection_stays_usable(
    server: ServerProcess
) -> None:
    with httpx.Client(base_url=server.url, timeout=HTTP_TIMEOUT,
                      limits=httpx.Limits(max_connections=1)) as one:
        r = one.head("/healthz")
        assert r.status_code in (200, 405)
        r = one.get("/healthz")  # the same connection
        assert r.status_code == 200
        assert r.json()["status"] == "ok"


@pytest.mark.parametrize("kind", ["event", "Bogus", "requestresponse"])
def test_unknown_invocation_type_is_400(client: httpx.Client, tmp_path: Path,
                                        kind: str) -> None:
    mark = tmp_path / "mark"
    deployed(client, "typed", zip_of(app=MARKS), env={"MARK": str(mark)})
    r = invoke(client, "typed", headers={"x-fastfaas-invocation-type": kind})
    assert_error(r, 400, "X-Fastfaas-Invocation-Type")
    assert not mark.exists(), "the function ran"


def test_dry_run_checks_the_request_and_runs_nothing(client: httpx.Client,
                                                     tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    deployed(client, "dry", zip_of(app=MARKS), env={"MARK": str(mark)})
    r = invoke(client, "dry", headers={"x-fastfaas-invocation-type": "DryRun"})
    assert r.status_code == 204 and r.content == b""
    assert "content-length" not in r.headers
    r = client.post("/v1/functions/dry/invoke", content=b"{not json",
                    headers={"x-fastfaas-invocation-type": "DryRun"})
    assert_error(r, 400, "not valid JSON")
    r = client.post("/v1/functions/nope/invoke", json={},
                    headers={"x-fastfaas-invocation-type": "DryRun"})
    assert_error(r, 404)
    assert not mark.exists(), "the function ran"


BAD_NAMES = {"space-and-bang": "bad name!", "65-chars": "a" * 65}
NAME_ROUTES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "put": ("PUT", "", {"params": {"handler": "app.handler"}, "headers": ZIP}),
    "patch": ("PATCH", "", {"json": {"description": "x"}}),
    "get": ("GET", "", {}),
    "delete": ("DELETE", "", {}),
    "logs": ("GET", "/logs", {}),
    "warm": ("POST", "/warm", {}),
    "invoke-async": ("POST", "/invoke", {"json": {}, "headers": EVENT}),
    "invoke": ("POST", "/invoke", {"json": {}}),
}


@pytest.mark.parametrize("route", NAME_ROUTES)
@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
def test_bad_function_name_is_400(client: httpx.Client, name: str, route: str) -> None:
    method, suffix, kwargs = NAME_ROUTES[route]
    if method == "PUT":
        kwargs = {**kwargs, "content": zip_of(app=ECHO)}
    r = client.request(method, f"/v1/functions/{quote(name, safe='')}{suffix}", **kwargs)
    assert_error(r, 400, "function name", "1-64")
    assert_serves(client)


def test_name_with_a_trailing_newline_is_400(client: httpx.Client) -> None:
    try:
        r = deploy(client, "abc%0A", zip_of(app=ECHO))
        assert_error(r, 400, "function name")
    finally:
        client.delete("/v1/functions/abc%0A")  # the bug stores it: leave the module clean


def _link_entry(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "dotdot-in-the-middle"])
def test_zip_escaping_its_directory_is_400_and_writes_nothing(
    client: httpx.Client, server: ServerProcess, kind: str
) -> None:
    root = server.data_dir.parent  # the module's temporary directory
    outside = root / f"escaped-{kind}"
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = [
        ("app.py", textwrap.dedent(ECHO).encode())]
    if kind == "dotdot":  # from code/.unpack-*/ this is the data dir's parent
        entries.append((f"../../../escaped-{kind}", b"escaped"))
    elif kind == "dotdot-in-the-middle":
        entries.append((f"pkg/../../../../escaped-{kind}", b"escaped"))
    elif kind == "absolute":
        entries.append((str(outside), b"escaped"))
    else:
        entries.append((_link_entry("link"), str(outside).encode()))
        entries.append(("link/through", b"escaped"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    before = tree(root)

    r = deploy(client, f"escape-{kind}", buf.getvalue())
    message = assert_error(r, 400)["message"]
    assert ("outside the bundle" if kind != "symlink" else "symbolic link") in message
    assert not outside.exists()
    after = tree(root)
    new = {p for p in after - before if not p.endswith((".stderr", "-wal", "-shm"))}
    assert not new, f"a refused bundle left files behind: {new}"
    assert not any(os.path.islink(root / p) for p in after)
    assert_error(client.get(f"/v1/functions/escape-{kind}"), 404)  # nothing deployed
    assert_serves(client)


def test_zip_over_the_unzipped_limit_is_413(client: httpx.Client,
                                            server: ServerProcess) -> None:
    size = MAX_UNZIPPED_BYTES + (10 << 20)  # 260 MiB of zeros in ~270 KB
    bomb = zeros_zip("zeros.bin", size)
    assert len(bomb) < 1 << 20
    code_dir = server.data_dir / "code"
    before = tree(code_dir)
    r = deploy(client, "bomb", bomb)
    assert_error(r, 413, str(size), str(MAX_UNZIPPED_BYTES))
    assert tree(code_dir) == before
    assert_serves(client)


@pytest.mark.parametrize(("label", "kwargs", "words"), [
    ("not-a-zip", {"content": b"this is not a zip", "headers": ZIP}, ["not a valid zip"]),
    ("empty-zip-body", {"content": b"", "headers": ZIP}, ["empty"]),
    ("bad-base64", {"json": {"handler": "app.handler", "code_zip_b64": "%%%"}}, ["base64"]),
    ("base64-of-not-a-zip", {"json": {"handler": "app.handler", "code_zip_b64":
                                      base64.b64encode(b"plain text").decode()}},
     ["not a valid zip"]),
    ("no-code-in-json", {"json": {"handler": "app.handler"}}, ["code_zip_b64"]),
    ("json-not-an-object", {"json": [1, 2]}, ["JSON object"]),
    ("wrong-content-type", {"content": b"x", "headers": {"content-type": "text/plain"}},
     ["application/zip"]),
])
def test_bad_bundle_is_400(client: httpx.Client, label: str, kwargs: dict[str, Any],
                           words: list[str]) -> None:
    params = {"handler": "app.handler"} if "content" in kwargs else None
    r = client.put(f"/v1/functions/bundle-{label}", params=params, **kwargs)
    assert_error(r, 400, *words)
    assert_error(client.get(f"/v1/functions/bundle-{label}"), 404)
    assert_serves(client)


def _stored_zip(**files: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _crc_mismatch() -> bytes:
    app = textwrap.dedent(ECHO).encode()
    data = bytearray(_stored_zip(**{"app.py": app}))
    at = data.find(b"def handler")
    data[at] ^= 0x20  # "Def handler": the stored CRC-32 no longer matches
    return bytes(data)


@pytest.mark.parametrize("bundle", [
    pytest.param(_crc_mismatch, id="crc-mismatch"),
    pytest.param(lambda: _stored_zip(**{"app.py": b"x = 1\n", "a": b"file",
                                        "a/b": b"file under a file"}),
                 id="file-and-directory-of-one-name"),
])
def test_broken_zip_is_400_and_the_server_survives(
    start_server: Callable[..., ServerProcess], bundle: Callable[[], bytes]
) -> None:
    own = start_server()  # not the module's: with the bug this one dies
    with httpx.Client(base_url=own.url, timeout=HTTP_TIMEOUT) as c:
        deployed(c, "echo", zip_of(app=ECHO))
        try:
            r = deploy(c, "broken", bundle())
        except httpx.TransportError as exc:
            try:
                status = f"then exited with status {own.proc.wait(timeout=3)}"
            except subprocess.TimeoutExpired:
                status = "is still running"  # only this connection was dropped
            pytest.fail(f"the server dropped the connection with no response ({exc!r}) and"
                        f" {status}; its stderr ends:\n{own.stderr()[-1500:]}")
        assert_error(r, 400, "zip")
        assert_serves(c)


def test_event_that_is_not_json_is_400(client: httpx.Client) -> None:
    for headers in ({}, EVENT):
        for body in (b"{not json", b"\xff\xfe", b"[1, 2"):
            r = client.post("/v1/functions/echo/invoke", content=body, headers=headers)
            assert_error(r, 400, "not valid JSON")
    assert_serves(client)


OUT_OF_RANGE = [
    ({"memory_mb": 64}, ["memory_mb", "64", "128", "10240"]),
    ({"memory_mb": 20000}, ["memory_mb", "128", "10240"]),
    ({"timeout_s": 0}, ["timeout_s", "1", "900"]),
    ({"timeout_s": 901}, ["timeout_s", "1", "900"]),
    ({"no_such_field": 1}, ["no_such_field"]),
    ({"memory_mb": "lots"}, ["memory_mb"]),
]


@pytest.mark.parametrize(("fields", "words"), OUT_OF_RANGE)
def test_configuration_out_of_range_is_400_naming_field_and_range(
    client: httpx.Client, fields: dict[str, Any], words: list[str]
) -> None:
    code = zip_of(app=ECHO)
    # A zip body with the field in the query string,
    assert_error(deploy(client, "ranged", code, **fields), 400, *words)
    # a JSON deploy,
    r = client.put("/v1/functions/ranged", json={
        "handler": "app.handler", "code_zip_b64": base64.b64encode(code).decode(), **fields})
    assert_error(r, 400, *words)
    assert_error(client.get("/v1/functions/ranged"), 404)
    # and a PATCH, which leaves the configuration as it was.
    before = client.get("/v1/functions/echo").json()["config"]
    assert_error(client.patch("/v1/functions/echo", json=fields), 400, *words)
    assert client.get("/v1/functions/echo").json()["config"] == before
    assert_serves(client)


# --- token auth ----------------------------------------------------------------------


def test_token_is_required_when_set(start_server: Callable[..., ServerProcess]) -> None:
    guarded = start_server("--token", "secret")
    with httpx.Client(base_url=guarded.url, timeout=HTTP_TIMEOUT) as c:
        for headers in ({}, {"authorization": "Bearer wrong"},
                        {"authorization": "Bearer secret-but-longer"},
                        {"authorization": "Basic c2VjcmV0"}, {"authorization": "secret"}):
            assert_error(c.get("/v1/functions", headers=headers), 401, "Bearer")
            assert_error(c.post("/v1/functions/echo/invoke", json={}, headers=headers), 401)
        good = {"authorization": "Bearer secret"}
        r = c.get("/v1/functions", headers=good)
        assert r.status_code == 200, r.text
        assert r.json() == {"functions": []}
        r = c.put("/v1/functions/echo", params={"handler": "app.handler"},
                  content=zip_of(app=ECHO), headers={**ZIP, **good})
        assert r.status_code == 201, r.text
        r = c.post("/v1/functions/echo/invoke", json={"a": 1}, headers=good)
        assert r.status_code == 200, r.text
        assert r.json()["event"] == {"a": 1}


def test_off_loopback_without_token_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "never"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fastfaas", "serve", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=CLIENT_ENV, timeout=60, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "--token" in proc.stderr
    assert "0.0.0.0" in proc.stderr
    assert "listening" not in proc.stdout
    assert not data_dir.exists()  # refused before opening anything, let alone a socket
    assert time.monotonic() - t0 < 30


# --- asynchronous invocation -----------------------------------------------------------


def test_async_invocation_is_202_then_succeeds(client: httpx.Client) -> None:
    deployed(client, "later", zip_of(app=ECHO), env={"GREETING": "async"})
    r = invoke(client, "later", {"n": 7}, headers=EVENT)
    assert r.status_code == 202, r.text
    request_id = r.headers["x-fastfaas-request-id"]
    assert r.json() == {"request_id": request_id}
    done = wait_invocation(client, request_id)
    assert done["status"] == "succeeded", done
    assert done["request_id"] == request_id
    assert done["function"] == "later"
    assert done["result"] == {"event": {"n": 7}, "greeting": "async"}
    assert "error" not in done


def test_async_invocation_of_a_failing_handler_is_failed_with_the_error(
    client: httpx.Client
) -> None:
    deployed(client, "later-raises", zip_of(app=RAISES))
    r = invoke(client, "later-raises", {"why": "async"}, headers=EVENT)
    assert r.status_code == 202, r.text
    done = wait_invocation(client, r.json()["request_id"])
    assert done["status"] == "failed", done
    assert "result" not in done
    error = done["error"]
    assert error["kind"] == "Unhandled"
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "bad thing: async"
    assert error["stackTrace"]


def test_async_unknowns_are_404(client: httpx.Client) -> None:
    assert_error(client.get("/v1/invocations/no-such-invocation"), 404, "no-such-invocation")
    assert_error(invoke(client, "no-such-function", headers=EVENT), 404, "no-such-function")
    assert_serves(client)


# --- logs, health, metrics -------------------------------------------------------------


def test_logs_show_recent_entries_with_request_ids_and_output(client: httpx.Client) -> None:
    deployed(client, "chatty", zip_of(app=CHATTY))
    request_ids = []
    for i in range(3):
        r = invoke(client, "chatty", {"i": i})
        assert r.status_code == 200, r.text
        request_ids.append(r.headers["x-fastfaas-request-id"])

    r = client.get("/v1/functions/chatty/logs", params={"limit": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "chatty"
    entries = body["entries"]
    assert [e["request_id"] for e in entries] == request_ids[1:]  # the latest two, in order
    assert [e["log"] for e in entries] == ["chatty says 1\n", "chatty says 2\n"]
    assert all(e["error"] is None and e["duration_us"] >= 0 and e["start"] for e in entries)

    everything = client.get("/v1/functions/chatty/logs").json()["entries"]
    assert [e["request_id"] for e in everything] == request_ids
    assert_error(client.get("/v1/functions/chatty/logs", params={"limit": "many"}), 400,
                 "limit")
    assert_error(client.get("/v1/functions/nobody/logs"), 404)


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    health = r.json()
    assert health["status"] == "ok"
    assert health["cgroups"]["mode"] == CGROUPS_MODE
    assert isinstance(health["cgroups"]["enabled"], bool)
    # The suite's servers run at `standard` (FASTFAAS_ISOLATION, from conftest).
    assert health["isolation"]["default"] == ("standard" if health["cgroups"]["enabled"]
                                              else "none")
    assert health["isolation"]["default"] in health["isolation"]["available"]
    assert health["functions"] >= 1
    assert health["queued"] >= 0


def test_metrics_count_invocations_by_start_kind_and_outcome(client: httpx.Client) -> None:
    deployed(client, "metered", zip_of(app=MAYBE_RAISES))
    expected: dict[tuple[str, str], int] = {}
    for event in ({}, {}, {"fail": True}):
        r = invoke(client, "metered", event)
        assert r.status_code == 200, r.text
        key = (r.headers["x-fastfaas-start"],
               r.headers.get("x-fastfaas-function-error", "success"))
        expected[key] = expected.get(key, 0) + 1

    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert "# TYPE fastfaas_invocations_total counter" in text
    got = {}
    for line in text.splitlines():
        if line.startswith('fastfaas_invocations_total{function="metered",'):
            labels, value = line.rsplit(" ", 1)
            parts = dict(p.split("=", 1) for p in labels.split("{", 1)[1].rstrip("}").split(","))
            got[parts["start"].strip('"'), parts["outcome"].strip('"')] = int(value)
    assert got == expected
    assert 'fastfaas_invocation_duration_seconds_count{function="metered"} 3' in text


# --- a client that goes away --------------------------------------------------------


def test_client_disconnect_does_not_kill_the_invocation(
    client: httpx.Client, server: ServerProcess, tmp_path: Path
) -> None:
    deployed(client, "writer", zip_of(app=SLOW_WRITER))
    assert client.post("/v1/functions/writer/warm").json()["ready"] is True
    out = tmp_path / "lines"
    event = json.dumps({"path": str(out), "busy_s": 0.5, "line": "first"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(b"POST /v1/functions/writer/invoke HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(event), event))
        time.sleep(0.1)  # the handler is busy now; hang up on it
    # The file exists from the handler's open() on, before its line is written: wait
    # for the line (a check of existence alone read '' once in CI).
    deadline = time.monotonic() + WAIT_S
    while not (out.exists() and out.read_text() == "first\n"):
        assert time.monotonic() < deadline, (
            "the abandoned invocation never finished: "
            f"{out.read_text() if out.exists() else 'no file'!r}")
        time.sleep(0.02)

    r = invoke(client, "writer", {"path": str(out), "busy_s": 0, "line": "second"})
    assert r.status_code == 200, r.text
    assert r.json() == "second"
    assert out.read_text() == "first\nsecond\n"
    entries = client.get("/v1/functions/writer/logs").json()["entries"]
    assert [e["error"] for e in entries] == [None, None]  # it ran to its end, not killed


# --- the CLI -------------------------------------------------------------------------


def test_cli_deploy_invoke_list_get_logs_delete(
    server: ServerProcess, make_function: Callable[..., Path]
) -> None:
    url = ("--url", server.url)
    code = make_function(app=ECHO)
    p = cli("deploy", "cli-fn", str(code), "--handler", "app.handler", "--memory-mb", "256",
            "--env", "GREETING=from cli", *url)
    assert p.returncode == 0, p.stderr
    assert "deployed cli-fn" in p.stdout and "256 MB" in p.stdout
    assert "ready" in p.stdout

    p = cli("invoke", "cli-fn", '{"a": 1}', *url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"event": {"a": 1}, "greeting": "from cli"}

    p = cli("list", *url)
    assert p.returncode == 0, p.stderr
    assert any(line.split()[:2] == ["cli-fn", "app.handler"] for line in p.stdout.splitlines())

    p = cli("get", "cli-fn", *url)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["name"] == "cli-fn"
    assert info["config"]["env"] == {"GREETING": "from cli"}

    p = cli("logs", "cli-fn", *url)
    assert p.returncode == 0, p.stderr
    assert len([line for line in p.stdout.splitlines() if not line.startswith(" ")]) == 1

    p = cli("delete", "cli-fn", *url)
    assert p.returncode == 0, p.stderr
    assert "deleted cli-fn" in p.stdout
    p = cli("get", "cli-fn", *url)
    assert p.returncode == 1
    assert "cli-fn" in p.stderr and "404" in p.stderr


def test_cli_deploy_of_code_that_does_not_import_fails(
    server: ServerProcess, make_function: Callable[..., Path]
) -> None:
    code = make_function(app=IMPORT_FAILS)
    p = cli("deploy", "cli-no-import", str(code), "--handler", "app.handler",
            "--url", server.url)
    assert p.returncode != 0
    assert "does not import" in p.stderr
    assert "boom at import" in p.stderr


def test_cli_invoke_of_a_raising_function_exits_1_with_the_error(
    server: ServerProcess, client: httpx.Client
) -> None:
    deployed(client, "cli-raises", zip_of(app=RAISES))
    p = cli("invoke", "cli-raises", '{"why": "cli"}', "--url", server.url)
    assert p.returncode == 1
    assert p.stdout == ""
    assert "Unhandled" in p.stderr
    assert "ValueError: bad thing: cli" in p.stderr


def test_cli_against_a_dead_url_exits_2_with_an_actionable_message() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    p = cli("invoke", "anything", "{}", "--url", dead)
    assert p.returncode == 2
    assert dead in p.stderr
    assert "fastfaas serve" in p.stderr and "--url" in p.stderr
    assert "Traceback" not in p.stderr


def test_cli_help_for_every_subcommand() -> None:
    top = cli("--help")
    assert top.returncode == 0, top.stderr
    # The subcommands are listed under COMMAND, one per line, indented by four spaces.
    commands = [line.split()[0] for line in top.stdout.splitlines()
                if line.startswith("    ") and not line.startswith("     ")]
    assert {"serve", "deploy", "invoke", "list", "get", "delete", "logs"} <= set(commands)
    procs = {c: subprocess.Popen([sys.executable, "-m", "fastfaas", c, "--help"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 env=CLIENT_ENV)
             for c in commands}
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (command, err)
        assert out.startswith(f"usage: fastfaas {command}"), (command, out)
        assert "--help" in out
