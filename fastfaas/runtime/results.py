"""What an invocation returns."""

from __future__ import annotations

from typing import Any

import msgspec

START_KINDS = ("warm", "prewarmed", "forked", "claimed", "cold")


class Usage(msgspec.Struct, frozen=True):
    max_memory_bytes: int
    cpu_us: int
    throttled_us: int = 0  # time the CPU quota held the call back


class FunctionError(msgspec.Struct, frozen=True):
    """The function failed. `kind` is one of fastfaas.errors.FUNCTION_ERROR_KINDS."""

    kind: str
    error_type: str
    error_message: str
    stack_trace: list[str] = []


class InvocationResult(msgspec.Struct, frozen=True):
    """One invocation's outcome.

    `payload` is JSON: the handler's result, or for an error the Lambda-shaped
    `{errorType, errorMessage, stackTrace}` body. `start` is how the instance
    was found: warm, prewarmed, forked, claimed or cold.
    """

    payload: bytes
    error: FunctionError | None
    start: str
    instance_id: str
    request_id: str
    duration_us: int
    usage: Usage
    log_tail: bytes = b""
    # With a route key: "hit" (the key's instance served it), "fallback" (it
    # was busy past the wait, or gone: another served it), "miss" (a new key).
    affinity: str = ""
    # "queued": a new instance of an infrequent function, started through the
    # shared queue of starts; "direct" otherwise.
    route: str = "direct"
    # escalate_on_oom: the memory_mb of the instance that ran it again, after an
    # OutOfMemory at the configured size; 0 when it was not escalated.
    escalated_mb: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    def value(self) -> Any:
        """The payload decoded from JSON."""
        return msgspec.json.decode(self.payload)
