"""Exceptions and the kinds of function error.

Platform errors (something about the request or the platform) are raised as
exceptions. Function errors (the function's own failure) are not exceptions:
they come back in `InvocationResult.error`, as Lambda reports them.

This module imports only the standard library: zygotes import it.
"""

from __future__ import annotations

import sys
from typing import Final

# The kinds of function error, reported as X-Fastfaas-Function-Error.
UNHANDLED: Final = "Unhandled"
TIMEOUT: Final = "Timeout"
OUT_OF_MEMORY: Final = "OutOfMemory"
CRASHED: Final = "Crashed"
INIT_ERROR: Final = "InitError"
RESULT_TOO_LARGE: Final = "ResultTooLarge"
FUNCTION_ERROR_KINDS: Final = (
    UNHANDLED,
    TIMEOUT,
    OUT_OF_MEMORY,
    CRASHED,
    INIT_ERROR,
    RESULT_TOO_LARGE,
)


class FastfaasError(Exception):
    """Base of fastfaas's platform errors. `code` names the kind for HTTP and CLI."""

    code = "InternalError"


class InvalidRequestError(FastfaasError, ValueError):
    """The request is malformed: bad configuration, bad event, bad code bundle."""

    code = "InvalidRequest"


class FunctionNotFoundError(FastfaasError, LookupError):
    """No function with that name (or version) is deployed."""

    code = "FunctionNotFound"


class RequestTooLargeError(FastfaasError, ValueError):
    """The event is larger than the 6 MB limit."""

    code = "RequestTooLarge"


class TooManyRequestsError(FastfaasError, RuntimeError):
    """A concurrency limit refused the invocation (HTTP 429 with Retry-After): the
    function's max_concurrency or reserved_concurrency, or the server's limit."""

    code = "TooManyRequests"


class RuntimeClosedError(FastfaasError, RuntimeError):
    """The Runtime is not running (not entered yet, or shutting down)."""

    code = "ServiceUnavailable"


class ZygoteError(FastfaasError, RuntimeError):
    """A zygote failed in a way that is the platform's fault, not the function's."""

    code = "ServiceError"


class IsolationError(FastfaasError, RuntimeError):
    """The isolation level asked for is not available on this machine."""

    code = "IsolationUnavailable"


class CgroupError(FastfaasError, OSError):
    """A cgroup could not be created, sized or removed."""

    code = "CgroupError"


class SpawnError(OSError):
    """Forking an instance failed; `step` names the step of the spawn that failed."""

    def __init__(self, errno: int | None, message: str | None, step: str) -> None:
        super().__init__(errno, message)
        self.step = step

    def __reduce__(self) -> tuple[type[SpawnError], tuple[int | None, str | None, str]]:
        return (type(self), (self.errno, self.strerror, self.step))


class SaidOnce:
    """Failures a long-running task survives and goes on from: each kind is
    told once on stderr (`fastfaas: WHAT: EXC (said once; GOING_ON)`), every
    one is counted (`count`)."""

    def __init__(self, going_on: str) -> None:
        self.going_on = going_on
        self.count = 0
        self._said: set[str] = set()

    def __call__(self, what: str, exc: BaseException) -> None:
        self.count += 1
        if what not in self._said:
            self._said.add(what)
            print(f"fastfaas: {what}: {exc} (said once; {self.going_on})", file=sys.stderr,
                  flush=True)
