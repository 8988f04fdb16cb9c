"""The AWS Lambda API (2015-03-31) on fastfaas's listener, for boto3 and the AWS CLI.

Routes follow botocore's service model (`requestUri` per operation, under the
date prefixes it uses). This module covers the functions, Invoke, reserved
concurrency and the account settings; provisioned concurrency is not
here yet (see the README).

A `FunctionName` may be a name, `name:qualifier`, a full ARN
(`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`) or a partial one
(`ACCOUNT:function:NAME`). Errors carry Lambda's shape (`x-amzn-ErrorType`,
JSON `Type`/`message`) and status codes, so that boto3 raises its exception
classes (`ResourceNotFoundException`, ...).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, unquote

import msgspec

from fastfaas import errors
from fastfaas.config import REGION, check_name
from fastfaas.errors import (
    FastfaasError,
    FunctionNotFoundError,
    InvalidRequestError,
    RequestTooLargeError,
    TooManyRequestsError,
)
from fastfaas.http.protocol import Request
from fastfaas.http.server import JSON, Response
from fastfaas.runtime.runtime import LATEST
from fastfaas.runtime.store import StoredAlias, StoredFunction

if TYPE_CHECKING:
    from fastfaas.http.native import NativeApi

ACCOUNT: Final = "000000000000"
RUNTIME: Final = f"python{sys.version_info.major}.{sys.version_info.minor}"
ROLE: Final = f"arn:aws:iam::{ACCOUNT}:role/fastfaas"
LOG_TAIL: Final = 4096
MAX_ITEMS: Final = 50
_FUNCTION_NAME = re.compile(
    r"(?:arn:aws[a-zA-Z-]*:lambda:[a-z0-9-]+:)?(?:\d{12}:)?(?:function:)?"
    r"([a-zA-Z0-9_-]+)(?::(\$LATEST|[a-zA-Z0-9_-]+))?")
_encode = msgspec.json.encode

Handler = Callable[[Request, str, str], Awaitable[Response]]

# (method, path pattern) -> operation; the pattern's group is the FunctionName.
_ROUTES: Final[list[tuple[bytes, re.Pattern[str], str]]] = [
    (m.encode(), re.compile(p), op) for m, p, op in [
        ("POST", r"/2015-03-31/functions/?", "CreateFunction"),
        ("GET", r"/2015-03-31/functions/?", "ListFunctions"),
        ("GET", r"/2015-03-31/functions/([^/]+)", "GetFunction"),
        ("DELETE", r"/2015-03-31/functions/([^/]+)", "DeleteFunction"),
        ("GET", r"/2015-03-31/functions/([^/]+)/configuration", "GetFunctionConfiguration"),
        ("PUT", r"/2015-03-31/functions/([^/]+)/configuration", "UpdateFunctionConfiguration"),
        ("PUT", r"/2015-03-31/functions/([^/]+)/code", "UpdateFunctionCode"),
        ("POST", r"/2015-03-31/functions/([^/]+)/invocations", "Invoke"),
        ("PUT", r"/2017-10-31/functions/([^/]+)/concurrency", "PutFunctionConcurrency"),
        ("GET", r"/2019-09-30/functions/([^/]+)/concurrency", "GetFunctionConcurrency"),
        ("DELETE", r"/2017-10-31/functions/([^/]+)/concurrency", "DeleteFunctionConcurrency"),
        ("GET", r"/2016-08-19/account-settings/?", "GetAccountSettings"),
        ("POST", r"/2015-03-31/functions/([^/]+)/versions", "PublishVersion"),
        ("GET", r"/2015-03-31/functions/([^/]+)/versions", "ListVersionsByFunction"),
        ("POST", r"/2015-03-31/functions/([^/]+)/aliases", "CreateAlias"),
        ("GET", r"/2015-03-31/functions/([^/]+)/aliases", "ListAliases"),
        ("GET", r"/2015-03-31/functions/([^/]+)/aliases/([^/]+)", "GetAlias"),
        ("PUT", r"/2015-03-31/functions/([^/]+)/aliases/([^/]+)", "UpdateAlias"),
        ("DELETE", r"/2015-03-31/functions/([^/]+)/aliases/([^/]+)", "DeleteAlias"),
        ("PUT", r"/2019-09-30/functions/([^/]+)/provisioned-concurrency",
         "PutProvisionedConcurrencyConfig"),
        ("GET", r"/2019-09-30/functions/([^/]+)/provisioned-concurrency",
         "GetProvisionedConcurrencyConfig"),
        ("DELETE", r"/2019-09-30/functions/([^/]+)/provisioned-concurrency",
         "DeleteProvisionedConcurrencyConfig"),
    ]
]
_ALIAS_NAME = re.compile(r"(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}")


class LambdaError(Exception):
    """An error in Lambda's shape: its type names boto3's exception class."""

    def __init__(self, status: int, error_type: str, message: str,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.extra = extra or {}


def not_found(name: str, qualifier: str = "") -> LambdaError:
    what = f"{name}:{qualifier}" if qualifier else name
    return LambdaError(404, "ResourceNotFoundException",
                       f"Function not found: {function_arn(name, qualifier or '')}"
                       if what else "Function not found")


def invalid(message: str) -> LambdaError:
    return LambdaError(400, "InvalidParameterValueException", message)


def function_arn(name: str, qualifier: str = "") -> str:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def parse_function_name(raw: str) -> tuple[str, str]:
    """(name, qualifier) from a name, `name:qualifier`, or a full or partial ARN."""
    match = _FUNCTION_NAME.fullmatch(unquote(raw))
    if match is None:
        raise invalid(f"FunctionName {raw!r} is not a function name or ARN")
    return match.group(1), match.group(2) or ""


class LambdaApi:
    """Lambda's operations over the native API's runtime, store and write lock."""

    def __init__(self, native: NativeApi) -> None:
        self.native = native
        self.runtime = native.runtime
        self.modified: dict[str, float] = {}
        self._ops: dict[str, Handler] = {
            "CreateFunction": self._create, "ListFunctions": self._list,
            "GetFunction": self._get, "DeleteFunction": self._delete,
            "GetFunctionConfiguration": self._get_configuration,
            "UpdateFunctionConfiguration": self._update_configuration,
            "UpdateFunctionCode": self._update_code, "Invoke": self._invoke,
            "PutFunctionConcurrency": self._put_concurrency,
            "GetFunctionConcurrency": self._get_concurrency,
            "DeleteFunctionConcurrency": self._delete_concurrency,
            "GetAccountSettings": self._account_settings,
            "PublishVersion": self._publish, "ListVersionsByFunction": self._list_versions,
            "CreateAlias": self._create_alias, "ListAliases": self._list_aliases,
            "GetAlias": self._get_alias, "UpdateAlias": self._update_alias,
            "DeleteAlias": self._delete_alias,
            "PutProvisionedConcurrencyConfig": self._put_provisioned,
            "GetProvisionedConcurrencyConfig": self._get_provisioned,
            "DeleteProvisionedConcurrencyConfig": self._delete_provisioned,
        }
        # Alias weights: which version serves a call (seeded: runs repeat exactly).
        self._random = random.Random(0x5EED)

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith("/20")

    @staticmethod
    def body_limit(method: bytes, path: bytes) -> int | None:
        """Deploys carry a base64 zip in JSON: the native API's deploy limit."""
        if (method == b"POST" and path.rstrip(b"/") == b"/2015-03-31/functions") or (
                method == b"PUT" and path.endswith(b"/code")):
            return -1
        return None

    async def __call__(self, req: Request) -> Response:
        try:
            for method, pattern, op in _ROUTES:
                match = pattern.fullmatch(req.path)
                if match is None:
                    continue
                if method != req.method:
                    continue
                raw = "|".join(unquote(g) for g in match.groups()) if match.groups() else ""
                return await self._ops[op](req, raw, op)
            if any(pattern.fullmatch(req.path) for _, pattern, _ in _ROUTES):
                raise LambdaError(405, "InvalidRequestContentException",
                                  f"{req.method.decode()} is not allowed on {req.path}")
            raise LambdaError(404, "ResourceNotFoundException",
                              f"no Lambda operation at {req.path}")
        except LambdaError as exc:
            return error_response(exc.status, exc.error_type, str(exc), exc.extra)
        except TooManyRequestsError as exc:
            return error_response(429, "TooManyRequestsException", str(exc),
                          {"Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"},
                          [(b"retry-after", b"1")])
        except FunctionNotFoundError as exc:
            return error_response(404, "ResourceNotFoundException", str(exc))
        except RequestTooLargeError as exc:
            return error_response(413, "RequestTooLargeException", str(exc))
        except InvalidRequestError as exc:
            return error_response(400, "InvalidParameterValueException", str(exc))
        except errors.RuntimeClosedError as exc:
            return error_response(503, "ServiceException", str(exc))
        except FastfaasError as exc:
            return error_response(500, "ServiceException", f"{exc.code}: {exc}")

    # --- functions -------------------------------------------------------------

    def _lookup(self, raw: str, qualifier: str = "") -> tuple[str, str]:
        """(name, version) of a FunctionName (and Qualifier): $LATEST, a published
        version, or an alias's version (weighted: the one that serves this call)."""
        name, in_name = parse_function_name(raw)
        qualifier = qualifier or in_name
        if name not in self.runtime.functions():
            raise not_found(name)
        if qualifier in ("", LATEST):
            return name, LATEST
        if qualifier.isdigit():
            if qualifier not in self.runtime.versions(name):
                raise not_found(name, qualifier)
            return name, qualifier
        alias = self._alias(name, qualifier)
        roll = self._random.random()
        for version, weight in alias.weights.items():
            if roll < weight:
                return name, version
            roll -= weight
        return name, alias.version

    def _alias(self, name: str, alias: str) -> StoredAlias:
        for found in self.native.store.aliases(name):
            if found.name == alias:
                return found
        raise LambdaError(404, "ResourceNotFoundException",
                          f"Alias not found: {function_arn(name, alias)}")

    def configuration(self, name: str, version: str = LATEST) -> dict[str, Any]:
        info = self.runtime.describe(name, version)
        cfg = self.runtime.config(name, version)
        digest = bytes.fromhex(info["code_sha256"])
        modified = self.modified.get(name, self.native.started)
        return {
            "FunctionName": name,
            "FunctionArn": function_arn(name, "" if version == LATEST else version),
            "Runtime": RUNTIME,
            "Role": ROLE,
            "Handler": cfg.handler,
            "CodeSize": _code_size(self.runtime, name, version),
            "Description": cfg.description,
            "Timeout": int(cfg.timeout_s),
            "MemorySize": cfg.memory_mb,
            "LastModified": datetime.fromtimestamp(modified, UTC).strftime(
                "%Y-%m-%dT%H:%M:%S.000+0000"),
            "CodeSha256": base64.b64encode(digest).decode(),
            "Version": version,
            "Environment": {"Variables": dict(cfg.env)},
            "RevisionId": f"{info['code_sha256'][:8]}-{info['state']['generation']}",
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": ["x86_64" if os.uname().machine == "x86_64" else "arm64"],
            "EphemeralStorage": {"Size": cfg.tmp_mb},
        }

    async def _create(self, req: Request, _: str, op: str) -> Response:
        body = _json_body(req)
        name = body.get("FunctionName")
        if not isinstance(name, str):
            raise invalid("FunctionName is required")
        name, qualifier = parse_function_name(name)
        if qualifier:
            raise invalid("FunctionName cannot carry a qualifier here")
        check_name(name)
        runtime = body.get("Runtime", RUNTIME)
        if not isinstance(runtime, str) or not runtime.startswith("python3"):
            raise invalid(f"Runtime {runtime!r} is not supported: fastfaas runs python3.x")
        if body.get("PackageType", "Zip") != "Zip":
            raise invalid("only PackageType Zip is supported")
        handler = body.get("Handler")
        if not isinstance(handler, str):
            raise invalid("Handler is required, as 'module.function'")
        zip_data = _zip_file(body.get("Code"))
        fields = _config_fields(body)
        async with self.native._write_lock:
            if name in self.runtime.functions():
                raise LambdaError(409, "ResourceConflictException",
                                  f"Function already exist: {name}")
            version = await self._deploy(name, zip_data, handler, fields, body)
        return Response(201, _encode(self.configuration(name, version)),
                        [(b"content-type", JSON)])

    async def _deploy(self, name: str, zip_data: bytes, handler: str, fields: dict[str, Any],
                      body: dict[str, Any]) -> str:
        """Deploy $LATEST, keep it, and publish it when asked: the version to show."""
        await self.runtime.deploy(name, zip_data, handler, **fields)
        return self._deployed(name, body)

    def _deployed(self, name: str, body: dict[str, Any]) -> str:
        self.native._save(name)
        self.modified[name] = time.time()
        return self._publish_now(name) if body.get("Publish") else LATEST

    async def _list(self, req: Request, _: str, op: str) -> Response:
        query = _query(req)
        # Sorted names: a marker deleted since the last page still says where to go on.
        page, marker = _page(sorted(self.runtime.functions()), query, ordered=True)
        every = query.get("FunctionVersion") == "ALL"  # published versions too
        out: dict[str, Any] = {"Functions": [
            self.configuration(n, v) for n in page
            for v in ([LATEST, *self.runtime.versions(n)] if every else [LATEST])]}
        if marker:
            out["NextMarker"] = marker
        return Response(200, _encode(out), [(b"content-type", JSON)])

    async def _get(self, req: Request, raw: str, op: str) -> Response:
        name, version = self._lookup(raw, _query(req).get("Qualifier", ""))
        cfg = self.runtime.config(name)
        out: dict[str, Any] = {
            "Configuration": self.configuration(name, version),
            "Code": {"RepositoryType": "fastfaas",
                     "Location": f"file://{self.runtime.describe(name)['code_sha256']}"},
        }
        if cfg.reserved_concurrency is not None:
            out["Concurrency"] = {"ReservedConcurrentExecutions": cfg.reserved_concurrency}
        return Response(200, _encode(out), [(b"content-type", JSON)])

    async def _get_configuration(self, req: Request, raw: str, op: str) -> Response:
        name, version = self._lookup(raw, _query(req).get("Qualifier", ""))
        return Response(200, _encode(self.configuration(name, version)),
                        [(b"content-type", JSON)])

    async def _delete(self, req: Request, raw: str, op: str) -> Response:
        name, qualifier = parse_function_name(raw)
        qualifier = _query(req).get("Qualifier", qualifier)
        name, _ = self._lookup(name)
        async with self.native._write_lock:
            if qualifier and qualifier != LATEST:
                if qualifier not in self.runtime.versions(name):
                    raise not_found(name, qualifier)
                users = [a.name for a in self.native.store.aliases(name)
                         if a.version == qualifier or qualifier in a.weights]
                if users:
                    raise LambdaError(409, "ResourceConflictException",
                                      f"version {qualifier} is used by alias(es)"
                                      f" {', '.join(users)}")
                await self.runtime.delete_version(name, qualifier)
                self.native.store.delete_function(name, qualifier)
                return Response(204, b"", [])
            versions = self.runtime.versions(name)
            await self.runtime.delete(name)
            for version in [LATEST, *versions]:
                self.native.store.delete_function(name, version)
            self.native.store.delete_usage(name)
            for alias in self.native.store.aliases(name):
                self.native.store.delete_alias(name, alias.name)
            self.modified.pop(name, None)
        return Response(204, b"", [])

    async def _update_configuration(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        body = _json_body(req)
        fields = _config_fields(body)
        if isinstance(body.get("Handler"), str):
            fields["handler"] = body["Handler"]
        if "Runtime" in body and not str(body["Runtime"]).startswith("python3"):
            raise invalid(f"Runtime {body['Runtime']!r} is not supported")
        async with self.native._write_lock:
            if fields:
                await self.runtime.update_config(name, **fields)
                self.native._save(name)
            self.modified[name] = time.time()
        return Response(200, _encode(self.configuration(name)), [(b"content-type", JSON)])

    async def _update_code(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        body = _json_body(req)
        zip_data = _zip_file(body)
        async with self.native._write_lock:
            # The configuration it has once the code is unpacked: a size auto_size
            # applies meanwhile holds.
            await self.runtime.update_code(name, zip_data)
            version = self._deployed(name, body)
        return Response(200, _encode(self.configuration(name, version)),
                        [(b"content-type", JSON)])

    # --- invoke ------------------------------------------------------------------

    async def _invoke(self, req: Request, raw: str, op: str) -> Response:
        name, executed = self._lookup(raw, _query(req).get("Qualifier", ""))
        kind = req.header(b"x-amz-invocation-type", b"RequestResponse")
        body = req.body or b"{}"
        version = [(b"x-amz-executed-version", executed.encode())]
        if kind in (b"Event", b"DryRun"):
            # Checks; an Event is committed (with the version an alias chose) before the 202.
            queued = self.native._invoke_other(kind, name, body, executed)
            if kind == b"Event":
                ids = [(b"x-amzn-requestid", v) for k, v in queued.headers
                       if k == b"x-fastfaas-request-id"]
                return Response(202, b"", version + ids)
            return Response(204, b"", version)
        if kind != b"RequestResponse":
            raise invalid(f"X-Amz-Invocation-Type {kind.decode(errors='replace')!r} must be"
                          " RequestResponse, Event or DryRun")
        t0 = time.perf_counter_ns()
        try:
            result = await self.runtime.invoke(name, payload=body, version=executed)
        except FastfaasError as exc:
            self.native.metrics.record(name, "none", exc.code,
                                       (time.perf_counter_ns() - t0) / 1e9)
            raise
        error = result.error
        self.native.metrics.record(name, result.start,
                                   "success" if error is None else error.kind,
                                   (time.perf_counter_ns() - t0) / 1e9)
        headers = [(b"content-type", JSON), *version,
                   (b"x-amzn-requestid", result.request_id.encode()),
                   (b"x-fastfaas-start", result.start.encode())]
        if error is not None:
            headers.append((b"x-amz-function-error", b"Unhandled"))
        if req.header(b"x-amz-log-type") == b"Tail":
            tail = result.log_tail[-LOG_TAIL:]
            headers.append((b"x-amz-log-result", base64.b64encode(tail)))
        return Response(200, result.payload, headers)

    # --- concurrency ---------------------------------------------------------------

    async def _put_concurrency(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        value = _json_body(req).get("ReservedConcurrentExecutions")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise invalid("ReservedConcurrentExecutions must be an integer >= 0")
        async with self.native._write_lock:
            await self.runtime.update_config(name, reserved_concurrency=value,
                                             max_concurrency=value)
            self.native._save(name)
        return Response(200, _encode({"ReservedConcurrentExecutions": value}),
                        [(b"content-type", JSON)])

    async def _get_concurrency(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        value = self.runtime.config(name).reserved_concurrency
        out = {} if value is None else {"ReservedConcurrentExecutions": value}
        return Response(200, _encode(out), [(b"content-type", JSON)])

    async def _delete_concurrency(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        async with self.native._write_lock:
            await self.runtime.update_config(name, reserved_concurrency=None,
                                             max_concurrency=None)
            self.native._save(name)
        return Response(204, b"", [])

    async def _account_settings(self, req: Request, _: str, op: str) -> Response:
        limits = self.runtime.limits
        names = self.runtime.functions()
        reserved = sum(self.runtime.config(n).reserved_concurrency or 0 for n in names)
        code_size = sum(_code_size(self.runtime, n) for n in names)
        return Response(200, _encode({
            "AccountLimit": {
                "TotalCodeSize": 75 * 1024**3,
                "CodeSizeUnzipped": 250 * 1024**2,
                "CodeSizeZipped": 50 * 1024**2,
                "ConcurrentExecutions": limits.limit,
                "UnreservedConcurrentExecutions": limits.limit - reserved,
            },
            "AccountUsage": {"TotalCodeSize": code_size, "FunctionCount": len(names)},
        }), [(b"content-type", JSON)])


    # --- versions and aliases --------------------------------------------------------

    def _publish_now(self, name: str) -> str:
        version = self.runtime.publish(name)
        self._save_version(name, version)
        return version

    async def _publish(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        body = _json_body(req)
        versions = self.runtime.versions(name)
        if versions:  # Lambda publishes nothing new when $LATEST did not change
            last = versions[-1]
            if (self.runtime.describe(name, last)["code_sha256"]
                    == self.runtime.describe(name)["code_sha256"]
                    and self.runtime.config(name, last)
                    == self.runtime.config(name).replace(prewarm=0)):
                return Response(201, _encode(self.configuration(name, last)),
                                [(b"content-type", JSON)])
        async with self.native._write_lock:
            version = self._publish_now(name)
        out = self.configuration(name, version)
        if isinstance(body.get("Description"), str):
            out["Description"] = body["Description"]
        return Response(201, _encode(out), [(b"content-type", JSON)])

    async def _list_versions(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        items = [LATEST, *self.runtime.versions(name)]
        page, marker = _page(items, _query(req))
        out: dict[str, Any] = {"Versions": [self.configuration(name, v) for v in page]}
        if marker:
            out["NextMarker"] = marker
        return Response(200, _encode(out), [(b"content-type", JSON)])

    def _alias_out(self, alias: StoredAlias) -> dict[str, Any]:
        out: dict[str, Any] = {
            "AliasArn": function_arn(alias.function, alias.name), "Name": alias.name,
            "FunctionVersion": alias.version, "Description": alias.description,
            "RevisionId": hashlib.sha256(msgspec.json.encode(alias)).hexdigest()[:16]}
        if alias.weights:
            out["RoutingConfig"] = {"AdditionalVersionWeights": alias.weights}
        return out

    def _checked_alias(self, name: str, alias_name: str, body: dict[str, Any],
                       old: StoredAlias | None) -> StoredAlias:
        version = body.get("FunctionVersion", old.version if old else None)
        if not isinstance(version, str) or not (version == LATEST or version.isdigit()):
            raise invalid("FunctionVersion must be $LATEST or a published version")
        if version != LATEST and version not in self.runtime.versions(name):
            raise not_found(name, version)
        weights = old.weights if old else {}
        if "RoutingConfig" in body:
            routing = body["RoutingConfig"] or {}
            weights = routing.get("AdditionalVersionWeights") or {}
            if not isinstance(weights, dict) or len(weights) > 1:
                raise invalid("RoutingConfig.AdditionalVersionWeights: one other version")
            for other, weight in weights.items():
                if other not in self.runtime.versions(name) or other == version:
                    raise invalid(f"routing to version {other!r}: it must be another"
                                  " published version")
                if not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
                    raise invalid(f"the weight of version {other} must be between 0 and 1")
            weights = {k: float(v) for k, v in weights.items()}
        description = body.get("Description", old.description if old else "")
        return StoredAlias(name, alias_name, version, weights, str(description))

    async def _create_alias(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        body = _json_body(req)
        alias_name = body.get("Name")
        if not isinstance(alias_name, str) or not _ALIAS_NAME.fullmatch(alias_name):
            raise invalid("Name must be an alias name (letters, digits, - and _; not a"
                          " number)")
        async with self.native._write_lock:
            if any(a.name == alias_name for a in self.native.store.aliases(name)):
                raise LambdaError(409, "ResourceConflictException",
                                  f"Alias already exists: {function_arn(name, alias_name)}")
            alias = self._checked_alias(name, alias_name, body, None)
            self.native.store.put_alias(alias)
        return Response(201, _encode(self._alias_out(alias)), [(b"content-type", JSON)])

    async def _get_alias(self, req: Request, raw: str, op: str) -> Response:
        fn, _, alias_name = raw.partition("|")
        name, _ = self._lookup(fn)
        return Response(200, _encode(self._alias_out(self._alias(name, alias_name))),
                        [(b"content-type", JSON)])

    async def _update_alias(self, req: Request, raw: str, op: str) -> Response:
        fn, _, alias_name = raw.partition("|")
        name, _ = self._lookup(fn)
        body = _json_body(req)
        async with self.native._write_lock:
            alias = self._checked_alias(name, alias_name, body, self._alias(name, alias_name))
            self.native.store.put_alias(alias)
        return Response(200, _encode(self._alias_out(alias)), [(b"content-type", JSON)])

    async def _delete_alias(self, req: Request, raw: str, op: str) -> Response:
        fn, _, alias_name = raw.partition("|")
        name, _ = self._lookup(fn)
        async with self.native._write_lock:
            self._alias(name, alias_name)
            self.native.store.delete_alias(name, alias_name)
        return Response(204, b"", [])

    async def _list_aliases(self, req: Request, raw: str, op: str) -> Response:
        name, _ = self._lookup(raw)
        query = _query(req)
        aliases = [a for a in self.native.store.aliases(name)
                   if not query.get("FunctionVersion")
                   or a.version == query["FunctionVersion"]]
        by_name = {a.name: a for a in aliases}
        page, marker = _page(list(by_name), query)
        out: dict[str, Any] = {"Aliases": [self._alias_out(by_name[n]) for n in page]}
        if marker:
            out["NextMarker"] = marker
        return Response(200, _encode(out), [(b"content-type", JSON)])


    # --- provisioned concurrency: `prewarm` of a version, or of an alias's version ----

    def _provisioned_target(self, req: Request, raw: str) -> tuple[str, str]:
        qualifier = _query(req).get("Qualifier", "")
        if not qualifier or qualifier == LATEST:
            raise invalid("provisioned concurrency needs a Qualifier: a published version"
                          " or an alias (not $LATEST)")
        name, _ = self._lookup(raw)
        version = qualifier if qualifier.isdigit() else self._alias(name, qualifier).version
        if version == LATEST:
            raise invalid(f"alias {qualifier!r} points at $LATEST: provisioned concurrency"
                          " needs a published version")
        if version not in self.runtime.versions(name):
            raise not_found(name, version)
        return name, version

    def _provisioned_out(self, name: str, version: str) -> dict[str, Any]:
        requested = self.runtime.config(name, version).prewarm
        state = self.runtime.describe(name, version)["state"]["instances"]
        ready = min(requested, state.get("spare", 0) + state.get("warm", 0)
                    + state.get("busy", 0))
        return {"RequestedProvisionedConcurrentExecutions": requested,
                "AvailableProvisionedConcurrentExecutions": ready,
                "AllocatedProvisionedConcurrentExecutions": ready,
                "Status": "READY" if ready >= requested else "IN_PROGRESS",
                "LastModified": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")}

    def _save_version(self, name: str, version: str) -> None:
        self.native.store.put_function(StoredFunction(
            name, version, self.runtime.config(name, version),
            self.runtime.describe(name, version)["code_sha256"]))

    async def _put_provisioned(self, req: Request, raw: str, op: str) -> Response:
        name, version = self._provisioned_target(req, raw)
        count = _json_body(req).get("ProvisionedConcurrentExecutions")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise invalid("ProvisionedConcurrentExecutions must be an integer >= 1")
        async with self.native._write_lock:
            self.runtime.set_prewarm(name, version, count)
            self._save_version(name, version)
        return Response(202, _encode(self._provisioned_out(name, version)),
                        [(b"content-type", JSON)])

    async def _get_provisioned(self, req: Request, raw: str, op: str) -> Response:
        name, version = self._provisioned_target(req, raw)
        if not self.runtime.config(name, version).prewarm:
            raise LambdaError(404, "ProvisionedConcurrencyConfigNotFoundException",
                              f"No Provisioned Concurrency Config found for this function:"
                              f" {function_arn(name, version)}")
        return Response(200, _encode(self._provisioned_out(name, version)),
                        [(b"content-type", JSON)])

    async def _delete_provisioned(self, req: Request, raw: str, op: str) -> Response:
        name, version = self._provisioned_target(req, raw)
        async with self.native._write_lock:
            self.runtime.set_prewarm(name, version, 0)
            self._save_version(name, version)
        return Response(204, b"", [])


# --- helpers -------------------------------------------------------------------------


def _query(req: Request) -> dict[str, str]:
    return dict(parse_qsl(req.query.decode("latin-1")))


def _page(items: list[str], query: dict[str, str],
          ordered: bool = False) -> tuple[list[str], str]:
    """A page of `items` after the Marker (an item; with `ordered`, sorted items, any
    string), MaxItems long; and the next marker ("" after the last page)."""
    try:
        limit = int(query.get("MaxItems", MAX_ITEMS))
    except ValueError:
        raise invalid("MaxItems must be an integer") from None
    if not 1 <= limit <= 10000:
        raise invalid("MaxItems must be between 1 and 10000")
    marker = query.get("Marker")
    if marker and ordered:
        items = [i for i in items if i > marker]
    elif marker:
        items = items[items.index(marker) + 1:] if marker in items else []
    page = items[:limit]
    return page, page[-1] if len(items) > limit else ""


def error_response(status: int, error_type: str, message: str, extra: dict[str, Any] | None = None,
           headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = {"Type": "User" if status < 500 else "Service", "message": message,
            **(extra or {})}
    return Response(status, _encode(body), [
        (b"content-type", JSON), (b"x-amzn-errortype", error_type.encode()),
        *(headers or [])])


def _json_body(req: Request) -> dict[str, Any]:
    if not req.body:
        return {}
    try:
        value = msgspec.json.decode(req.body)
    except ValueError as exc:
        raise LambdaError(400, "InvalidRequestContentException",
                          f"the request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise LambdaError(400, "InvalidRequestContentException",
                          "the request body must be a JSON object")
    return value


def _zip_file(code: Any) -> bytes:
    if not isinstance(code, dict) or not isinstance(code.get("ZipFile"), str):
        raise invalid("Code.ZipFile (the zip, base64-encoded) is required: fastfaas takes no"
                      " S3 locations or images")
    try:
        data = base64.b64decode(code["ZipFile"], validate=True)
    except ValueError as exc:
        raise invalid(f"ZipFile is not valid base64: {exc}") from None
    if not data:
        raise invalid("ZipFile is empty")
    return data


def _config_fields(body: dict[str, Any]) -> dict[str, Any]:
    """Lambda's configuration members as fastfaas's field names (validated by the Runtime)."""
    fields: dict[str, Any] = {}
    if "MemorySize" in body:
        fields["memory_mb"] = body["MemorySize"]
    if "Timeout" in body:
        fields["timeout_s"] = body["Timeout"]
    if "Description" in body:
        fields["description"] = body["Description"]
    if "Environment" in body:
        env = body["Environment"] or {}
        variables = env.get("Variables", {}) if isinstance(env, dict) else None
        if not isinstance(variables, dict) or not all(
                isinstance(v, str) for v in variables.values()):
            raise invalid("Environment.Variables must map names to strings")
        fields["env"] = variables
    if "EphemeralStorage" in body:
        size = (body["EphemeralStorage"] or {}).get("Size")
        if not isinstance(size, int):
            raise invalid("EphemeralStorage.Size must be an integer (MB)")
        fields["tmp_mb"] = size
    return fields


_code_sizes: dict[str, int] = {}


def _code_size(runtime: Any, name: str, version: str = LATEST) -> int:
    """The unpacked bundle's bytes (once per code hash)."""
    sha = runtime.describe(name, version)["code_sha256"]
    if sha in _code_sizes:
        return _code_sizes[sha]
    directory = runtime.data_dir / "code" / sha
    total = 0
    for top, _dirs, files in os.walk(directory):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, f)).st_size
    _code_sizes[sha] = total
    return total


