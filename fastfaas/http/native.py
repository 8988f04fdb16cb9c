"""fastfaas's native HTTP API (`/v1/...`, `/healthz`, `/metrics`) over the Runtime.

Routes:
    PUT    /v1/functions/{name}             create or replace (zip body, or JSON)
    PATCH  /v1/functions/{name}             change configuration
    GET    /v1/functions                    list
    GET    /v1/functions/{name}             configuration, code hash, live state
    DELETE /v1/functions/{name}             drain and stop
    POST   /v1/functions/{name}/warm        claim a zygote now (import the code)
    GET    /v1/functions/{name}/logs        recent invocations with their output
    GET    /v1/functions/{name}/sizing      a memory size from observed usage, and why
    POST   /v1/functions/{name}/tune        trial runs at several sizes: duration, cost, best
    POST   /v1/functions/{name}/invoke      run it; `X-Fastfaas-Invocation-Type: Event` queues
    GET    /v1/invocations/{id}             an asynchronous invocation's status and result
    GET    /healthz, GET /metrics
"""

from __future__ import annotations

import base64
import functools
import hmac
import os
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Final
from urllib.parse import parse_qsl

import msgspec
import trio

from fastfaas import _lane, _native, errors, wire
from fastfaas.config import FunctionConfig, check_name
from fastfaas.errors import (
    FastfaasError,
    FunctionNotFoundError,
    InvalidRequestError,
    RequestTooLargeError,
)
from fastfaas.http import sigv4
from fastfaas.http.lambda_api import LambdaApi
from fastfaas.http.lambda_api import error_response as lambda_error
from fastfaas.http.metrics import BUCKETS, Metrics
from fastfaas.http.protocol import FAST_BODY_MAX, MAX_HEADERS, Request
from fastfaas.http.server import JSON, RECEIVE_BYTES, Response, error_response
from fastfaas.runtime import code as code_bundles
from fastfaas.runtime import sizing
from fastfaas.runtime.results import InvocationResult
from fastfaas.runtime.runtime import LATEST, FastCall, Runtime
from fastfaas.runtime.store import Store, StoredFunction

MAX_DEPLOY_BODY: Final = code_bundles.MAX_ZIP_BYTES * 4 // 3 + (1 << 20)  # base64 in JSON
CONFIG_FIELDS: Final = frozenset(FunctionConfig.__struct_fields__)
MAX_ROUTE_KEY_BYTES: Final = 256
ZIP_TYPES: Final = (b"application/zip", b"application/x-zip-compressed",
                    b"application/octet-stream")

_STATUS: Final[dict[type[FastfaasError], int]] = {
    errors.InvalidRequestError: 400,
    errors.FunctionNotFoundError: 404,
    errors.RequestTooLargeError: 413,
    errors.RuntimeClosedError: 503,
    errors.TooManyRequestsError: 429,
}
_encode = msgspec.json.encode

Handler = Callable[[Request, str], Awaitable[Response]]


class NativeApi:
    """The native API as an HTTP App (see `fastfaas.http.server`).

    Args:
        runtime: runs the functions.
        store: the registry and the async event queue (SQLite).
        wake_poller: called after an event is queued.
        token: when set, every native request must carry `Authorization: Bearer <token>`.
        aws_credentials: access key id -> secret: the Lambda API verifies SigV4
            signatures with them. Without, it accepts any on loopback, and is shut
            when the server has a token or listens elsewhere.
        loopback: whether the server listens on loopback only.
        max_body: the largest invocation body (default 6 MB).
        health: extra fields for `/healthz`.
    """

    def __init__(self, runtime: Runtime, store: Store, wake_poller: Callable[[], None], *,
                 token: str | None = None, max_body: int = 6 * 1024 * 1024,
                 health: dict[str, Any] | None = None,
                 aws_credentials: dict[str, str] | None = None,
                 loopback: bool = True) -> None:
        self.runtime = runtime
        self.store = store
        self.wake_poller = wake_poller
        self.metrics = Metrics()
        self.max_body = max_body
        self.health = health or {}
        self._expected_auth = b"Bearer " + token.encode() if token else None
        self._write_lock = trio.Lock()  # deploys and config changes, one at a time
        self.started = time.time()
        self.lambda_api = LambdaApi(self)
        self.aws_credentials = aws_credentials or {}  # access key id -> secret (SigV4)
        self.loopback = loopback
        self.lane = _lane.WarmLane(
            self, fast_invoke=_FastInvoke, decode_result=wire.instance_out.decode,
            compare=hmac.compare_digest,
            stats=trio.lowlevel.current_statistics, parse=_native.parse_request,
            metrics_buckets=BUCKETS, max_payload=wire.MAX_PAYLOAD,
            inline_max=wire.INLINE_MAX, receive_bytes=RECEIVE_BYTES,
            max_headers=MAX_HEADERS, fast_body_max=FAST_BODY_MAX)

    # --- the App ---------------------------------------------------------------

    def body_limit(self, method: bytes, path: bytes) -> int:
        if method == b"PUT" and path.startswith(b"/v1/functions/"):
            return MAX_DEPLOY_BODY
        if path.startswith(b"/20") and LambdaApi.body_limit(method, path) is not None:
            return MAX_DEPLOY_BODY
        return self.max_body

    async def __call__(self, req: Request) -> Response:
        t0 = time.perf_counter_ns()
        if LambdaApi.handles(req.path):
            if self.aws_credentials:
                try:
                    sigv4.verify(req, self.aws_credentials)
                except sigv4.SignatureError as exc:
                    return lambda_error(403, exc.error_type, str(exc))
            elif self._expected_auth is not None or not self.loopback:
                # Lambda clients sign; with no keys to check them against, a server
                # that guards its API (a token, or off loopback) keeps this one shut.
                return lambda_error(403, "UnrecognizedClientException",
                                    "this server's Lambda API needs keys to verify"
                                    " signatures with: start it with --aws-credentials"
                                    " KEY_ID:SECRET")
            return await self.lambda_api(req)
        if self._expected_auth is not None and not hmac.compare_digest(
                req.header(b"authorization"), self._expected_auth):
            return self._error(401, "Unauthorized",
                               "this server needs `Authorization: Bearer <token>`")
        parts = req.path.split("/")
        try:
            # "", "v1", "functions", name, action
            if len(parts) == 5 and parts[1] == "v1" and parts[2] == "functions":
                if parts[4] == "invoke":
                    if req.method != b"POST":
                        return self._method_not_allowed("POST")
                    return await self._invoke(req, parts[3], t0)
                routes: dict[str, dict[bytes, Handler]] = {
                    "logs": {b"GET": self._logs}, "warm": {b"POST": self._warm},
                    "sizing": {b"GET": self._sizing}, "tune": {b"POST": self._tune}}
                return await self._dispatch(req, routes.get(parts[4]), parts[3])
            if len(parts) == 4 and parts[1] == "v1" and parts[2] == "functions":
                return await self._dispatch(req, {
                    b"GET": self._get, b"PUT": self._put, b"PATCH": self._patch,
                    b"DELETE": self._delete}, parts[3])
            if len(parts) == 3 and parts[1] == "v1" and parts[2] == "functions":
                return await self._dispatch(req, {b"GET": self._list}, "")
            if len(parts) == 4 and parts[1] == "v1" and parts[2] == "invocations":
                return await self._dispatch(req, {b"GET": self._invocation}, parts[3])
            if req.path == "/healthz":
                return await self._dispatch(req, {b"GET": self._healthz}, "")
            if req.path == "/metrics":
                return await self._dispatch(req, {b"GET": self._metrics}, "")
            return self._error(404, "NotFound", f"no route for {req.path!r}")
        except FastfaasError as exc:
            return self.fastfaas_error(exc)
        except Exception as exc:  # a bug of ours: answer 500, keep serving everyone else
            return self._bug(exc)

    async def _dispatch(self, req: Request, routes: dict[bytes, Handler] | None,
                        arg: str) -> Response:
        if routes is None:
            return self._error(404, "NotFound", f"no route for {req.path!r}")
        handler = routes.get(req.method)
        if handler is None:
            return self._method_not_allowed(", ".join(m.decode() for m in routes))
        return await handler(req, arg)

    def _error(self, status: int, code: str, message: str) -> Response:
        self.metrics.http_errors[status] += 1
        return error_response(status, code, message)

    def _method_not_allowed(self, allowed: str) -> Response:
        response = self._error(405, "MethodNotAllowed", f"this route allows {allowed}")
        response.headers.append((b"allow", allowed.encode()))
        return response

    # --- invoke ------------------------------------------------------------------

    async def _invoke(self, req: Request, name: str, t0: int) -> Response:
        body = req.body or b"{}"
        kind = req.header(b"x-fastfaas-invocation-type", b"RequestResponse")
        if kind != b"RequestResponse":
            return self._invoke_other(kind, name, body)
        route_key = req.headers.get(b"x-fastfaas-route-key")
        try:
            if route_key is None:
                result = await self.runtime.invoke(name, payload=body)
            else:
                result = await self.runtime.invoke(
                    name, payload=body, route_key=_route_key(route_key),
                    route_wait=_route_wait(req.header(b"x-fastfaas-route-busy", b"wait")))
        except FunctionNotFoundError:
            check_name(name)  # a malformed name is a 400, not a 404
            raise
        except (InvalidRequestError, RequestTooLargeError):
            raise
        except FastfaasError as exc:
            self.metrics.record(name, "none", exc.code, (time.perf_counter_ns() - t0) / 1e9)
            raise
        return self._invoke_response(name, result, t0)

    def _bug(self, exc: Exception) -> Response:
        traceback.print_exc()
        return self._error(500, "InternalError", f"{type(exc).__name__}: {exc}")

    def _invoke_response(self, name: str, result: InvocationResult, t0: int) -> Response:
        server_ns = time.perf_counter_ns() - t0
        error = result.error
        self.metrics.record(name, result.start, "success" if error is None else error.kind,
                            server_ns / 1e9)
        headers = [
            (b"content-type", JSON),
            (b"x-fastfaas-request-id", result.request_id.encode()),
            (b"x-fastfaas-start", result.start.encode()),
            (b"x-fastfaas-duration-us", b"%d" % result.duration_us),
            (b"x-fastfaas-server-us", b"%d" % (server_ns // 1000)),
            (b"x-fastfaas-instance", result.instance_id.encode()),
            (b"x-fastfaas-route", result.route.encode()),
        ]
        if error is not None:
            headers.append((b"x-fastfaas-function-error", error.kind.encode()))
        if result.affinity:
            headers.append((b"x-fastfaas-affinity", result.affinity.encode()))
        if result.escalated_mb:
            headers.append((b"x-fastfaas-escalated", b"%d" % result.escalated_mb))
        return Response(200, result.payload, headers)

    def fastfaas_error(self, exc: FastfaasError) -> Response:
        """A platform error as `__call__` answers it."""
        response = self._error(_STATUS.get(type(exc), 500), exc.code, str(exc))
        if response.status == 429:
            response.headers.append((b"retry-after", b"1"))
        return response

    def _invoke_other(self, kind: bytes, name: str, body: bytes,
                      version: str = LATEST) -> Response:
        """`Event` (queue it) or `DryRun` (check it, run nothing: 204)."""
        if kind not in (b"Event", b"DryRun"):
            raise InvalidRequestError(
                f"X-Fastfaas-Invocation-Type {kind.decode(errors='replace')!r} must be"
                " RequestResponse (the default), Event or DryRun")
        check_name(name)
        self.runtime.describe(name, version)  # FunctionNotFoundError before anything is queued
        if len(body) > wire.MAX_PAYLOAD:
            raise RequestTooLargeError(
                f"the event is {len(body)} bytes; the limit is {wire.MAX_PAYLOAD} bytes")
        try:
            msgspec.json.decode(body)
        except ValueError as exc:  # msgspec.DecodeError, and UnicodeDecodeError for bad UTF-8
            raise InvalidRequestError(f"the event is not valid JSON: {exc}") from None
        if kind == b"DryRun":
            return Response(204, b"", [])
        request_id = self.runtime.new_request_id()
        self.store.put(request_id, name, version, body)  # committed before the 202
        self.wake_poller()
        return Response(202, _encode({"request_id": request_id}), [
            (b"content-type", JSON), (b"x-fastfaas-request-id", request_id.encode())])

    def record_async(self, name: str, result: InvocationResult, seconds: float) -> None:
        error = result.error
        self.metrics.record(name, result.start, "success" if error is None else error.kind,
                            seconds)

    async def _invocation(self, req: Request, request_id: str) -> Response:
        row = self.store.get(request_id)
        if row is None:
            return self._error(404, "InvocationNotFound",
                               f"no asynchronous invocation has id {request_id!r}")
        result, error = row.pop("result"), row.pop("error")
        if row["status"] == "succeeded":
            row["result"] = msgspec.Raw(result)
        elif row["status"] == "failed":
            row["error"] = msgspec.Raw(error.encode())
        return Response(200, _encode(row))

    # --- functions -------------------------------------------------------------

    async def _put(self, req: Request, name: str) -> Response:
        check_name(name)
        content_type = req.header(b"content-type").partition(b";")[0].strip().lower()
        if content_type in ZIP_TYPES:
            fields = _query_fields(req.query)
            zip_data = req.body
        elif content_type == JSON:
            fields = _json_object(req.body, "the request body")
            encoded = fields.pop("code_zip_b64", None)
            if not isinstance(encoded, str):
                raise InvalidRequestError("a JSON deploy needs `code_zip_b64`: the code zip,"
                                          " base64-encoded")
            try:
                zip_data = base64.b64decode(encoded, validate=True)
            except ValueError as exc:  # binascii.Error, or characters beyond ASCII
                raise InvalidRequestError(f"code_zip_b64 is not valid base64: {exc}") from None
        else:
            raise InvalidRequestError(
                "send the code as an `application/zip` body (configuration in the query"
                " string) or as JSON with `code_zip_b64`; got Content-Type"
                f" {content_type.decode(errors='replace') or 'none'!r}")
        _check_fields(fields)
        handler = fields.pop("handler", None)
        if not isinstance(handler, str):
            raise InvalidRequestError("`handler` is required, as 'module.function'")
        if not zip_data:
            raise InvalidRequestError("the code zip is empty")
        async with self._write_lock:
            created = name not in self.runtime.functions()
            info = await self.runtime.deploy(name, zip_data, handler, **fields)
            self._save(name)
        return Response(201 if created else 200, _encode(info))

    async def _patch(self, req: Request, name: str) -> Response:
        check_name(name)
        content_type = req.header(b"content-type").partition(b";")[0].strip().lower()
        if content_type == JSON or req.body:
            fields = _json_object(req.body, "the request body")
        else:
            fields = _query_fields(req.query)
        _check_fields(fields)
        if not fields:
            raise InvalidRequestError("PATCH needs at least one configuration field")
        async with self._write_lock:
            info = await self.runtime.update_config(name, **fields)
            self._save(name)
        return Response(200, _encode(info))

    def _save(self, name: str) -> None:
        info = self.runtime.describe(name)
        self.store.put_function(StoredFunction(name, info["version"], self.runtime.config(name),
                                               info["code_sha256"]))

    async def _get(self, req: Request, name: str) -> Response:
        check_name(name)
        return Response(200, _encode(self.runtime.describe(name)))

    async def _list(self, req: Request, _: str) -> Response:
        rt = self.runtime
        return Response(200, _encode({"functions": [rt.describe(n) for n in rt.functions()]}))

    async def _delete(self, req: Request, name: str) -> Response:
        check_name(name)
        async with self._write_lock:
            await self.runtime.delete(name)
            self.store.delete_function(name, LATEST)
            self.store.delete_usage(name)
        return Response(200, _encode({"name": name, "deleted": True}))

    async def _warm(self, req: Request, name: str) -> Response:
        check_name(name)
        error = await self.runtime.warm(name)
        body: dict[str, Any] = {"name": name, "ready": error is None}
        if error is not None:
            body["error"] = {"errorType": error.error_type, "errorMessage": error.error_message,
                             "stackTrace": error.stack_trace, "kind": error.kind}
        headers = [(b"content-type", JSON)]
        if error is not None:
            headers.append((b"x-fastfaas-function-error", error.kind.encode()))
        return Response(200, _encode(body), headers)

    async def _sizing(self, req: Request, name: str) -> Response:
        check_name(name)
        version = dict(parse_qsl(req.query.decode("latin-1"))).get("version", LATEST)
        rec = self.runtime.sizing_for(name, version)
        return Response(200, _encode({"name": name, "version": version,
                                      **msgspec.to_builtins(rec)}))

    async def _tune(self, req: Request, name: str) -> Response:
        check_name(name)
        try:
            asked = msgspec.json.decode(req.body or b"{}", type=TuneRequest)
        except ValueError as exc:  # DecodeError and ValidationError
            raise InvalidRequestError(f"the tune request: {exc}") from None
        report = await self.runtime.tune(name, payload=msgspec.json.encode(asked.event),
                                         sizes=asked.sizes, runs=asked.runs,
                                         version=asked.version)
        return Response(200, _encode({"name": name, "version": asked.version,
                                      **msgspec.to_builtins(report)}))

    async def _logs(self, req: Request, name: str) -> Response:
        check_name(name)
        query = dict(parse_qsl(req.query.decode("latin-1")))
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise InvalidRequestError("limit must be an integer") from None
        entries = [{
            "time": e.time, "request_id": e.request_id, "start": e.start,
            "duration_us": e.duration_us, "error": e.error,
            "log": e.log.decode("utf-8", errors="replace"),
        } for e in self.runtime.logs(name, limit)]
        return Response(200, _encode({"name": name, "entries": entries}))

    # --- health and metrics ------------------------------------------------------

    async def _healthz(self, req: Request, _: str) -> Response:
        stats = self.runtime.statistics()
        cg = stats["cgroups"]
        instances: dict[str, int] = {}
        for state in stats["functions"].values():
            for kind, n in state["instances"].items():
                instances[kind] = instances.get(kind, 0) + n
        return Response(200, _encode({
            "status": "ok",
            "cgroups": {"mode": cg["mode"], "enabled": cg["enabled"], "reason": cg["reason"]},
            "isolation": stats["isolation"],
            "cpus": {"server": sorted(os.sched_getaffinity(0)),
                     "functions": stats["function_cpus"]},  # None: anywhere
            "function_sched": stats["function_sched"],
            "functions": len(stats["functions"]),
            "zygotes": stats["zygotes"],
            "warming_pool": stats["warming_pool"]["ready"],
            "warming_pool_target": stats["warming_pool"]["target"],
            "instances": instances,
            "draining": len(stats["draining"]),
            "memory": stats["memory"],
            "concurrency": stats["concurrency"],
            "queued": self.store.queued_count(),
            "uptime_s": round(time.time() - self.started, 3),
            **self.health,
        }))

    async def _metrics(self, req: Request, _: str) -> Response:
        rt = self.runtime
        sizes = await rt.sizing_all()
        body = self.metrics.render(rt.statistics(), self.store.queued_count(), sizes)
        return Response(200, body, [(b"content-type", b"text/plain; version=0.0.4")])


def _route_key(raw: bytes) -> str:
    if not 0 < len(raw) <= MAX_ROUTE_KEY_BYTES:
        raise InvalidRequestError(
            f"X-Fastfaas-Route-Key must be 1-{MAX_ROUTE_KEY_BYTES} bytes, not {len(raw)}")
    return raw.decode("latin-1")


def _route_wait(raw: bytes) -> bool:
    if raw not in (b"wait", b"fallback"):
        raise InvalidRequestError("X-Fastfaas-Route-Busy must be 'wait' (the default: wait for"
                                  " the key's busy instance, up to a bound) or 'fallback'")
    return raw == b"wait"


def _query_fields(query: bytes) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    try:
        pairs = parse_qsl(query.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(f"bad query string: {exc}") from None
    for key, value in pairs:
        if key in fields:
            raise InvalidRequestError(f"query parameter {key!r} is given twice")
        if key == "env":
            env = _json_object(value.encode(), "env (JSON-encoded in the query string)")
            fields[key] = env
        else:
            fields[key] = None if value in ("", "null") else value
    return fields


class TuneRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/functions/{name}/tune."""

    event: Any = msgspec.field(default_factory=dict)  # as an empty invoke body: {}
    sizes: list[int] = msgspec.field(default_factory=lambda: list(sizing.TUNE_SIZES))
    runs: int = sizing.TUNE_RUNS
    version: str = LATEST


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body)
    except ValueError as exc:  # msgspec.DecodeError, and UnicodeDecodeError for bad UTF-8
        raise InvalidRequestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return value


def _check_fields(fields: dict[str, Any]) -> None:
    unknown = sorted(set(fields) - CONFIG_FIELDS)
    if unknown:
        raise InvalidRequestError(
            f"unknown configuration field(s) {', '.join(map(repr, unknown))}; known:"
            f" {', '.join(sorted(CONFIG_FIELDS))}")


class _FastInvoke:
    """A warm invocation in flight on the fast path, as the HTTP server's Pending."""

    __slots__ = ("api", "call", "fd", "name", "owner", "t0", "waits_first")

    def __init__(self, api: NativeApi, call: FastCall, name: str, t0: int) -> None:
        self.api = api
        self.call = call
        self.fd = call.fd
        self.owner: object = call.inst.chan  # the instance's channel holds the descriptor
        self.waits_first = call.waits_first
        self.name = name
        self.t0 = t0

    def step(self) -> Response | Callable[[], Awaitable[Response]] | None:
        try:
            out = self.call.step()
        except Exception as exc:
            return self.api._bug(exc)
        return self._answer(out)

    def settle(self, got: tuple[bytes, list[int]] | None,
               ended: tuple[int, int, int, int] | None = None,
               ) -> Response | Callable[[], Awaitable[Response]]:
        """`step` with the reply received already (`FastCall.settle`): for a call that
        leaves the compiled lane there."""
        try:
            out = self.call.settle(got, ended)
        except Exception as exc:
            return self.api._bug(exc)
        answer = self._answer(out)
        assert answer is not None
        return answer

    def _answer(self, out: InvocationResult | Callable[[], Awaitable[InvocationResult]] | None,
                ) -> Response | Callable[[], Awaitable[Response]] | None:
        if out is None:
            return None
        if isinstance(out, InvocationResult):
            return self.api._invoke_response(self.name, out, self.t0)
        return functools.partial(self._later, out)

    def abandon(self) -> None:
        self.call.abandon()

    async def _later(self, out: Callable[[], Awaitable[InvocationResult]]) -> Response:
        try:
            result = await out()
        except FastfaasError as exc:
            self.api.metrics.record(self.name, "none", exc.code,
                                    (time.perf_counter_ns() - self.t0) / 1e9)
            return self.api.fastfaas_error(exc)
        except Exception as exc:
            return self.api._bug(exc)
        return self.api._invoke_response(self.name, result, self.t0)
