"""Type stub for fastfaas._lane (csrc/_lane.pyx)."""

from collections.abc import Callable
from typing import Any

def encode_invoke(request_id: str, payload: bytes, deadline: float) -> bytes: ...
def ok_response(request_id: bytes, instance_id: bytes, duration_us: int, server_us: int,
                body: bytes) -> bytes: ...

class WarmLane:
    def __init__(self, api: Any, *, fast_invoke: type, decode_result: Callable[[bytes], Any],
                 compare: Callable[[bytes, bytes], bool],
                 stats: Callable[[], Any], parse: Callable[..., Any],
                 metrics_buckets: tuple[float, ...], max_payload: int, inline_max: int,
                 receive_bytes: int, max_headers: int,
                 fast_body_max: int) -> None: ...
    def start(self, req: Any) -> Any: ...
    def take(self, fd: int, max_head: int) -> Any: ...

class LaneCall:
    fd: int
    owner: object
    waits_first: bool
    def step(self) -> Any: ...
    def abandon(self) -> None: ...
