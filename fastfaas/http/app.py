"""`fastfaas serve`: Runtime + registry + poller + HTTP front end in one trio process."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import ipaddress
import shutil
import signal
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import trio

from fastfaas.errors import FastfaasError, IsolationError
from fastfaas.events.poller import Poller
from fastfaas.http.native import NativeApi
from fastfaas.http.server import HttpServer, Limits
from fastfaas.runtime import sizing
from fastfaas.runtime.runtime import LATEST, Runtime
from fastfaas.runtime.store import Store


class ServeOptions(msgspec.Struct, kw_only=True):
    """What `fastfaas serve` takes; the CLI flags are these names in kebab-case."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".fastfaas")
    examples: Path | None = None
    token: str | None = None
    max_body_mb: float = 6.0
    graceful_timeout_s: float = 30.0
    cgroups: str = "auto"
    isolation: str | None = None
    sandbox_uid: int = 65534
    sandbox_expose: tuple[str, ...] = ()
    allow_weaker_isolation: bool = False
    aws_credentials: tuple[tuple[str, str], ...] = ()  # the Lambda API's (key id, secret)
    warm_pool_size: int = 2
    async_concurrency: int = 32
    concurrency_limit: int = 1000
    warm_pool_max: int = 8
    affinity_wait_s: float = 1.0
    memory_budget_mb: int | None = None
    auto_size_after: int = sizing.AUTO_AFTER
    allow_source_builds: bool = False
    pip_args: Sequence[str] = ()
    limits: Limits = Limits()
    function_cpus: frozenset[int] | None = None  # (the CLI's --server-cpus: the rest)
    function_sched: str = "batch"  # Runtime(function_sched=...)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ConfigurationError(Exception):
    """The server cannot start as configured (said to the user, exit status 2)."""


async def serve(opts: ServeOptions, *, stop: trio.Event | None = None,
                task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set), then stop gracefully.

    Graceful: stop accepting, let requests and queued invocations in flight
    finish for up to `graceful_timeout_s`, stop every zygote and instance,
    remove the cgroups. `task_status.started` gets the bound port.

    Raises:
        ConfigurationError: a non-loopback host without a token, and the like.
    """
    if not is_loopback(opts.host) and not opts.token:
        raise ConfigurationError(
            f"refusing to listen on {opts.host}: off loopback every request must carry a"
            " token; pass --token (or set FASTFAAS_TOKEN)")
    if opts.max_body_mb <= 0:
        raise ConfigurationError("--max-body-mb must be > 0")
    data_dir = opts.data_dir.resolve()
    lock = _lock_data_dir(data_dir)
    try:
        # Bind first: a busy port fails at once, before any process is started.
        listeners = await trio.open_tcp_listeners(opts.port, host=opts.host)
        try:
            with contextlib.ExitStack() as stack:
                signals = None if stop is not None else stack.enter_context(
                    trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
                stopping = stop if stop is not None else trio.Event()
                hurry = trio.Event()
                async with trio.open_nursery() as outer:
                    if signals is not None:
                        outer.start_soon(_on_signals, signals, stopping, hurry)
                    await _serve(opts, data_dir, listeners, stopping, hurry, task_status)
                    outer.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()  # closed after serving already; not if start failed
    finally:
        lock.close()
    print("fastfaas: stopped", file=sys.stderr, flush=True)


async def _serve(opts: ServeOptions, data_dir: Path, listeners: list[trio.SocketListener],
                 stopping: trio.Event, hurry: trio.Event,
                 task_status: trio.TaskStatus[int]) -> None:
    port = listeners[0].socket.getsockname()[1]
    _remove_leftovers(data_dir)
    try:
        store = Store(data_dir / "fastfaas.db")
    except Exception as exc:
        raise ConfigurationError(f"cannot open {data_dir / 'fastfaas.db'}: {exc}") from exc
    kept: list[Runtime] = []
    try:
        async with Runtime(data_dir, cgroups=opts.cgroups, warm_pool_size=opts.warm_pool_size,
                           allow_source_builds=opts.allow_source_builds,
                           pip_args=opts.pip_args,
                           concurrency_limit=opts.concurrency_limit,
                           warm_pool_max=max(opts.warm_pool_max, opts.warm_pool_size),
                           affinity_wait_s=opts.affinity_wait_s,
                           memory_budget_mb=opts.memory_budget_mb,
                           auto_size_after=opts.auto_size_after,
                           isolation=opts.isolation, sandbox_uid=opts.sandbox_uid,
                           sandbox_gid=opts.sandbox_uid,
                           sandbox_expose=opts.sandbox_expose,
                           allow_weaker_isolation=opts.allow_weaker_isolation,
                           function_cpus=opts.function_cpus,
                           function_sched=opts.function_sched) as rt, \
                trio.open_nursery() as nursery:
            # Starting (restoring, deploying examples with pip) stops at a signal too.
            with trio.CancelScope() as starting:
                nursery.start_soon(_cancel_when, stopping, starting, rt)
                restored = _restore(rt, store)
                if opts.examples is not None:
                    await _deploy_examples(rt, store, opts.examples)
            if stopping.is_set():
                nursery.cancel_scope.cancel()
                return
            # What start-up made (modules, restored functions) lives as long as the
            # server: out of the cyclic collector's way, so that a full collection walks
            # only what requests made (it holds up every request while it runs).
            gc.collect()
            gc.freeze()
            poller = Poller(store, rt, concurrency=opts.async_concurrency)
            api = NativeApi(rt, store, poller.wake, token=opts.token,
                            aws_credentials=dict(opts.aws_credentials),
                            loopback=is_loopback(opts.host),
                            max_body=int(opts.max_body_mb * 1024 * 1024))
            poller.on_result = api.record_async
            http = HttpServer(api, api.body_limit, opts.limits, fast=api.lane.start,
                              take=api.lane.take)
            await nursery.start(poller.run)
            nursery.start_soon(_keep_usage, rt, store)
            rt.on_size_change = functools.partial(_keep_size, rt, store, api)
            http_done = trio.Event()

            async def run_http() -> None:
                try:
                    await http.serve(listeners)
                finally:
                    http_done.set()

            nursery.start_soon(run_http)
            print(f"fastfaas: listening on http://{_url_host(opts.host)}:{port}"
                  f" ({rt.statistics()['cgroups']['reason']}; isolation {rt.isolation};"
                  f" {restored} function(s) restored)", flush=True)
            if "hello" in rt.functions():
                _print_try_lines(opts, port)
            task_status.started(port)
            await stopping.wait()
            print("fastfaas: stopping: finishing requests in flight (a second signal stops"
                  " at once)", file=sys.stderr, flush=True)
            http.close()
            poller.stop_taking()
            with trio.move_on_after(opts.graceful_timeout_s) as grace:
                nursery.start_soon(_cancel_when, hurry, grace, None)
                await http_done.wait()
                await poller.wait_idle()
            rt.requirements.kill_all()  # a deploy still installing must not hold the stop
            nursery.cancel_scope.cancel()
            kept.append(rt)
    except IsolationError as exc:  # from the Runtime's start: nothing is serving yet
        raise ConfigurationError(str(exc)) from None
    finally:
        # What the last interval recorded, once the flushing task (and its thread) is done.
        for rt in kept:
            try:
                store.add_usage(rt.take_usage())
            except Exception as exc:  # the stop goes on; the samples are only lost
                print(f"fastfaas: could not keep the last usage samples: {exc}",
                      file=sys.stderr)
        store.close()


async def _on_signals(signals: Any, stopping: trio.Event, hurry: trio.Event) -> None:
    async for _ in signals:
        if stopping.is_set():
            print("fastfaas: stopping now", file=sys.stderr, flush=True)
            hurry.set()
        stopping.set()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope, rt: Runtime | None) -> None:
    await event.wait()
    scope.cancel()
    if rt is not None:
        rt.requirements.kill_all()


def _lock_data_dir(data_dir: Path) -> Any:
    """One server per data directory: a second one would run the same queue twice."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / "lock", "a+")  # noqa: SIM115 (held until the server stops)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ConfigurationError(
            f"another fastfaas server is using {data_dir}: stop it or pick another"
            " --data-dir") from None
    return f


def _remove_leftovers(data_dir: Path) -> None:
    """Half-unpacked bundles and half-done pip installs of a server that was killed."""
    for pattern in ("code/.unpack-*", "deps/.pip-*"):
        for path in data_dir.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)


USAGE_FLUSH_S = 5.0  # how often the usage samples of invocations go to SQLite


def _keep_size(rt: Runtime, store: Store, api: NativeApi, name: str,
               change: sizing.SizeChange) -> None:
    """A size auto_size applied: into the registry at once (the function's configuration
    and the change), as a PATCH would be, and the Lambda API's LastModified with it."""
    from fastfaas.runtime.store import StoredFunction

    info = rt.describe(name)
    store.put_function(StoredFunction(name, LATEST, rt.config(name), info["code_sha256"]))
    store.add_size_change(name, change)
    api.lambda_api.modified[name] = change.time


async def _keep_usage(rt: Runtime, store: Store) -> None:
    """Usage samples into the registry, in batches, off the request path (a thread)."""
    rt.take_usage()  # from now on
    while True:
        await trio.sleep(USAGE_FLUSH_S)
        rows = rt.take_usage()
        if rows:
            try:
                await trio.to_thread.run_sync(store.add_usage, rows)
            except sqlite3.Error as exc:  # a full disk...: these samples are lost, no more
                rt._background_error("cannot keep usage samples", exc)


def _restore(rt: Runtime, store: Store) -> int:
    count = 0
    for fn in store.functions():  # $LATEST sorts before the published versions
        try:
            if fn.version == LATEST:
                rt.restore(fn.name, fn.config, fn.code_sha256)
                count += 1
            else:
                rt.restore_version(fn.name, fn.version, fn.config, fn.code_sha256)
            rt.load_usage(fn.name, fn.version,
                          store.usage(fn.name, fn.version, sizing.UsageSample))
            if fn.version == LATEST:
                rt.load_size_changes(fn.name, store.size_changes(fn.name, sizing.SizeChange))
        except FastfaasError as exc:
            print(f"fastfaas: could not restore function {fn.name!r}: {exc}", file=sys.stderr)
    return count


async def _deploy_examples(rt: Runtime, store: Store, examples: Path) -> None:
    from fastfaas.runtime.store import StoredFunction

    if not examples.is_dir():
        print(f"fastfaas: no examples directory at {examples}", file=sys.stderr)
        return
    for d in sorted(p for p in examples.iterdir() if p.is_dir()):
        settings: dict[str, Any] = {"handler": "app.handler"}
        config_file = d / "fastfaas.json"
        try:
            if config_file.exists():
                settings.update(msgspec.json.decode(config_file.read_bytes()))
            handler = settings.pop("handler")
            info = await rt.deploy(d.name, d, handler, **settings)
        except (FastfaasError, msgspec.DecodeError, OSError) as exc:
            print(f"fastfaas: example {d.name} not deployed: {exc}", file=sys.stderr)
            continue
        store.put_function(StoredFunction(d.name, info["version"], rt.config(d.name),
                                          info["code_sha256"]))
        print(f"fastfaas: deployed example {d.name}", file=sys.stderr)


def _print_try_lines(opts: ServeOptions, port: int) -> None:
    url = f"http://{_url_host(opts.host)}:{port}"
    event = """'{"name": "you"}'"""
    auth = ' -H "Authorization: Bearer $FASTFAAS_TOKEN"' if opts.token else ""
    flags = "" if url == "http://127.0.0.1:8080" else f" --url {url}"
    flags += " --token $FASTFAAS_TOKEN" if opts.token else ""
    print(f"try:\n  curl -s -X POST{auth} {url}/v1/functions/hello/invoke -d {event}\n"
          f"  .venv/bin/fastfaas invoke hello {event}{flags}", flush=True)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
