"""A blocking facade over Runtime for programs that are not trio programs.

    with fastfaas.BlockingRuntime(data_dir="./.fastfaas") as rt:
        rt.deploy("hello", source="./hello", handler="app.handler")
        print(rt.invoke("hello", {"name": "world"}).value())

The Runtime runs in its own thread under trio.run; every method is safe to
call from any other thread (a Flask or Django worker, a script).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import trio

from fastfaas.runtime.results import InvocationResult
from fastfaas.runtime.runtime import LATEST, Runtime

T = TypeVar("T")


class BlockingRuntime:
    """Runtime's API as plain blocking calls; same arguments as Runtime."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args
        self._kwargs = kwargs
        self._runtime: Runtime | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BlockingRuntime:
        self._thread = threading.Thread(target=self._main, name="fastfaas-runtime", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stop every process and remove every cgroup; waits until done."""
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None:
            stop = self._stop
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=self._token)
        self._thread.join()
        self._thread = None
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the caller of __enter__ or close
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with Runtime(*self._args, **self._kwargs) as rt:
            self._runtime = rt
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        if self._token is None or self._runtime is None:
            raise RuntimeError("use BlockingRuntime inside `with BlockingRuntime(...) as rt:`")

        async def call() -> T:
            return await fn(*args, **kwargs)

        return trio.from_thread.run(call, trio_token=self._token)

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError("the BlockingRuntime is not running")
        return self._runtime

    def deploy(self, name: str, source: Any, handler: str, **config: Any) -> dict[str, Any]:
        return self._call(self.runtime.deploy, name, source, handler, **config)

    def update_config(self, name: str, **changes: Any) -> dict[str, Any]:
        return self._call(self.runtime.update_config, name, **changes)

    def delete(self, name: str) -> None:
        self._call(self.runtime.delete, name)

    def invoke(self, name: str, event: Any = None, *, payload: bytes | None = None,
               version: str = LATEST) -> InvocationResult:
        return self._call(self.runtime.invoke, name, event, payload=payload, version=version)

    def describe(self, name: str) -> dict[str, Any]:
        return self._call(self._sync, self.runtime.describe, name)

    def statistics(self) -> dict[str, Any]:
        return self._call(self._sync, self.runtime.statistics)

    @staticmethod
    async def _sync(fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)
