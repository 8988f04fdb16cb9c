"""Function configuration: one set of names everywhere (see DESIGN.md)."""

from __future__ import annotations

import os
import re
from typing import Any, Final

import msgspec

from fastfaas.errors import InvalidRequestError

NAME_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
HANDLER_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")
ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV: Final = ("AWS_LAMBDA_", "LAMBDA_TASK_ROOT", "_HANDLER")
ISOLATION_LEVELS: Final = ("none", "standard", "strict")
# What functions see as their region (AWS_REGION, ARNs), from the server's environment.
REGION: Final = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
# What changes which zygote serves a function (code, handler, env, memory...).
ZYGOTE_FIELDS: Final = ("handler", "memory_mb", "timeout_s", "env", "isolation", "network",
                        "tmp_mb")


class FunctionConfig(msgspec.Struct, kw_only=True, frozen=True):
    """A function's configuration. Construct with `FunctionConfig.create(...)` to validate."""

    handler: str
    memory_mb: int = 128
    timeout_s: float = 3
    env: dict[str, str] = {}
    description: str = ""
    reserved_concurrency: int | None = None
    max_concurrency: int | None = None
    prewarm: int = 0
    idle_timeout_s: float = 60
    zygote_idle_timeout_s: float = 300
    init_timeout_s: float = 10
    isolation: str | None = None
    network: bool = False
    tmp_mb: int = 512
    auto_size: bool = False
    escalate_on_oom: bool = False
    min_memory_mb: int | None = None
    max_memory_mb: int | None = None

    @classmethod
    def create(cls, **fields: Any) -> FunctionConfig:
        """Validate and build; raises InvalidRequestError naming the field and the rule."""
        try:
            cfg = msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidRequestError(f"invalid function configuration: {exc}") from None
        cfg.validate()
        return cfg

    def replace(self, **changes: Any) -> FunctionConfig:
        fields = msgspec.structs.asdict(self)
        fields.update(changes)
        return FunctionConfig.create(**fields)

    def validate(self) -> None:
        def bad(msg: str) -> InvalidRequestError:
            return InvalidRequestError(f"invalid function configuration: {msg}")

        if not HANDLER_RE.fullmatch(self.handler):
            raise bad(f"handler {self.handler!r} must look like 'module.function'")
        if not 128 <= self.memory_mb <= 10240:
            raise bad(f"memory_mb {self.memory_mb} must be between 128 and 10240")
        if not 1 <= self.timeout_s <= 900:
            raise bad(f"timeout_s {self.timeout_s} must be between 1 and 900")
        if not 0 < self.init_timeout_s <= 900:
            raise bad(f"init_timeout_s {self.init_timeout_s} must be in (0, 900]")
        if not (self.idle_timeout_s > 0 and self.zygote_idle_timeout_s > 0):  # NaN too
            raise bad("idle_timeout_s and zygote_idle_timeout_s must be > 0")
        if self.prewarm < 0:
            raise bad(f"prewarm {self.prewarm} must be >= 0")
        for name in ("reserved_concurrency", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise bad(f"{name} {value} must be >= 0")
        if self.isolation is not None and self.isolation not in ISOLATION_LEVELS:
            raise bad(f"isolation {self.isolation!r} must be one of {', '.join(ISOLATION_LEVELS)}")
        if self.network and self.isolation not in (None, "strict"):
            raise bad(f"network applies to the strict level only (isolation {self.isolation!r}"
                      " has the host's network)")
        if not 1 <= self.tmp_mb <= 10240:
            raise bad(f"tmp_mb {self.tmp_mb} must be between 1 and 10240")
        for key, value in self.env.items():
            if not ENV_KEY_RE.fullmatch(key):
                raise bad(f"env name {key!r} is not a valid environment variable name")
            if key.startswith(RESERVED_ENV):
                raise bad(f"env name {key!r} is reserved by the runtime")
            if "\0" in value:
                raise bad(f"env value of {key!r} contains a NUL byte")
        for name in ("min_memory_mb", "max_memory_mb"):
            value = getattr(self, name)
            if value is not None and not 128 <= value <= 10240:
                raise bad(f"{name} {value} must be between 128 and 10240")
        if (self.min_memory_mb is not None and self.max_memory_mb is not None
                and self.min_memory_mb > self.max_memory_mb):
            raise bad(f"min_memory_mb {self.min_memory_mb} is above max_memory_mb"
                      f" {self.max_memory_mb}")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InvalidRequestError(
            f"function name {name!r} must be 1-64 letters, digits, hyphens or underscores"
        )
    return name
