"""fastfaas: run Python functions on demand, each execution in its own process
forked from a zygote that already imported the function's code.

The public names are loaded lazily (PEP 562) so that zygotes, which import
`fastfaas.worker`, never pull in trio or the server.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if not sys.platform.startswith("linux"):  # pragma: no cover
    raise ImportError(f"fastfaas runs on Linux only (this is {sys.platform!r})")

__version__ = "0.1.0"

_LAZY = {
    "Runtime": "fastfaas.runtime.runtime",
    "BlockingRuntime": "fastfaas.runtime.blocking",
    "InvocationResult": "fastfaas.runtime.results",
    "FunctionError": "fastfaas.runtime.results",
    "Usage": "fastfaas.runtime.results",
    "FunctionConfig": "fastfaas.config",
    "errors": "fastfaas.errors",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:
    from fastfaas import errors
    from fastfaas.config import FunctionConfig
    from fastfaas.runtime.blocking import BlockingRuntime
    from fastfaas.runtime.results import FunctionError, InvocationResult, Usage
    from fastfaas.runtime.runtime import Runtime


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'fastfaas' has no attribute {name!r}") from None
    mod = importlib.import_module(module)
    value = mod if name == "errors" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
