"""The embeddable Runtime: deploy functions and invoke them, no HTTP needed.

    async with fastfaas.Runtime(data_dir="./.fastfaas") as rt:
        await rt.deploy("hello", source="./hello", handler="app.handler")
        result = await rt.invoke("hello", {"name": "world"})

Each invocation runs in an instance forked from a zygote that already
imported the function's code; the capacity cascade (warm, prewarmed, forked,
claimed, cold) is reported with every result.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import itertools
import math
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple

import msgspec
import trio

from fastfaas import _native, errors, wire
from fastfaas.config import (
    ISOLATION_LEVELS,
    REGION,
    ZYGOTE_FIELDS,
    FunctionConfig,
    check_name,
)
from fastfaas.errors import (
    CgroupError,
    FastfaasError,
    FunctionNotFoundError,
    InvalidRequestError,
    RequestTooLargeError,
    RuntimeClosedError,
    SaidOnce,
    TooManyRequestsError,
    ZygoteError,
)
from fastfaas.runtime import code as code_bundles
from fastfaas.runtime import policy, sizing
from fastfaas.runtime.cgroups import Cgroups, CgroupSet
from fastfaas.runtime.channel import AsyncChannel
from fastfaas.runtime.policy import Deadline
from fastfaas.runtime.results import FunctionError, InvocationResult, Usage
from fastfaas.runtime.supervisor import (
    InstanceHandle,
    Process,
    Template,
    ZygoteHandle,
    describe_status,
)
from fastfaas.worker.template import EXIT_BOOT_FAILED

LATEST = "$LATEST"
EXIT_STATUS_WAIT_S = 2.0
WARMUP_TIMEOUT_S = 10.0
MIN_TIMEOUT_S = 1.0  # the smallest timeout_s
MAX_ROUTE_KEYS = 100_000  # affinity keys remembered per function version
INFREQUENT_IDLE_S = 10.0  # idle instances of infrequent functions are reaped sooner
MEMORY_MEASURE_S = 0.5
MEMORY_MEASURE_SLOW_S = 2.0  # with more than 200 processes
MEASURE_BATCH = 64  # reads between two checkpoints (without cgroups)
# Idle instances reaped per look of the reaper, at most, and stopped one at a time,
# spread over the time to the next look: 16 killed at once, and their 16 cgroups
# cleaned in 16 threads, stalled the requests for tens of ms (the threads held the
# interpreter and the dying processes the CPUs); p99 of the Zipf benchmark rose from
# 4 to 37 ms while the 2,700 instances of its warm-up expired.
REAP_PER_TICK = 16
MAX_ERROR_TYPE = 256  # what the server keeps of an error's type and message, whatever
MAX_ERROR_MESSAGE = 4096  # an instance or zygote sends
SANDBOX_ID = 65534  # strict: the uid and gid (outside its user namespace) of function code
SPARES_MAX = 16  # policy.SpareSizer's default cap
INSTANCE_ESTIMATE = 16 * 1024 * 1024  # an instance's size before one was measured
ZYGOTE_ESTIMATE = 32 * 1024 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SIZE_CHANGES_KEPT = 20  # auto_size changes shown per function
CGROUP_POOL_RETRY_S = 1.0  # after the pool could not make a cgroup
FDS_PER_INSTANCE = 7  # in the server: socket, pidfd, 4 cgroup files, and a margin
FDS_RESERVED = 2048  # connections, zygotes, the template, SQLite, pip...
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


# Retries of an invocation whose event reached no handler (each retires what it found
# dead: a template's death leaves warm instances, spares, the function's zygote and
# the pooled generic ones to be found so, one by one).
RETRIES: Final = 8
# Runtime(function_sched=...): the scheduling policies of the template, zygotes and instances.
FUNCTION_SCHED: Final = ("normal", "batch")


class FunctionVersion:
    """One deployment of one function version: its zygote and its instances."""

    def __init__(self, name: str, version: str, config: FunctionConfig, code_dir: Path,
                 code_sha256: str, slot: int, generation: int,
                 frequency_window_s: float = 10.0) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.code_dir = code_dir
        self.code_sha256 = code_sha256
        self.slot = slot
        self.generation = generation
        self.zygote: ZygoteHandle | None = None
        self.claiming: trio.Event | None = None
        self.claim_error: FunctionError | None = None
        self.instances: dict[int, InstanceHandle] = {}
        self.last_used = trio.current_time()
        self.in_flight = 0
        self.spawning_spares = 0
        self.spare_task = False
        self.throttled = 0
        self.sizer = policy.SpareSizer()
        # A just-deployed function is frequent (a call is likely soon) until a quiet window.
        self.freq = policy.FrequencyClass(frequency_window_s, frequent=True,
                                          since=trio.current_time())
        self.instance_memory = INSTANCE_ESTIMATE  # the largest instance last measured
        self.routes: dict[str, InstanceHandle] = {}  # affinity: key -> the instance that served it
        self.retired = False
        self.slot_released = False
        self.init_log = b""
        self.usage = sizing.history()  # per invocation: peak memory, CPU, duration, outcome
        self.auto_count = 0  # invocations at its size since auto_size last looked
        # Its last handler on a warm instance ran within the server's spin window:
        # the server polls for the next reply instead of sleeping at once (a longer
        # one would be polled for in vain, taking a CPU the instances need), and a
        # taken spare is replaced once the call that took it has its answer (once
        # `quick_measured`: a function whose first calls take new instances, as a
        # burst's do, gets their spares replaced at once, not 50 ms later).
        self.quick = True
        self.quick_measured = False  # a warm call has run: `quick` comes from it
        self.recommended: tuple[Any, sizing.Recommendation] | None = None  # (key, cached)
        self.isolation = "none"  # set by the Runtime: the level in force
        self.cgrouped = False
        self.sandbox: wire.Sandbox | None = None  # strict: its zygote's namespaces

    def __repr__(self) -> str:
        return f"<FunctionVersion {self.name}:{self.version} gen {self.generation}>"


class Runtime:
    """fastfaas's core, embeddable in any trio program.

    Args:
        data_dir: where code bundles are unpacked (`code/<sha256>/`).
        cgroups: "auto" (cgroups where writable, else rlimits), "require"
            (raise errors.CgroupError when not writable) or "off" (rlimits).
        warm_pool_size: generic zygotes forked ahead of need, at least; the
            pool grows with the rate of claims up to `warm_pool_max` (default
            max(8, warm_pool_size)) and shrinks back when it falls.
        spares: spare instances each function zygote keeps forked and ready.
        cgroup_pool_size: instance cgroups created ahead of need.
        spin_us: how long to poll for a reply before sleeping, when it is
            the only invocation in flight and no other task is runnable, and
            on a warm instance only if the function's last warm call took less
            than that (0: never): a short handler's result then does not wait
            for an idle CPU to wake.
        python: the interpreter for the template zygote.
        allow_source_builds: let pip build a bundle's requirements from
            source (runs their build code); by default binary wheels only.
        pip_args: more pip options for requirements (`--no-index`, ...).
        log_entries: recent invocations kept per function for `logs()`.
        concurrency_limit: executions at once, all functions together;
            `reserved_concurrency` holds part of it for one function.
        affinity_wait_s: how long a call with a route key waits for its busy
            instance before another instance serves it.
        infrequent_starts: new instances of infrequent functions started at
            once, all such functions together (the others queue for a turn).
        memory_budget_mb: the most memory zygotes and instances may use,
            measured (default: 80% of the machine's); configured limits may
            overcommit it.
        frequency_window_s: the window of a function's call rate: at 1/s or
            more (or 2 calls in flight) it is frequent; below 0.2/s for a
            window, infrequent.
        isolation: the functions' default level, "none", "standard" or
            "strict" (default: $FASTFAAS_ISOLATION, else the strongest this
            machine allows: strict as root with user namespaces and seccomp,
            standard with cgroups but no root, none otherwise); a function's
            own `isolation` overrides it.
        sandbox_uid, sandbox_gid: strict: the unprivileged ids that function
            code runs as, seen from the host (inside, it is uid 1000).
        sandbox_expose: strict: host paths that functions see, read-only,
            even where they lie under a directory strict hides (/tmp, /run...).
        allow_weaker_isolation: let a function ask for a level below the
            default (by default the default is also the floor).
        auto_size_after: a function with `auto_size` gets a new size after
            this many invocations at its current size (if its usage says so).
        function_cpus: the CPUs the template, zygotes and instances run on
            (default: wherever this process may). With the server kept to the
            others, an instance it wakes never takes its CPU.
        function_sched: the scheduling policy of the template, zygotes and
            instances: "batch" (the default: SCHED_BATCH, which the kernel
            never lets preempt a running task on waking: an instance the server
            wakes waits for a free CPU, or the server's next wait, instead of
            stopping it in the middle of a batch of requests; 1.07-1.26x the
            warm calls per second when the server's thread is the limit) or
            "normal" (SCHED_OTHER, as the server's own: a handler woken from a
            sleep on a busy machine preempts at once; its p99 in the Zipf
            benchmark was 0.1-0.2 ms shorter).

    `on_size_change(name, change)`, when set, is called (in the trio thread)
    each time auto_size applies a size: the server keeps the new size.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = ".fastfaas",
        *,
        cgroups: str = "auto",
        warm_pool_size: int = 2,
        spares: int = 1,
        cgroup_pool_size: int = 4,
        spin_us: int = 100,
        python: str = sys.executable,
        allow_source_builds: bool = False,
        pip_args: Sequence[str] = (),
        log_entries: int = 100,
        concurrency_limit: int = 1000,
        warm_pool_max: int | None = None,
        affinity_wait_s: float = 1.0,
        infrequent_starts: int = 4,
        frequency_window_s: float = 10.0,
        memory_budget_mb: int | None = None,
        isolation: str | None = None,
        sandbox_uid: int = SANDBOX_ID,
        sandbox_gid: int = SANDBOX_ID,
        sandbox_expose: Sequence[str | os.PathLike[str]] = (),
        allow_weaker_isolation: bool = False,
        auto_size_after: int = sizing.AUTO_AFTER,
        function_cpus: Collection[int] | None = None,
        function_sched: str = "batch",
    ) -> None:
        if function_sched not in FUNCTION_SCHED:
            raise ValueError(f"function_sched must be one of {', '.join(FUNCTION_SCHED)},"
                             f" not {function_sched!r}")
        if auto_size_after < sizing.MIN_SAMPLES:
            raise ValueError(f"auto_size_after must be >= {sizing.MIN_SAMPLES}")
        if warm_pool_size < 0 or spares < 0 or cgroup_pool_size < 0:
            raise ValueError("warm_pool_size, spares and cgroup_pool_size must be >= 0")
        if isolation is None:
            isolation = os.environ.get("FASTFAAS_ISOLATION") or None
        if isolation is not None and isolation not in ISOLATION_LEVELS:
            raise ValueError(f"isolation {isolation!r} must be one of {ISOLATION_LEVELS}")
        self.data_dir = Path(data_dir).resolve()
        self.cgroups = Cgroups(cgroups)
        self._isolation_asked = isolation
        self.allow_weaker_isolation = allow_weaker_isolation
        self.isolation = "none"  # the server's default level, settled once entered
        self.isolation_levels: tuple[str, ...] = ("none",)
        self.isolation_reason = ""
        if sandbox_uid <= 0 or sandbox_gid <= 0:
            raise errors.IsolationError("sandbox_uid and sandbox_gid must not be root's (0):"
                                        " function code would own root's files")
        expose = tuple(os.path.realpath(p) for p in sandbox_expose)
        missing = [p for p in expose if not os.path.exists(p)]
        if missing:
            raise errors.IsolationError(f"sandbox_expose: no such path(s): {', '.join(missing)}")
        self._strict = wire.Sandbox(str(self.data_dir), False, sandbox_uid, sandbox_gid, expose)
        self._pool_sandbox: wire.Sandbox | None = None  # the warming pool's kind of zygote
        self._pool_sizer = policy.PoolSizer(
            warm_pool_size, max(8, warm_pool_size) if warm_pool_max is None else warm_pool_max)
        self.spares = spares
        self.cgroup_pool_size = cgroup_pool_size
        self.spin_ns = spin_us * 1000
        self._defer_spare_fork = True  # (a switch for benchmarks' paired runs)
        self._running = 0  # invocations in flight, all functions
        self.limits = policy.ConcurrencyLimits(concurrency_limit)
        self.affinity_wait_s = affinity_wait_s
        self._start_queue = trio.Semaphore(infrequent_starts)
        self.frequency_window_s = frequency_window_s
        self.memory_budget = (memory_budget_mb * 1024 * 1024 if memory_budget_mb is not None
                              else int(_machine_memory() * 0.8))
        self._memory_used = 0
        self._measured = trio.Event()
        self._changed: trio.Event | None = None
        self._max_instances = 1_000_000  # from RLIMIT_NOFILE once entered
        self._now: Callable[[], float] = time.monotonic  # trio's clock once entered
        self.python = python
        self.requirements = code_bundles.Requirements(
            python, self.data_dir / "deps", allow_source_builds=allow_source_builds,
            pip_args=pip_args)
        self._logs: dict[str, collections.deque[LogEntry]] = {}
        # Usage samples not yet taken for the registry, per function version: kept once
        # take_usage() is first called (the server's); an embedding that never asks keeps
        # none. The registry keeps the last HISTORY of each, so that is all kept here:
        # under load, a flush writes 2,000 rows a version, not every call since the last.
        self._new_usage: dict[tuple[str, str],
                              collections.deque[sizing.UsageSample]] | None = None
        self.auto_size_after = auto_size_after
        self._size_changes: dict[str, collections.deque[sizing.SizeChange]] = {}
        self.on_size_change: Callable[[str, sizing.SizeChange], None] | None = None
        self._say = SaidOnce("the server goes on")  # background failures
        self._log_entries = log_entries
        self.function_cpus = None if function_cpus is None else frozenset(function_cpus)
        if self.function_cpus is not None:
            # (Not only those this process may use now: a server keeps itself to others.)
            online = range(os.cpu_count() or 1)
            if not self.function_cpus or not self.function_cpus <= set(online):
                raise ValueError(f"function_cpus {sorted(self.function_cpus)} must be some of"
                                 f" this machine's CPUs, 0-{online[-1]}")
        self.function_sched = function_sched
        self.template = self._new_template()
        self._template_up = trio.Event()
        self._template_restarts: collections.deque[float] = collections.deque()
        self.table = _native.InstanceTable()
        self._functions: dict[str, FunctionVersion] = {}
        self._draining: set[FunctionVersion] = set()
        self._generations = itertools.count(1)
        self._spawn_ids = itertools.count(1)
        self._instance_names = itertools.count(1)
        self._rid = uuid.uuid4().hex[:6]
        self._request_ids = _native.RequestIds()
        self._pool: collections.deque[ZygoteHandle] = collections.deque()
        self._pool_forking = 0
        self._pool_lot = trio.lowlevel.ParkingLot()
        self._cg_free: list[CgroupSet] = []
        self._cg_lot = trio.lowlevel.ParkingLot()
        self._cg_hint = 128  # the instance size the cgroup pool prepares
        self._reap_lot = trio.lowlevel.ParkingLot()
        # Cleaning up dead processes' cgroups: one worker thread at a time (see
        # REAP_PER_TICK), off the event loop but not crowding it.
        self._cleanup_limiter = trio.CapacityLimiter(1)
        self._reaping: list[InstanceHandle] = []  # out of service, stopped over a tick
        self._deadlines = policy.Deadlines()
        self._deadline_lot = trio.lowlevel.ParkingLot()
        self._watching_until = math.inf
        self._all_zygotes: set[ZygoteHandle] = set()
        self._reclaiming: set[InstanceHandle] = set()
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._open = False
        self._closing = False
        self._procs_at_close: list[Process] = []
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def warm_pool_size(self) -> int:
        """The warming pool's target now (it follows the rate of claims)."""
        return self._pool_sizer.current

    @warm_pool_size.setter
    def warm_pool_size(self, size: int) -> None:
        """Set the pool's target, and its floor, to `size` (0: no refills until
        claims call for them)."""
        sizer = self._pool_sizer
        sizer.minimum = sizer.current = size
        sizer.maximum = max(sizer.maximum, size)
        self._pool_lot.unpark_all()

    # --- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Runtime:
        if self._nursery is not None:
            raise RuntimeError("a Runtime can be entered once")
        _raise_nofile_limit()
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if nofile != resource.RLIM_INFINITY:
            self._max_instances = max(16, (nofile - FDS_RESERVED) // FDS_PER_INSTANCE)
        # The clock read in C (or its own method): trio.current_time() goes through
        # three Python calls, and this runs several times per call.
        self._now = _native.clock_reader(trio.lowlevel.current_clock())
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            (self.data_dir / "code").mkdir(parents=True, exist_ok=True)
            await trio.to_thread.run_sync(self.cgroups.start)
            if not self.cgroups.enabled and self.cgroups.mode == "auto":
                print(f"fastfaas: {self.cgroups.reason}", file=sys.stderr)
            probe = ""
            if self.cgroups.enabled and self._isolation_asked in (None, "strict"):
                probe = await trio.to_thread.run_sync(
                    strict_unavailable, self._strict.uid, self._strict.gid, self.python)
            self._settle_isolation(probe)
            await self._nursery.start(self._keep_template)
            self._open = True
            self._nursery.start_soon(self._fill_warming_pool)
            self._nursery.start_soon(self._fill_cgroup_pool)
            self._nursery.start_soon(self._reap_idle)
            self._nursery.start_soon(self._watch_deadlines)
            self._nursery.start_soon(self._measure_memory)
        except BaseException as exc:
            await self._shutdown()
            try:
                await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseExceptionGroup as group:
                if not all(leaf is exc for leaf in _leaves(group)):
                    raise
            finally:
                with trio.CancelScope(shield=True):
                    await self._finish_shutdown()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        try:
            await self._shutdown()
        finally:
            try:
                handled = await self._nursery_cm.__aexit__(exc_type, exc, tb)
            except BaseExceptionGroup as group:
                # The nursery is ours, not the caller's: an exception from the
                # body of `async with` (Ctrl-C, say) comes out as itself.
                if exc is not None and all(leaf is exc for leaf in _leaves(group)):
                    handled = False
                else:
                    raise
            finally:
                with trio.CancelScope(shield=True):
                    await self._finish_shutdown()
        return handled  # type: ignore[no-any-return]

    def _settle_isolation(self, probed: str = "") -> None:
        """The levels this machine allows, and the default: the strongest of them.
        `probed`: why strict failed its probe (strict_unavailable), if it did."""
        levels = ["none"]
        why = "strict and standard need writable cgroups: " + self.cgroups.reason
        if self.cgroups.enabled:
            levels.append("standard")
            why = probed or strict_unavailable()
            if not why:
                levels.append("strict")
        self.isolation_levels = tuple(levels)
        self.isolation_reason = why
        asked = self._isolation_asked
        if asked is not None and asked not in levels:
            raise errors.IsolationError(f"isolation {asked!r} is not available here: {why}")
        self.isolation = asked or levels[-1]
        if self.isolation != "strict":
            because = "as asked" if asked else why
            print(f"fastfaas: isolation is {self.isolation!r} ({because}); run only code you"
                  " trust", file=sys.stderr)
        self._pool_sandbox = self._strict if self.isolation == "strict" else None

    def _isolation_of(self, cfg: FunctionConfig) -> str:
        """The function's level, or InvalidRequestError if this server cannot give it."""
        level = cfg.isolation or self.isolation
        weaker = ISOLATION_LEVELS.index(level) < ISOLATION_LEVELS.index(self.isolation)
        if weaker and not self.allow_weaker_isolation:
            # The server's level is a floor: whoever may deploy (a strict function
            # with the host's network, say) must not get out by asking for less.
            raise InvalidRequestError(
                f"invalid function configuration: isolation {level!r} is weaker than this"
                f" server's {self.isolation!r}; the server must allow it"
                " (--allow-weaker-isolation)")
        if level not in self.isolation_levels:
            raise InvalidRequestError(
                f"invalid function configuration: isolation {level!r} is not available on"
                f" this server ({self.isolation_reason})")
        if cfg.network and level != "strict":
            raise InvalidRequestError(
                f"invalid function configuration: network applies to the strict level only"
                f" (this function's is {level!r})")
        return level

    def _known_procs(self) -> list[Process]:
        procs: list[Process] = []
        for fv in [*self._functions.values(), *self._draining]:
            procs += [i.proc for i in fv.instances.values() if i.proc is not None]
        procs += [z.proc for z in self._all_zygotes if z.proc is not None]
        procs += [i.proc for i in self._reclaiming if i.proc is not None]
        return procs

    async def _shutdown(self) -> None:
        """Kill every instance and zygote and the template; stop the background tasks."""
        if self._closing:
            return
        self._closing = True
        self._open = False
        self._procs_at_close = self._known_procs()
        for proc in self._procs_at_close:
            proc.kill()
        for z in list(self._all_zygotes):
            z.stop()
        self.template.close()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _finish_shutdown(self) -> None:
        """After the background tasks are done: wait for the processes, remove the cgroups."""
        procs = [*self._procs_at_close, *self._known_procs()]
        with trio.move_on_after(10):
            await self.template.wait_closed()
            for proc in procs:
                await proc.wait_gone()
        for proc in procs:
            proc.close()
        for fv in [*self._functions.values(), *self._draining]:
            for inst in fv.instances.values():
                if inst.chan is not None:
                    inst.chan.close()
        for z in self._all_zygotes:
            z.chan.close()
        self._cg_free.clear()
        await trio.to_thread.run_sync(self.cgroups.close)

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeClosedError(
                "the Runtime is not running: use it inside `async with Runtime(...) as rt:`"
            )

    # --- functions -----------------------------------------------------------

    async def deploy(
        self,
        name: str,
        source: str | os.PathLike[str] | bytes,
        handler: str,
        **config: Any,
    ) -> dict[str, Any]:
        """Create or replace a function from a directory, a zip file or zip bytes.

        Keyword arguments are DESIGN.md's configuration names (memory_mb,
        timeout_s, env, ...). A replaced function's in-flight calls finish on
        its old zygote, which then drains; new calls go to a new one.

        Raises:
            InvalidRequestError: bad name, configuration or bundle.
        """
        self._check_open()
        check_name(name)
        cfg = FunctionConfig.create(handler=handler, **config)
        self._check_reservation(name, cfg)
        self._isolation_of(cfg)
        code_dir, sha = await self._unpack(source)
        return self._activate(name, cfg, code_dir, sha)

    async def update_code(self, name: str,
                          source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
        """New code for a deployed function, with the configuration it has once the
        code is unpacked (a change made meanwhile, auto_size's included, holds).

        Raises:
            FunctionNotFoundError: not deployed (or deleted while unpacking).
            InvalidRequestError: a bad bundle.
        """
        self._check_open()
        self._lookup(name, LATEST)
        code_dir, sha = await self._unpack(source)
        return self._activate(name, self._lookup(name, LATEST).config, code_dir, sha)

    async def _unpack(self, source: str | os.PathLike[str] | bytes) -> tuple[Path, str]:
        zip_data = await trio.to_thread.run_sync(code_bundles.code_bytes, source)
        unpacked = await trio.to_thread.run_sync(
            code_bundles.unpack, zip_data, self.data_dir / "code", self.requirements,
            abandon_on_cancel=False,
        )
        self._check_open()
        return unpacked

    def restore(self, name: str, config: FunctionConfig, code_sha256: str) -> dict[str, Any]:
        """Deploy again code already unpacked in `data_dir/code/<sha256>/` (after a restart).

        Raises:
            InvalidRequestError: bad name, or that code is not on disk.
        """
        self._check_open()
        check_name(name)
        config.validate()
        code_dir = self.data_dir / "code" / code_sha256
        if not code_sha256.isalnum() or not code_dir.is_dir():
            raise InvalidRequestError(f"function {name!r}: its code {code_sha256} is not in"
                                      f" {self.data_dir / 'code'}")
        return self._activate(name, config, code_dir, code_sha256)

    def _check_reservation(self, name: str, cfg: FunctionConfig) -> None:
        why = self.limits.check_reservation(name, cfg.reserved_concurrency)
        if why is not None:
            raise InvalidRequestError(f"invalid function configuration: {why}")

    def _activate(self, name: str, cfg: FunctionConfig, code_dir: Path,
                  sha: str) -> dict[str, Any]:
        self._check_reservation(name, cfg)
        self._isolation_of(cfg)
        self.limits.set_reservation(name, cfg.reserved_concurrency)
        fv = self._new_version(name, cfg, code_dir, sha)
        old = self._functions.get(name)
        if old is not None:
            fv.freq = old.freq  # the function's traffic, not the version's
        self._functions[name] = fv
        self._start_prewarm(fv)
        self._reap_lot.unpark_all()
        self._cg_hint = cfg.memory_mb
        self._cg_lot.unpark_all()
        if old is not None:
            self._retire_version(old)
        return self.describe(name)

    def _new_version(self, name: str, cfg: FunctionConfig, code_dir: Path,
                     sha: str, version: str = LATEST) -> FunctionVersion:
        fv = FunctionVersion(name, version, cfg, code_dir, sha, self.table.new_slot(),
                             next(self._generations), self.frequency_window_s)
        fv.isolation = level = self._isolation_of(cfg)
        fv.cgrouped = level != "none"
        if level == "strict":
            fv.sandbox = (self._strict if not cfg.network
                          else msgspec.structs.replace(self._strict, network=True))
        return fv

    async def update_config(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change configuration only; a change to what the zygote holds starts a new one."""
        self._check_open()
        fv = self._lookup(name, LATEST)
        cfg = fv.config.replace(**changes)
        self._check_reservation(name, cfg)
        self._isolation_of(cfg)
        self.limits.set_reservation(name, cfg.reserved_concurrency)
        self._reconfigure(fv, cfg)
        return self.describe(name)

    def _reconfigure(self, fv: FunctionVersion, cfg: FunctionConfig) -> None:
        """$LATEST with a new configuration: a change to what the zygote holds starts a
        new generation (same code, usage and traffic); calls in flight finish on the old."""
        if any(getattr(cfg, f) != getattr(fv.config, f) for f in ZYGOTE_FIELDS):
            new = self._new_version(fv.name, cfg, fv.code_dir, fv.code_sha256)
            new.freq = fv.freq
            if cfg.handler == fv.config.handler and cfg.env == fv.config.env:
                new.usage = fv.usage  # the same code: its history holds (samples keep size)
            self._functions[fv.name] = new
            self._retire_version(fv)
            self._start_prewarm(new)
        else:
            fv.config = cfg
            self._start_prewarm(fv)
        self._reap_lot.unpark_all()

    async def delete(self, name: str) -> None:
        """Remove a function and its published versions; their in-flight calls
        finish, then their processes stop."""
        self._check_open()
        fv = self._lookup(name, LATEST)
        del self._functions[name]
        for key in [k for k in self._functions if k.startswith(name + ":")]:
            self._retire_version(self._functions.pop(key))
        self._logs.pop(name, None)
        self._size_changes.pop(name, None)
        self.limits.forget(name)
        self._retire_version(fv)

    def functions(self) -> list[str]:
        """The functions' names ($LATEST; published versions are `versions(name)`)."""
        return sorted(k for k in self._functions if ":" not in k)

    # --- published versions ----------------------------------------------------------
    # A published version is an immutable copy of $LATEST (configuration and code)
    # with its own zygote, kept under the key "name:version" beside $LATEST.

    def publish(self, name: str) -> str:
        """Publish $LATEST as the next version number; returns it."""
        self._check_open()
        latest = self._lookup(name, LATEST)
        number = 1 + max((int(v) for v in self.versions(name) if v.isdigit()), default=0)
        # Instances kept ready are the version's own setting (provisioned concurrency).
        return self._add_version(name, str(number), latest.config.replace(prewarm=0),
                                 latest.code_dir, latest.code_sha256)

    def restore_version(self, name: str, version: str, config: FunctionConfig,
                        code_sha256: str) -> None:
        """A published version again, after a restart (its code is on disk)."""
        self._check_open()
        check_name(name)
        code_dir = self.data_dir / "code" / code_sha256
        if not version.isdigit() or not code_sha256.isalnum() or not code_dir.is_dir():
            raise InvalidRequestError(f"function {name!r} version {version!r}: cannot restore")
        self._add_version(name, version, config, code_dir, code_sha256)

    def _add_version(self, name: str, version: str, config: FunctionConfig, code_dir: Path,
                     sha: str) -> str:
        fv = self._new_version(name, config, code_dir, sha, version)
        self._functions[f"{name}:{version}"] = fv
        self._start_prewarm(fv)
        return version

    def versions(self, name: str) -> list[str]:
        """The published versions of a function, oldest first."""
        self._lookup(name, LATEST)
        found = [k.split(":", 1)[1] for k in self._functions if k.startswith(name + ":")]
        return sorted(found, key=lambda v: int(v) if v.isdigit() else 0)

    def set_prewarm(self, name: str, version: str, count: int) -> None:
        """A published version's `prewarm` (Lambda's provisioned concurrency): that many
        instances kept forked from now on."""
        self._check_open()
        fv = self._lookup(name, version)
        if version == LATEST:
            raise InvalidRequestError("set prewarm of $LATEST with update_config")
        fv.config = fv.config.replace(prewarm=count)
        self._start_prewarm(fv)
        self._reap_lot.unpark_all()

    def sizing_for(self, name: str, version: str = LATEST) -> sizing.Recommendation:
        """A memory size for the function from its observed usage, with reason and evidence."""
        return self._recommendation(self._lookup(name, version))

    async def sizing_all(self) -> dict[str, sizing.Recommendation]:
        """Every function's recommendation ($LATEST), one function per step of the event
        loop (each takes up to a millisecond; a scrape must not hold up the calls)."""
        out = {}
        for name in self.functions():
            fv = self._functions.get(name)
            if fv is not None:
                out[name] = self._recommendation(fv)
                await trio.lowlevel.checkpoint()
        return out

    def _recommendation(self, fv: FunctionVersion) -> sizing.Recommendation:
        """Cached until a new sample or another size."""
        usage = fv.usage
        key = (len(usage), usage[-1].time if usage else 0.0, fv.config.memory_mb)
        if fv.recommended is None or fv.recommended[0] != key:
            fv.recommended = (key, sizing.recommend(usage, fv.config.memory_mb))
        return fv.recommended[1]

    def _auto_size(self, fv: FunctionVersion) -> None:
        """auto_size: after enough calls at its size, $LATEST gets the size its usage asks
        for, as a configuration change does (a new zygote; calls in flight finish)."""
        fv.auto_count = 0
        cfg = fv.config
        if (fv.version != LATEST or fv.retired or self._functions.get(fv.name) is not fv
                or not fv.cgrouped):
            return  # without cgroups there is no peak to size from
        rec = self._recommendation(fv)
        decided = sizing.auto_size(fv.usage, cfg.memory_mb, cfg.min_memory_mb,
                                   cfg.max_memory_mb, rec)
        if decided is None:
            return
        size, reason = decided
        samples = int(rec.evidence.get("samples_at_size", 0))
        change = sizing.SizeChange(time.time(), fv.version, cfg.memory_mb, size, reason,
                                   samples)
        self._reconfigure(fv, cfg.replace(memory_mb=size))
        self._note_size_change(fv.name, change)
        self.counters["size_changes"] += 1
        print(f"fastfaas: auto_size: {fv.name} {change.from_mb} MB -> {size} MB ({reason};"
              f" {samples} invocations)", file=sys.stderr, flush=True)
        if self.on_size_change is not None:
            try:
                self.on_size_change(fv.name, change)
            except Exception as exc:  # the size is in force; only its keeping failed
                print(f"fastfaas: auto_size: could not keep {fv.name}'s new size: {exc}",
                      file=sys.stderr)

    def _note_size_change(self, name: str, change: sizing.SizeChange) -> None:
        kept = self._size_changes.get(name)
        if kept is None:
            kept = self._size_changes[name] = collections.deque(maxlen=SIZE_CHANGES_KEPT)
        kept.append(change)

    def size_changes(self, name: str) -> list[sizing.SizeChange]:
        """The sizes auto_size applied to the function, oldest first (the last few)."""
        self._lookup(name, LATEST)
        return list(self._size_changes.get(name, ()))

    def load_size_changes(self, name: str, changes: list[sizing.SizeChange]) -> None:
        """Changes recorded before a restart."""
        self._lookup(name, LATEST)
        for change in changes:
            self._note_size_change(name, change)

    def usage(self, name: str, version: str = LATEST) -> list[sizing.UsageSample]:
        return list(self._lookup(name, version).usage)

    def load_usage(self, name: str, version: str, samples: list[sizing.UsageSample]) -> None:
        """Usage recorded before a restart."""
        self._lookup(name, version).usage.extend(samples)

    def take_usage(self) -> Mapping[tuple[str, str], Sequence[sizing.UsageSample]]:
        """The samples recorded since the last call, per (function, version), for the
        registry to keep; the first call starts the keeping. Handed over as kept: a
        row per sample built here, 5,000 at a time under load, set off collections
        of the young generation that held the event loop 10-14 ms."""
        if self._new_usage is None:
            self._new_usage = {}
            return {}
        pending, self._new_usage = self._new_usage, {}
        return pending

    async def delete_version(self, name: str, version: str) -> None:
        """Remove one published version; its calls in flight finish."""
        self._check_open()
        fv = self._lookup(name, version)
        if version == LATEST:
            raise InvalidRequestError("delete the function to remove $LATEST")
        del self._functions[f"{name}:{version}"]
        self._retire_version(fv)

    def config(self, name: str, version: str = LATEST) -> FunctionConfig:
        return self._lookup(name, version).config

    async def warm(self, name: str) -> FunctionError | None:
        """Give the function a zygote now (imports its code); its InitError, if any.

        The handler does not run. Raises FunctionNotFoundError, ZygoteError.
        """
        self._check_open()
        fv = self._lookup(name, LATEST)
        if fv.zygote is not None and not fv.zygote.dead:
            return None
        fv.in_flight += 1  # keeps a concurrent reaper or drain from stopping it
        try:
            claimed = await self._claim(fv)
        finally:
            fv.in_flight -= 1
            fv.last_used = trio.current_time()
            if fv.retired:
                self._maybe_finish_draining(fv)
        if isinstance(claimed, FunctionError):
            return claimed
        self._want_spares(fv)
        return None

    def _start_prewarm(self, fv: FunctionVersion) -> None:
        """`prewarm` instances are forked from deployment on, without waiting for a call."""
        if fv.config.prewarm > 0 and self._nursery is not None and not self._closing:
            self._nursery.start_soon(self._prewarm, fv)

    @trio.lowlevel.enable_ki_protection
    async def _prewarm(self, fv: FunctionVersion) -> None:
        if fv.retired:
            return
        if fv.zygote is None or fv.zygote.dead:
            fv.in_flight += 1  # keeps a concurrent reaper or drain off the claim
            try:
                claimed = await self._claim(fv)
            except (ZygoteError, CgroupError, OSError, _Retry) as exc:
                print(f"fastfaas: prewarming {fv.name} failed: {exc or 'its zygote died'}",
                      file=sys.stderr)
                return
            finally:
                fv.in_flight -= 1
                if _retired(fv):  # replaced while the claim ran
                    self._maybe_finish_draining(fv)
            if isinstance(claimed, FunctionError):
                return  # the InitError shows at the first invocation, as on Lambda
        self._want_spares(fv)

    def new_request_id(self) -> str:
        return self._request_ids.next()

    def logs(self, name: str, limit: int | None = None) -> list[LogEntry]:
        """The function's recent invocations, oldest first, with their output."""
        self._lookup(name, LATEST)
        entries = list(self._logs.get(name, ()))
        return entries if limit is None else entries[-limit:] if limit > 0 else []

    def describe(self, name: str, version: str = LATEST) -> dict[str, Any]:
        """Configuration, code hash and live state of a function (or a published version)."""
        fv = self._lookup(name, version)
        return {
            "name": fv.name,
            "version": fv.version,
            "code_sha256": fv.code_sha256,
            "config": msgspec.to_builtins(fv.config),
            "isolation": fv.isolation,  # in force: its own, or the server's default
            "state": self._fv_state(fv),
            "concurrency": {"in_flight": self.limits.in_flight(name),
                            "reserved": fv.config.reserved_concurrency,
                            "max": fv.config.max_concurrency},
            # Earlier generations still finishing calls in flight (then they exit).
            "draining": [self._fv_state(old) for old in self._draining if old.name == name],
            # auto_size: the sizes it applied, and when (GET .../sizing says what it would now).
            "size_changes": [msgspec.to_builtins(c)
                             for c in self._size_changes.get(name, ())] if version == LATEST
                            else [],
        }

    def _lookup(self, name: str, version: str) -> FunctionVersion:
        fv = self._functions.get(name if version == LATEST else f"{name}:{version}")
        if fv is None or version != fv.version or ":" in name:
            raise FunctionNotFoundError(
                f"function {name!r} (version {version}) is not deployed"
                + (f"; deployed: {', '.join(self.functions())}" if self.functions() else "")
            )
        return fv

    def _retire_version(self, fv: FunctionVersion) -> None:
        fv.retired = True
        self._draining.add(fv)
        self._drain_idle(fv)
        self._maybe_finish_draining(fv)

    def _drain_idle(self, fv: FunctionVersion) -> None:
        for kind in (_native.KIND_WARM, _native.KIND_SPARE):
            # Retiring the last instance may finish the draining and free the slot.
            while not fv.slot_released and (
                tid := self.table.pop_expired(fv.slot, kind, float("inf"))
            ) is not None:
                self._retire(fv.instances[tid])

    def _maybe_finish_draining(self, fv: FunctionVersion) -> None:
        if not fv.retired or fv.in_flight or fv.claiming is not None:
            return
        self._drain_idle(fv)
        if any(not inst.dead for inst in fv.instances.values()):
            return
        if fv.zygote is not None:
            self._stop_zygote(fv)
        self._draining.discard(fv)
        if not fv.slot_released:
            fv.slot_released = True
            self.table.release_slot(fv.slot)

    # --- invocation ------------------------------------------------------------

    async def invoke(
        self,
        name: str,
        event: Any = None,
        *,
        payload: bytes | None = None,
        version: str = LATEST,
        request_id: str | None = None,
        route_key: str | None = None,
        route_wait: bool = True,
    ) -> InvocationResult:
        """Invoke a function with an event (any JSON value) or raw JSON `payload` bytes.

        Returns an InvocationResult; the function's own failures are in its
        `error` (Unhandled, Timeout, OutOfMemory, Crashed, InitError,
        ResultTooLarge), not raised.

        Raises:
            FunctionNotFoundError, InvalidRequestError, RequestTooLargeError,
            TooManyRequestsError (a concurrency limit), RuntimeClosedError,
            ZygoteError.

        With `route_key`, the call goes to the instance that last served that
        key for this function while it lives and is idle; if it is busy the
        call waits for it up to `affinity_wait_s` (`route_wait=False`: not at
        all) and then another instance serves it (`result.affinity`).

        Cancellation: takes effect at once for the caller; an invocation
        already handed to an instance runs to its end (or its timeout) in the
        background, its result is dropped and the instance is reused.
        """
        self._check_open()
        fv = self._lookup(name, version)
        raw = _event_bytes(event, payload)
        if request_id is None:
            request_id = self._request_ids.next()
        refused = self.limits.try_acquire(name, fv.config.max_concurrency)
        if refused is not None:
            self.counters["throttled"] += 1
            fv.throttled += 1
            raise TooManyRequestsError(refused)
        return await self._invoke_acquired(fv, raw, request_id, route_key, route_wait)

    async def _invoke_acquired(self, fv: FunctionVersion, raw: bytes, request_id: str,
                               route_key: str | None = None, route_wait: bool = True,
                               attempts: int = RETRIES + 1) -> InvocationResult:
        """`invoke` once its concurrency is taken (released here, whatever happens).

        Each retry follows an event that reached no handler and retires what was
        found dead (an idle instance, a function zygote, a pooled generic one):
        after a template died, its warm instances, spares and zygotes may all be
        found so, one by one, before the runtime has heard of it."""
        try:
            for _attempt in range(attempts):
                try:
                    result = await self._invoke_once(fv, raw, request_id, route_key,
                                                     route_wait)
                    result = await self._escalate_if_needed(fv, raw, request_id, result)
                except _Retry:
                    # The event reached no handler (its instance or zygote was already
                    # dead): another instance gets it.
                    self.counters["retries"] += 1
                    continue
                return self._done(fv, result)
        finally:
            self.limits.release(fv.name)
        raise ZygoteError(f"function {fv.name}: no live instance could take the invocation")

    async def _escalate_if_needed(self, fv: FunctionVersion, raw: bytes, request_id: str,
                                  result: InvocationResult) -> InvocationResult:
        size = self._escalation_size(fv, result)
        if not size:
            return result
        self._log(fv, result)  # the OutOfMemory feeds the sizing too
        return await self._invoke_escalated(fv, raw, request_id, size, result)

    def _done(self, fv: FunctionVersion, result: InvocationResult) -> InvocationResult:
        """An invocation's result, logged (and the function auto-sized if it is due)."""
        self._log(fv, result)
        if fv.config.auto_size and fv.auto_count >= self.auto_size_after:
            self._auto_size(fv)
        return result

    def _new_template(self) -> Template:
        """A template zygote, not started, with the CPUs and policy every function
        process inherits from it."""
        return Template(self.python, cwd="/", cpus=self.function_cpus,
                        batch=self.function_sched == "batch")

    def _warm_success(self, fv: FunctionVersion, inst: InstanceHandle, request_id: str,
                      duration_ns: int, peak: int, cpu_ns: int, held_ns: int,
                      log_tail: bytes) -> None:
        """The compiled lane's (fastfaas._lane) end of a warm call's plain success,
        given in parts: what `_answered` (the instance idle again), `_call_done` and
        `_done` do for it. Its caller has checked what they would branch on: not
        retired, not dead, not one-off, no waiters, no leftovers."""
        try:  # as FastCall.settle: what fails before the call is done undoes its count
            now = self._now()
            # _set_idle(inst, spare=False, now=now), in line (this runs per call)
            inst.idle_since = now
            inst.spare = False
            self.table.set_state(inst.table_id, _native.STATE_IDLE, _native.KIND_WARM, now)
            if self._changed is not None:
                self._notify()
            fv.quick = duration_ns < self.spin_ns
            fv.quick_measured = True
        except BaseException:
            self._call_done(fv, False)
            raise
        # _call_done(fv, False, now), in line: not retired (the caller checked)
        fv.in_flight -= 1
        self._running -= 1
        fv.last_used = now
        self._log_parts(fv, "warm", request_id, duration_ns // 1000, peak, cpu_ns // 1000,
                        held_ns // 1000, None, log_tail[-wire.LOG_TAIL:], 0)
        if fv.config.auto_size and fv.auto_count >= self.auto_size_after:
            self._auto_size(fv)

    def invoke_nowait(self, name: str, payload: bytes) -> FastCall | None:
        """Hand an event to an idle instance of `name` ($LATEST) without waiting:
        the HTTP front end's way of serving warm calls without a task per call.

        Returns a FastCall, whose `fd` becomes readable when the instance has
        answered (then `step()`), or None when this call needs anything more
        than an idle instance and a send (a new instance, a route key, a
        concurrency refusal, an invalid event, a closed runtime...): `invoke`
        then does it all, with the same errors as ever. None has no side effect.
        """
        taken = self._take_idle(name, payload)
        if taken is None:
            return None
        fv, inst, start, payload = taken
        try:
            return self._hand_over(fv, inst, start, payload)
        except BaseException:  # what invoke's finally clauses would undo
            self._call_done(fv, False)
            self.limits.release(name)
            raise

    def _take_idle(self, name: str, payload: bytes,
                   ) -> tuple[FunctionVersion, InstanceHandle, str, bytes] | None:
        """`invoke_nowait`'s admission (and the compiled lane's): an idle instance of
        `name` taken for an event that needs nothing more, the call counted in
        flight: (function, instance, "warm" or "prewarmed", the event's bytes). None,
        with no side effect, when it needs more (`invoke` then does it all)."""
        if not self._open or self._closing:
            return None
        fv = self._functions.get(name)
        if fv is None or ":" in name:
            return None
        # _event_bytes's checks, without its errors: invoke says why.
        payload = bytes(payload)
        if len(payload) > wire.MAX_PAYLOAD:
            return None
        try:
            _json_decode(payload)
        except ValueError:
            return None
        if self.limits.try_acquire(name, fv.config.max_concurrency) is not None:
            return None  # invoke refuses it, and counts the refusal
        got = self.table.acquire(fv.slot)
        if got is None:
            self.limits.release(name)
            return None
        inst = fv.instances[got[0]]
        fv.in_flight += 1
        self._running += 1
        return fv, inst, "prewarmed" if got[1] == _native.KIND_SPARE else "warm", payload

    def _hand_over(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                   payload: bytes) -> FastCall:
        fv.freq.note_call(self._now(), fv.in_flight)
        request_id = self._request_ids.next()
        invocation = self._invocation(fv, payload, request_id)
        cpu_base = self.cgroups.begin(inst.cgroup) if inst.cgroup is not None else 0
        replace_after = self._count_start(fv, start)
        assert inst.chan is not None
        if not inst.chan.send_nowait(invocation.data):
            return self._hand_over_unsent(fv, inst, start, request_id, payload, invocation.data,
                                          invocation.deadline, cpu_base, replace_after)
        self.counters["nowait_calls"] += 1
        return self._fast_call(fv, inst, start, request_id, payload, cpu_base,
                               self._watch_deadline(invocation.deadline, inst), replace_after)

    def _fast_call(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                   request_id: str, payload: bytes, cpu_base: int, entry: Deadline,
                   replace_after: bool = False) -> FastCall:
        """The FastCall of an invocation sent to `inst`, its deadline watched (`entry`);
        also where a call the compiled lane (fastfaas._lane) started goes on."""
        call = FastCall(self, fv, inst, start, request_id, payload, cpu_base, replace_after)
        call.entry = entry
        return call

    def _hand_over_unsent(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                          request_id: str, payload: bytes, data: bytes, deadline: float,
                          cpu_base: int, replace_after: bool = False) -> FastCall:
        """The FastCall of an invocation that could not be sent at once (the instance
        dead, or its buffer full): invoke's own path sends it, or retries."""
        call = FastCall(self, fv, inst, start, request_id, payload, cpu_base, replace_after)
        call.later = functools.partial(self._run, fv, inst, start, request_id,
                                       Invocation(data, deadline), cpu_base, False)
        call.waits_first = False  # nothing was sent: no reply will stir `fd`
        return call

    def _count_start(self, fv: FunctionVersion, start: str) -> bool:
        """Count a call's start; for a new instance, size the spares for more and
        replace it. True: the replacement waits for this call's answer (the taken
        spare or fork of a function measured quick: its fork would otherwise run
        beside the call on the same two CPUs), in `_call_done`."""
        self.counters[start] += 1
        if start == "warm":
            return False
        fv.sizer.note_new_instance(self._now())
        if (start in ("prewarmed", "forked") and fv.quick and fv.quick_measured
                and self._defer_spare_fork):
            return True
        self._want_spares(fv)
        return False

    def _watch_deadline(self, deadline: float, inst: InstanceHandle) -> Deadline:
        entry = self._deadlines.push(deadline, inst)
        if deadline < self._watching_until:
            self._deadline_lot.unpark_all()
        return entry

    def _poll_ns(self, fv: FunctionVersion, start: str) -> int:
        """How long to poll for a lone call's reply before sleeping: on a warm
        instance only for a quick handler (a slow one's reply would not come
        within the window); a new instance's start always (a forked start
        measured 0.1-0.2 ms faster with the poll)."""
        return self.spin_ns if fv.quick or start != "warm" else 0

    def _call_done(self, fv: FunctionVersion, replace_after: bool,
                   now: float | None = None) -> None:
        """What every call does at its end, however it ended (`_invoke_once`'s finally)."""
        fv.in_flight -= 1
        self._running -= 1
        fv.last_used = self._now() if now is None else now
        if replace_after:
            self._want_spares(fv)
        if fv.retired:
            self._maybe_finish_draining(fv)

    def _log(self, fv: FunctionVersion, result: InvocationResult) -> None:
        usage = result.usage
        self._log_parts(fv, result.start, result.request_id, result.duration_us,
                        usage.max_memory_bytes, usage.cpu_us, usage.throttled_us,
                        None if result.error is None else result.error.kind, result.log_tail,
                        result.escalated_mb)

    def _log_parts(self, fv: FunctionVersion, start: str, request_id: str, duration_us: int,
                   peak: int, cpu_us: int, held_us: int, kind: str | None, log_tail: bytes,
                   escalated_mb: int) -> None:
        name = fv.name
        now = time.time()
        size = escalated_mb or fv.config.memory_mb
        sample = sizing.UsageSample(now, peak, cpu_us, duration_us, kind or "success", start,
                                    size, held_us)
        fv.usage.append(sample)
        if size == fv.config.memory_mb:
            fv.auto_count += 1
        if self._new_usage is not None:
            pending = self._new_usage.get((name, fv.version))
            if pending is None:
                pending = self._new_usage[name, fv.version] = sizing.history()
            pending.append(sample)
        if name not in self._functions:
            return  # deleted while the call ran
        entries = self._logs.get(name)
        if entries is None:
            entries = self._logs[name] = collections.deque(maxlen=self._log_entries)
        entries.append(LogEntry(now, request_id, start, duration_us, kind, log_tail))

    async def _invoke_once(self, fv: FunctionVersion, raw: bytes, request_id: str,
                           route_key: str | None = None,
                           route_wait: bool = True) -> InvocationResult:
        fv.in_flight += 1  # counts as busy for the reaper until the finally below
        self._running += 1
        start = "warm"
        replace_after = False
        frequent = fv.freq.note_call(self._now(), fv.in_flight)
        route = "direct"
        try:
            affinity = ""
            routed: InstanceHandle | None = None
            if route_key is not None:
                routed, affinity = await self._affinity(fv, route_key, route_wait)
            got = (routed.table_id, _native.KIND_WARM) if routed is not None else (
                self.table.acquire(fv.slot))
            if got is not None:
                inst = fv.instances[got[0]]
                if got[1] == _native.KIND_SPARE:
                    start = "prewarmed"
                invocation = self._invocation(fv, raw, request_id)
                cpu_base = self.cgroups.begin(inst.cgroup) if inst.cgroup is not None else 0
                sent = False
            else:
                self._admit_start(fv, claim=fv.zygote is None or fv.zygote.dead)
                if frequent:
                    started = await self._start_instance(fv, raw, request_id)
                else:  # the long tail starts a few at a time, not all at once
                    route = "queued"
                    self.counters["queued_starts"] += 1
                    async with self._start_queue:
                        started = await self._start_instance(fv, raw, request_id)
                if isinstance(started, InvocationResult):
                    return started
                start, inst, invocation = started
                self.table.set_state(inst.table_id, _native.STATE_BUSY)
                cpu_base = inst.cpu_base
                sent = True  # the zygote handed the event to the instance at its fork
            replace_after = self._count_start(fv, start)
            # A new key (or one whose instance died) is this instance's from now, and a
            # call with it meanwhile waits for it; a call that left a busy instance
            # does not take the key from it (that instance holds the key's state).
            if route_key is not None and route_key not in fv.routes:
                self._remember_route(fv, route_key, inst)
            result = await self._run(fv, inst, start, request_id, invocation, cpu_base, sent)
            if route_key is None and route == "direct":
                return result
            return msgspec.structs.replace(result, affinity=affinity, route=route)
        finally:
            self._call_done(fv, replace_after)

    def _escalation_size(self, fv: FunctionVersion, result: InvocationResult) -> int:
        """escalate_on_oom: the next size up (doubling, up to max_memory_mb or 10240)
        after an OutOfMemory; 0 when there is none to try."""
        cfg = fv.config
        if (result.error is None or result.error.kind != errors.OUT_OF_MEMORY
                or not cfg.escalate_on_oom or not fv.cgrouped or fv.retired):
            return 0  # (retired: replaced meanwhile; its zygote may be gone)
        size = min(cfg.memory_mb * 2, cfg.max_memory_mb or 10240)
        return size if size > cfg.memory_mb else 0

    async def _invoke_escalated(self, fv: FunctionVersion, raw: bytes, request_id: str,
                                memory_mb: int, failed: InvocationResult) -> InvocationResult:
        """The invocation once more, at `memory_mb`, in an instance forked for it; the
        `failed` result stands if it cannot run there."""
        got = await self._run_at_size(fv, raw, [request_id], memory_mb)
        if not got:
            return failed
        result = got[0]
        if not result.instance_id:
            return result  # it never ran there (an InitError, or no instance took it)
        self.counters["escalations"] += 1
        return msgspec.structs.replace(result, escalated_mb=memory_mb)

    async def _run_at_size(self, fv: FunctionVersion, raw: bytes, request_ids: list[str],
                           memory_mb: int) -> list[InvocationResult]:
        """The event once per request id, one after another, in an instance forked at
        `memory_mb` for them (another if one dies) and retired after: its cgroup is
        not the function's size, so it serves nothing else (`one_off`). Fewer results
        than ids when the version is replaced or deleted meanwhile."""
        fv.in_flight += 1
        self._running += 1
        results: list[InvocationResult] = []
        inst: InstanceHandle | None = None
        running = False  # a call of ours is in `inst`: if we are cancelled, the
        #                  abandoned call's task retires it when it ends
        try:
            for request_id in request_ids:
                if inst is not None and not inst.dead:  # BUSY since its last call: ours
                    invocation = self._invocation(fv, raw, request_id)
                    cpu_base = self.cgroups.begin(inst.cgroup) if inst.cgroup else 0
                    start, sent = "warm", False
                else:
                    if fv.retired:
                        break  # replaced or deleted meanwhile: what ran is the answer
                    self._admit_start(fv, claim=fv.zygote is None or fv.zygote.dead)
                    started = await self._start_instance(fv, raw, request_id, memory_mb)
                    self._cg_hint = fv.config.memory_mb  # the pool keeps the function's size
                    if isinstance(started, InvocationResult):
                        results.append(started)  # its InitError
                        continue
                    _, inst, invocation = started
                    self.table.set_state(inst.table_id, _native.STATE_BUSY)
                    cpu_base, start, sent = inst.cpu_base, "forked", True
                running = True
                try:
                    results.append(await self._run(fv, inst, start, request_id, invocation,
                                                   cpu_base, sent))
                except _Retry:  # it died before it had the event: the next one gets it
                    results.append(_error_result(
                        FunctionError(errors.CRASHED, "Runtime.ExitError",
                                      "the instance exited before it took the event"),
                        start, request_id))
                except trio.Cancelled:
                    raise  # (running: the abandoned call's task has the instance now)
                except BaseException:
                    running = False
                    raise
                running = False
        finally:
            if inst is not None and not running:
                self._retire(inst)
            fv.in_flight -= 1
            self._running -= 1
            if fv.retired:
                self._maybe_finish_draining(fv)
        return results

    async def tune(self, name: str, event: Any = None, *, payload: bytes | None = None,
                   sizes: Sequence[int] = sizing.TUNE_SIZES, runs: int = sizing.TUNE_RUNS,
                   version: str = LATEST) -> sizing.TuneReport:
        """Power-Tuning-style trials: the event `runs` times at each memory size, in an
        instance forked at that size from the function's zygote (the first run forks
        it, the others are warm), one size after another. The function's own
        instances, size and usage record are untouched; its side effects happen
        `runs` x len(sizes) times.

        Raises:
            InvalidRequestError: a size outside 128-10240 MB, runs < 5, no sizes, or a
                function without cgroups (sizes would not hold).
        """
        self._check_open()
        fv = self._lookup(name, version)
        sizes = sorted(set(sizes))
        if not sizes or any(not sizing.MIN_MB <= mb <= sizing.MAX_MB for mb in sizes):
            raise InvalidRequestError(f"tune: sizes must be between {sizing.MIN_MB} and"
                                      f" {sizing.MAX_MB} MB (got {sizes or 'none'})")
        if len(sizes) > sizing.TUNE_MAX_SIZES:
            raise InvalidRequestError(f"tune: at most {sizing.TUNE_MAX_SIZES} sizes"
                                      f" (got {len(sizes)})")
        if not sizing.TUNE_RUNS <= runs <= sizing.TUNE_MAX_RUNS:
            raise InvalidRequestError(f"tune: runs {runs} must be between"
                                      f" {sizing.TUNE_RUNS} and {sizing.TUNE_MAX_RUNS}")
        if not fv.cgrouped:
            raise InvalidRequestError(f"tune: function {name!r} runs without cgroups"
                                      f" (isolation {fv.isolation}): its size is not enforced")
        raw = _event_bytes(event, payload)
        refused = self.limits.try_acquire(name, fv.config.max_concurrency)  # one execution
        if refused is not None:
            raise TooManyRequestsError(refused)
        trials: dict[int, list[tuple[int, str | None]]] = {}
        fv.in_flight += 1  # its zygote stays while the tune runs, even if it is replaced
        try:
            for mb in sizes:
                if fv.retired:
                    break
                ids = [self._request_ids.next() for _ in range(runs)]
                got = await self._run_at_size(fv, raw, ids, mb)
                self.counters["tune_runs"] += len(got)
                if len(got) < runs:  # cut short: a partial size would mislead
                    break
                trials[mb] = [(r.duration_us, None if r.error is None else r.error.kind)
                              for r in got]
        finally:
            fv.in_flight -= 1
            self.limits.release(name)
            if fv.retired:
                self._maybe_finish_draining(fv)
        stopped = "" if len(trials) == len(sizes) else (
            f"function {name!r} was changed or deleted during the tune:"
            f" {len(trials)} of {len(sizes)} sizes ran")
        return msgspec.structs.replace(sizing.tune_report(trials), stopped=stopped)

    async def _affinity(self, fv: FunctionVersion, key: str,
                        wait: bool) -> tuple[InstanceHandle | None, str]:
        """The key's instance, taken (BUSY), or None and why: miss or fallback."""
        inst = fv.routes.get(key)
        if inst is None:
            return None, "miss"
        if inst.dead or fv.instances.get(inst.table_id) is not inst:
            del fv.routes[key]  # it died: whoever serves the call takes the key
            return None, "fallback"
        state = self.table.state(inst.table_id)
        if state == _native.STATE_IDLE:
            self.table.set_state(inst.table_id, _native.STATE_BUSY)
            self.counters["affinity_hits"] += 1
            return inst, "hit"
        if state != _native.STATE_BUSY or not wait:
            self.counters["affinity_fallbacks"] += 1
            return None, "fallback"
        waiter = _Waiter()
        inst.waiters.append(waiter)
        self._notify()
        try:
            with trio.move_on_after(self.affinity_wait_s):
                await waiter.event.wait()
        except BaseException:  # cancelled: give back an instance handed over meanwhile
            if waiter.inst is not None:
                self._hand_back(waiter.inst)
            elif waiter in inst.waiters:
                inst.waiters.remove(waiter)
            raise
        if waiter.inst is not None:
            self.counters["affinity_hits"] += 1
            return waiter.inst, "hit"
        if waiter in inst.waiters:
            inst.waiters.remove(waiter)
        self.counters["affinity_fallbacks"] += 1
        return None, "fallback"

    def _hand_back(self, inst: InstanceHandle) -> None:
        """An instance done with its call: to the next call waiting for it by key, or idle."""
        while inst.waiters:
            waiter = inst.waiters.pop(0)
            if not waiter.event.is_set():
                waiter.inst = inst  # stays BUSY: the waiter runs on it next
                waiter.event.set()
                return
        self._set_idle(inst, spare=False)

    def _set_idle(self, inst: InstanceHandle, *, spare: bool, now: float | None = None) -> None:
        if now is None:
            now = self._now()
        inst.idle_since = now
        inst.spare = spare
        self.table.set_state(inst.table_id, _native.STATE_IDLE,
                             _native.KIND_SPARE if spare else _native.KIND_WARM, now)
        self._notify()

    # --- memory budget -------------------------------------------------------------

    def _admit_start(self, fv: FunctionVersion, *, claim: bool) -> None:
        """Make room for a new instance (and a zygote, for a claim) within the memory
        budget: evict idle instances of other functions, least recently used
        first, then spares; or refuse.

        Raises:
            TooManyRequestsError: even evicting every idle instance would not do.
        """
        self._admit_descriptors(fv)
        need = fv.instance_memory + (ZYGOTE_ESTIMATE if claim else 0)
        over = self._memory_used + need - self.memory_budget
        if over <= 0:
            return
        chosen = self._evict_idle(fv, over, by_memory=True)
        if not chosen:
            self.counters["memory_refusals"] += 1
            mb = 1024 * 1024
            raise TooManyRequestsError(
                f"the memory budget is full: {self._memory_used // mb} MB of"
                f" {self.memory_budget // mb} MB in use by zygotes and instances that are"
                f" busy or cannot be evicted, and {fv.name} needs ~{need // mb} MB more;"
                " retry later, or raise the budget (--memory-budget-mb)")
        for c in chosen:
            self._memory_used -= c.memory
            self.counters["evicted_spares" if c.spare else "evicted_instances"] += 1

    def _admit_descriptors(self, fv: FunctionVersion) -> None:
        """Each live instance holds ~6 descriptors in the server (socket, pidfd,
        four cgroup files): past what RLIMIT_NOFILE allows, evict idle instances
        of other functions (least recently used first) or refuse."""
        live = self._live_instances()
        over = live + 1 - self._max_instances
        if over <= 0:
            return
        chosen = self._evict_idle(fv, over, by_memory=False)
        if not chosen:
            self.counters["descriptor_refusals"] += 1
            raise TooManyRequestsError(
                f"the server holds {live} instances, all it can with its RLIMIT_NOFILE"
                f" ({self._max_instances} at ~{FDS_PER_INSTANCE} descriptors each), and none"
                " is idle to make room; retry later, or raise the limit")
        self.counters["evicted_for_descriptors"] += len(chosen)

    def _evict_idle(self, fv: FunctionVersion, need: int, *,
                    by_memory: bool) -> list[policy.Candidate]:
        """Evict idle instances of functions other than `fv`, least recently used
        first, then spares, worth `need` (bytes, or instances); nothing and []
        if even all of them would not do."""
        candidates = [
            policy.Candidate(inst, other.name, inst.spare, inst.idle_since,
                             (inst.memory or other.instance_memory) if by_memory else 1)
            for other in self._functions.values() if other.name != fv.name
            for inst in other.instances.values()
            if not inst.dead and self.table.state(inst.table_id) == _native.STATE_IDLE]
        # Those the reaper has taken out of service but not stopped yet go first.
        candidates += [
            policy.Candidate(inst, inst.fv.name, False, -math.inf,
                             (inst.memory or inst.fv.instance_memory) if by_memory else 1)
            for inst in self._reaping if not inst.dead and inst.fv.name != fv.name]
        chosen = policy.eviction_order(candidates, need=need, protect=fv.name)
        for c in chosen:
            if self.table.state(c.key.table_id) == _native.STATE_IDLE:  # (not the reaper's)
                self.table.set_state(c.key.table_id, _native.STATE_DRAINING)
            self._retire(c.key)
        return chosen

    def _live_instances(self) -> int:
        return sum(len(f.instances) for f in [*self._functions.values(), *self._draining])

    async def _measure_memory(self) -> None:
        """The memory of every zygote and instance (their memory cgroups; RSS without
        cgroups), and each function's instance size: every 0.5 s, or every 2 s past
        200 processes."""
        while True:
            zygotes = list(self._all_zygotes)
            instances: list[InstanceHandle] = []
            spans = []
            for fv in [*self._functions.values(), *self._draining]:
                first = len(instances)
                instances.extend(fv.instances.values())
                spans.append((fv, first, len(instances)))
            sizes = await self._memory_of_all([*zygotes, *instances])
            of_instances = sizes[len(zygotes):]
            for inst, size in zip(instances, of_instances, strict=True):
                inst.memory = size
            for fv, first, end in spans:
                largest = max(of_instances[first:end], default=0)
                if largest:
                    fv.instance_memory = largest
            self._memory_used = sum(sizes)
            self._measured.set()
            self._measured = trio.Event()
            await trio.sleep(MEMORY_MEASURE_S if len(sizes) < 200 else MEMORY_MEASURE_SLOW_S)

    async def _memory_of_all(self, owners: Sequence[ZygoteHandle | InstanceHandle]) -> list[int]:
        """The memory of each: its memory cgroup's usage (0 with a cgroup but no memory
        controller), or its RSS without a cgroup. The cgroups' files are read in C in a
        worker thread without the GIL: a pass over 2,900 processes in the event loop,
        even yielding every 64 reads, held up requests in the Zipf benchmark."""
        sizes = [0] * len(owners)
        files: list[bytes] = []
        at: list[int] = []
        for i, o in enumerate(owners):
            if o.cgroup is None or not self.cgroups.enabled:
                sizes[i] = self._rss_of(o.proc)
                if (i + 1) % MEASURE_BATCH == 0:
                    await trio.lowlevel.checkpoint()
            elif (path := self.cgroups.usage_file(o.cgroup)) is not None:
                files.append(path)
                at.append(i)
        if files:
            read = await trio.to_thread.run_sync(_native.read_files_i64, files)
            for i, size in zip(at, read, strict=True):
                sizes[i] = size
        return sizes

    def _notify(self) -> None:
        """Something observable changed (an instance's state, a function's class)."""
        changed = self._changed
        if changed is not None:  # an Event only while someone waits (this runs per call)
            self._changed = None
            changed.set()

    async def wait_changed(self) -> None:
        """Until the next change of an instance's state or a function's class, or
        a reaper pass: for callers that watch `statistics()` (tests, tools)."""
        if self._changed is None:
            self._changed = trio.Event()
        await self._changed.wait()

    async def wait_memory_measured(self) -> int:
        """Until the next measurement of the memory in use has completed; returns it."""
        await self._measured.wait()
        return self._memory_used

    @staticmethod
    def _rss_of(proc: Process | None) -> int:
        if proc is None or proc.pid is None:
            return 0
        try:
            with open(f"/proc/{proc.pid}/statm", "rb") as f:
                return int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            return 0

    def _remember_route(self, fv: FunctionVersion, key: str, inst: InstanceHandle) -> None:
        routes = fv.routes
        if routes.get(key) is not inst:
            routes.pop(key, None)
            routes[key] = inst
            if len(routes) > MAX_ROUTE_KEYS:  # bounded: the oldest key is forgotten
                del routes[next(iter(routes))]

    def _invocation(self, fv: FunctionVersion, raw: bytes, request_id: str) -> Invocation:
        """The encoded Invoke message and its deadline (monotonic and trio clocks)."""
        timeout = fv.config.timeout_s
        deadline = self._now() + timeout
        data = wire.encoder.encode(wire.Invoke(request_id, raw, time.monotonic() + timeout))
        return Invocation(data, deadline)

    async def _start_instance(
        self, fv: FunctionVersion, raw: bytes, request_id: str, memory_mb: int | None = None
    ) -> tuple[str, InstanceHandle, Invocation] | InvocationResult:
        """An instance forked with the invocation already in its hands (its deadline runs);
        `memory_mb`: in a cgroup of that size instead of the function's."""
        start = "forked"
        for _attempt in range(3):
            z = fv.zygote
            if z is None or z.dead:
                claimed = await self._claim(fv)
                if isinstance(claimed, FunctionError):
                    return _error_result(claimed, "claimed", request_id, fv.init_log)
                start = claimed
                continue
            invocation = self._invocation(fv, raw, request_id)
            inst = await self._spawn(fv, z, invocation.data, memory_mb)
            if inst is not None:
                return start, inst, invocation
            z.dead = True  # unreachable: claim another
            if fv.zygote is z:
                fv.zygote = None
        raise ZygoteError(f"function {fv.name}: its zygote keeps dying while forking instances")

    async def _claim(self, fv: FunctionVersion) -> str | FunctionError:
        """Give the function version a zygote: 'claimed', 'cold', or the InitError."""
        if fv.claiming is not None:
            await fv.claiming.wait()
            if fv.zygote is None and fv.claim_error is not None:
                return fv.claim_error
            return "claimed"
        fv.claiming = trio.Event()
        fv.claim_error = None
        try:
            z, kind = await self._take_generic(fv.sandbox)
            result = await self._claim_zygote(fv, z)
            if isinstance(result, FunctionError):
                fv.claim_error = result
                return result
            fv.zygote = z
            self.counters["claims"] += 1
            return kind
        finally:
            fv.claiming.set()
            fv.claiming = None

    async def _take_generic(self, sandbox: wire.Sandbox | None) -> tuple[ZygoteHandle, str]:
        if sandbox != self._pool_sandbox:
            # The pool holds the server default's kind of zygote; another kind
            # (a per-function isolation or network) is forked on demand.
            return await self._fork_generic(sandbox), "cold"
        self._pool_sizer.note_claim(self._now())
        while self._pool:
            z = self._pool.popleft()
            self._pool_lot.unpark_all()
            if not z.dead:
                return z, "claimed"
        self._pool_lot.unpark_all()
        return await self._fork_generic(sandbox), "cold"

    @trio.lowlevel.enable_ki_protection
    async def _keep_template(self, task_status: trio.TaskStatus[None]) -> None:
        """Run the template zygote; start a new one if it dies.

        Its death takes every zygote and instance with it (parent-death
        signals): their callers see Crashed, later calls claim anew. A
        template that fails to boot (the reserved status), or dies five times
        in a minute, is not restarted: claims then raise ZygoteError.
        """
        first = True
        while True:
            template = self.template if first else self._new_template()
            self.template = template
            failed: BaseException | None = None
            try:
                try:
                    template.start()
                    if self.cgroups.enabled:
                        for root in self.cgroups.roots.values():
                            (root / "cgroup.procs").write_text(str(template.pid))
                    if first:
                        await template.serve(task_status=task_status)
                    else:
                        async with trio.open_nursery() as nursery:
                            await nursery.start(template.serve)
                            self._template_up.set()
                except BaseExceptionGroup as group:  # from the nursery: what it holds
                    match, rest = group.split((ZygoteError, OSError))
                    if rest is not None or match is None:
                        raise
                    failed = match.exceptions[0]
            except (ZygoteError, OSError) as exc:
                failed = exc
            finally:
                template.close()
            if failed is not None:
                if first:
                    raise failed
                # Cannot fork, out of descriptors, or it died at once: claims now
                # raise ZygoteError; the server (warm instances, the API) goes on.
                print(f"fastfaas: the template zygote could not restart: {failed}",
                      file=sys.stderr)
                self._template_up.set()  # waiters see that it is not ready
                return
            first = False
            if self._closing:
                return
            self._template_up = trio.Event()
            self._pool.clear()  # its generic zygotes died with it
            now = trio.current_time()
            self._template_restarts.append(now)
            while self._template_restarts and now - self._template_restarts[0] > 60:
                self._template_restarts.popleft()
            code = await trio.to_thread.run_sync(template.wait_status)
            if code == EXIT_BOOT_FAILED or len(self._template_restarts) > 5:
                print(f"fastfaas: the template zygote exited ({code}); not restarting it",
                      file=sys.stderr)
                self._template_up.set()
                return
            print(f"fastfaas: the template zygote exited ({code}); restarting it",
                  file=sys.stderr)
            self.counters["template_restarts"] += 1

    async def _fork_generic(self, sandbox: wire.Sandbox | None) -> ZygoteHandle:
        if not self.template.ready.is_set() or self.template.chan is None or (
                self.template.chan.closed):
            await self._template_up.wait()  # a restart is under way
        z = await self.template.fork_zygote(sandbox)
        z.on_instance_exit = self._instance_exited
        self._all_zygotes.add(z)
        assert self._nursery is not None
        self._nursery.start_soon(self._watch_zygote, z)
        return z

    async def _claim_zygote(self, fv: FunctionVersion, z: ZygoteHandle) -> FunctionError | None:
        cfg = fv.config
        cg: CgroupSet | None = None
        if fv.cgrouped:
            try:
                cg = await trio.to_thread.run_sync(self.cgroups.new_zygote, cfg.memory_mb)
            except BaseException:
                z.stop()  # taken from the pool for this claim: not left running
                raise
        z.cgroup = cg
        z.fv = fv
        claim = wire.Claim(
            function_name=fv.name,
            version=fv.version,
            code_dir=str(fv.code_dir),
            handler=cfg.handler,
            env=dict(cfg.env),
            memory_mb=cfg.memory_mb,
            timeout_s=cfg.timeout_s,
            rlimits=self._instance_rlimits(cfg, fv.cgrouped),
            self_usage=not fv.cgrouped,
            tmp_mb=cfg.tmp_mb,
            region=REGION,
        )
        try:
            await z.chan.send(claim, cg.join_fds if cg else [])
        except OSError:
            z.stop()  # it died in the pool (its template did?): the import never ran
            raise _Retry() from None
        with trio.move_on_after(cfg.init_timeout_s) as scope:
            await z.claim_done.wait()
        if scope.cancelled_caught:
            z.stop()
            return _init_error(
                f"importing {cfg.handler!r} did not finish within init_timeout_s="
                f"{cfg.init_timeout_s:g}s", "Init.Timeout")
        claimed = z.claimed
        if claimed is None:
            with trio.move_on_after(EXIT_STATUS_WAIT_S):
                if z.proc is not None:
                    await z.proc.exited.wait()
                await z.gone.wait()
            status = z.proc.status if z.proc is not None else None
            why = describe_status(status) if status is not None else "an unknown status"
            oom = z.oom_killed
            z.stop()
            if oom:
                return _init_error(
                    f"the import of {cfg.handler!r} ran out of memory (memory_mb={cfg.memory_mb})",
                    "Init.OutOfMemory")
            return _init_error(f"the zygote exited with {why} while importing {cfg.handler!r}",
                               "Init.Crashed")
        fv.init_log = claimed.log_tail[-wire.LOG_TAIL:]
        if not claimed.ok:
            z.stop()
            return FunctionError(errors.INIT_ERROR, claimed.error_type[:MAX_ERROR_TYPE],
                                 claimed.error_message[:MAX_ERROR_MESSAGE],
                                 [line[:MAX_ERROR_MESSAGE] for line in claimed.stack_trace[:200]])
        if claimed.threads > 1:
            print(f"fastfaas: {fv.name}: its import started {claimed.threads - 1} thread(s); "
                  "threads do not survive the fork into instances", file=sys.stderr)
        if cg is not None:
            # The import is done: room for its instances' kernel memory. Two cgroup
            # writes, done here: a thread hop would cost more than they do.
            try:
                self.cgroups.room_for_children(cg, cfg.memory_mb,
                                               self.limits.limit + cfg.prewarm + SPARES_MAX)
            except CgroupError as exc:
                print(f"fastfaas: {fv.name}: {exc}", file=sys.stderr)
        return None

    def _instance_rlimits(self, cfg: FunctionConfig,
                          cgrouped: bool) -> list[tuple[int, int, int]]:
        _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limits = [
            (resource.RLIMIT_CORE, 0, 0),
            (resource.RLIMIT_NOFILE, min(1024, nofile_hard), nofile_hard),
        ]
        if not cgrouped:
            data = cfg.memory_mb * 1024 * 1024
            limits.append((resource.RLIMIT_DATA, data, data))
        return limits

    async def _spawn(self, fv: FunctionVersion, z: ZygoteHandle, first: bytes = b"",
                     memory_mb: int | None = None) -> InstanceHandle | None:
        """Fork one instance (state SPAWNING), handing it `first` (an encoded
        Invoke) to run at once; None if the zygote is gone. `memory_mb`: a cgroup
        of that size for a one-off instance (escalation, tuning), which serves only
        the calls of the one that asked for it."""
        # may raise: before anything is held
        size = memory_mb or fv.config.memory_mb
        cg = await self._take_cgroup(size) if fv.cgrouped else None
        if fv.slot_released:  # a retired version, drained (perhaps while a cgroup was
            #                   being made): nothing may join its slot
            if cg is not None:
                self._cg_free.append(cg)
            raise ZygoteError(f"function {fv.name}: this version was replaced or deleted")
        tid = self.table.add(fv.slot)
        spawn_id = next(self._spawn_ids)
        inst = InstanceHandle(tid, f"{self._rid}-{next(self._instance_names)}", fv, z, cg,
                              one_off=memory_mb is not None)
        fv.instances[tid] = inst
        z.instances[spawn_id] = inst
        server_end, child_end = wire.new_seqpacket_pair()
        inst.chan = AsyncChannel(server_end)
        sent = False
        try:
            if cg is not None:
                cg.oom_seen = self.cgroups.oom_kills(cg)
                inst.cpu_base = self.cgroups.begin(cg, fresh=True)
            sent = await z.spawn(spawn_id, child_end.fileno(), cg.join_fds if cg else [], first)
        finally:
            child_end.close()
            if cg is not None:
                self.cgroups.drop_join_fds(cg)  # the zygote has its own copies now
            if not sent:
                z.instances.pop(spawn_id, None)  # no process: no exit report will come
                inst.spawned.set()
                self._retire(inst)
        if not sent:
            return None
        self.counters["spawns"] += 1
        return inst

    async def _run(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                   request_id: str, invocation: Invocation, cpu_base: int,
                   sent: bool) -> InvocationResult:
        """Hand the invocation to the instance and turn its answer into a result.

        No cancel scope on this path (each costs microseconds): the deadline
        is enforced by the deadline watcher, which kills the instance, and a
        caller cancelled meanwhile leaves the invocation to finish in the
        background (_finish_abandoned).
        """
        assert inst.chan is not None
        entry = self._watch_deadline(invocation.deadline, inst)
        try:
            if not sent:
                try:
                    await inst.chan.send_bytes(invocation.data, [])
                except OSError:
                    entry.finish()  # dead before it got the event: try another
                    self._retire(inst)
                    raise _Retry() from None
            try:
                # Poll only for a lone invocation: with others in flight their
                # replies and requests arrive meanwhile, and the loop must run.
                got = await inst.chan.recv(
                    self._poll_ns(fv, start) if self._running == 1 else 0)
            except (OSError, wire.FrameError):
                got = None
        except trio.Cancelled:
            if self._nursery is not None and not self._closing:
                self._nursery.start_soon(self._finish_abandoned, inst, entry, cpu_base,
                                         request_id)
            else:
                entry.finish()
                self._retire(inst)
            raise
        entry.finish()
        return await self._finish(fv, inst, start, request_id, got, cpu_base)

    async def _finish(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                      request_id: str, got: tuple[bytes, list[int]] | None,
                      cpu_base: int) -> InvocationResult:
        """The answer as an InvocationResult; the instance back to its stack or retired.

        Awaits (shielded) only when the instance died or left processes behind.
        """
        done = self._finish_now(fv, inst, start, request_id, got, cpu_base)
        return done if isinstance(done, InvocationResult) else await done()

    def _finish_now(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                    request_id: str, got: tuple[bytes, list[int]] | None, cpu_base: int,
                    ended: tuple[int, int, int, int] | None = None,
                    ) -> InvocationResult | Callable[[], Awaitable[InvocationResult]]:
        """`_finish` without waiting: the result, or when the instance died or left
        processes behind, what to await for it (shielded from cancellation).
        `ended`: what `Cgroups.end` gave already for this reply."""
        if inst.timed_out:
            fv.quick = False
            if got is not None:
                wire.close_all(got[1])
            self._retire(inst)
            self.counters["timeouts"] += 1
            timeout = fv.config.timeout_s
            return _error_result(
                FunctionError(errors.TIMEOUT, "Timeout",
                              f"Task timed out after {timeout:.2f} seconds"),
                start, request_id, instance_id=inst.instance_id, duration_us=int(timeout * 1e6))
        result: wire.Result | None = None
        bad: FunctionError | None = None
        if got is not None:
            if got[1]:
                wire.close_all(got[1])
            try:
                result = wire.instance_out.decode(got[0])
            except ValueError as exc:  # msgspec.DecodeError: garbage on its channel
                bad = _invalid_response(f"a malformed message ({exc})")
            else:
                if len(result.payload) > wire.MAX_PAYLOAD:  # past the instance's own check
                    bad = FunctionError(errors.RESULT_TOO_LARGE, "ResultTooLarge",
                                        f"Response payload size ({len(result.payload)} bytes)"
                                        " exceeded maximum allowed payload size"
                                        f" ({wire.MAX_PAYLOAD} bytes).")
                elif result.request_id != request_id:
                    bad = _invalid_response("an answer that is not this invocation's")
        if bad is not None or result is None:
            fv.quick = False  # it died or misbehaved: nothing to poll for next time
            if bad is not None:
                # Its code wrote on its channel: nothing the instance says can be trusted.
                inst.kill()

            async def died() -> InvocationResult:
                with trio.CancelScope(shield=True):
                    result = await self._instance_died(inst, start, request_id, bad)
                return result

            return died
        cg = inst.cgroup
        if cg is not None:
            # A reply over INLINE_MAX came as a memfd: the next call begins afresh.
            peak, cpu_ns, tasks, held_ns = ended or self.cgroups.end(
                cg, cpu_base, carry=got is not None and len(got[0]) <= wire.INLINE_MAX)
            if tasks > 1:
                answer = result

                async def leftovers() -> InvocationResult:
                    with trio.CancelScope(shield=True):
                        await self._kill_leftovers(inst)
                    return self._answered(fv, inst, start, request_id, answer, peak, cpu_ns,
                                          held_ns)

                return leftovers
        else:
            peak, cpu_ns, held_ns = result.max_rss_kb * 1024, result.cpu_ns, 0
        return self._answered(fv, inst, start, request_id, result, peak, cpu_ns, held_ns)

    def _answered(self, fv: FunctionVersion, inst: InstanceHandle, start: str,
                  request_id: str, result: wire.Result, peak: int, cpu_ns: int,
                  held_ns: int) -> InvocationResult:
        """An instance's answer as an InvocationResult; the instance put back or retired."""
        if fv.retired or inst.dead:
            self._retire(inst)
        elif inst.one_off:
            pass  # stays BUSY: the call that forked it runs its next call or retires it
        elif inst.waiters:
            self._hand_back(inst)
        else:
            self._set_idle(inst, spare=False)
        if start == "warm":  # a new instance's first call also takes its page faults
            fv.quick = result.duration_ns < self.spin_ns
            fv.quick_measured = True
        error = None
        if not result.ok:
            kind = errors.RESULT_TOO_LARGE if result.too_large else errors.UNHANDLED
            # Bounded here too: the instance's code may have sent this Result itself.
            error = FunctionError(kind, result.error_type[:MAX_ERROR_TYPE],
                                  result.error_message[:MAX_ERROR_MESSAGE],
                                  _stack_of(result.payload))
            payload = result.payload or _error_payload(error)
        else:
            payload = result.payload
        return InvocationResult(payload, error, start, inst.instance_id, request_id,
                                result.duration_ns // 1000,
                                Usage(peak, cpu_ns // 1000, held_ns // 1000),
                                result.log_tail[-wire.LOG_TAIL:])

    @trio.lowlevel.enable_ki_protection
    async def _finish_abandoned(self, inst: InstanceHandle, entry: Deadline,
                                cpu_base: int, request_id: str) -> None:
        """The caller was cancelled: let the invocation run to its end, drop its result."""
        assert inst.chan is not None
        with trio.CancelScope(shield=True):
            try:
                got = await inst.chan.recv()
            except (OSError, wire.FrameError):
                got = None
            entry.finish()
            self.counters["abandoned"] += 1
            try:
                await self._finish(inst.fv, inst, "abandoned", request_id, got, cpu_base)
            except _Retry:
                pass  # it never reached a handler: nothing to do
            except Exception as exc:  # nobody waits for this result: keep the server
                self._background_error("an abandoned invocation could not be finished", exc)
                self._retire(inst)
            if inst.one_off:  # its caller is gone: nobody else may have it
                self._retire(inst)

    @trio.lowlevel.enable_ki_protection
    async def _watch_deadlines(self) -> None:
        """Kill instances whose invocation passed its deadline (their recv then sees EOF).

        With nothing in flight it still wakes every MIN_TIMEOUT_S: a new
        invocation's deadline is then never earlier than the wake-up, so a
        call after a quiet spell does not have to wake this task.
        """
        while True:
            nxt = self._deadlines.next_deadline()
            self._watching_until = (
                nxt if nxt is not None else trio.current_time() + MIN_TIMEOUT_S)
            with trio.move_on_at(self._watching_until):
                await self._deadline_lot.park()
                continue  # an earlier deadline arrived: look again
            for inst in self._deadlines.expired(trio.current_time()):
                inst.timed_out = True
                inst.kill()

    async def _instance_died(self, inst: InstanceHandle, start: str, request_id: str,
                             killed_for: FunctionError | None = None) -> InvocationResult:
        """The result of an invocation whose instance died, or was killed for
        what it sent (`killed_for`, the error to report)."""
        with trio.move_on_after(EXIT_STATUS_WAIT_S):
            await inst.spawned.wait()
            if inst.proc is not None:
                await inst.proc.exited.wait()
        if inst.spawn_error:
            self._retire(inst)
            raise _Retry()  # never forked: the event reached no handler
        proc = inst.proc
        oom = inst.cgroup is not None and self.cgroups.oom_kills(inst.cgroup) > inst.cgroup.oom_seen
        self._retire(inst)
        if killed_for is not None:
            self.counters["invalid_responses"] += 1
            return _error_result(killed_for, start, request_id, instance_id=inst.instance_id)
        if oom:
            self.counters["oom"] += 1
            mb = inst.fv.config.memory_mb
            error = FunctionError(errors.OUT_OF_MEMORY, "Runtime.OutOfMemory",
                                  f"the instance ran out of memory (memory_mb={mb}) and was killed")
        else:
            self.counters["crashes"] += 1
            status = proc.status if proc is not None else None
            why = describe_status(status) if status is not None else "an unknown status"
            error = FunctionError(errors.CRASHED, "Runtime.ExitError",
                                  f"the instance exited with {why} during the invocation")
        return _error_result(error, start, request_id, instance_id=inst.instance_id)

    async def _kill_leftovers(self, inst: InstanceHandle) -> None:
        """Kill the processes a handler left behind in its cgroup (freeze, kill, thaw)."""
        cg = inst.cgroup
        with trio.move_on_after(EXIT_STATUS_WAIT_S):
            await inst.spawned.wait()
        if cg is None or inst.proc is None:
            inst.dead = True  # its pid never came: do not reuse it
            return
        keep = inst.proc.pid
        try:
            self.cgroups.set_frozen(cg, True)
            for _ in range(200):
                if self.cgroups.is_frozen(cg):
                    break
                await trio.sleep(0.001)  # the kernel offers no event for FROZEN in v1
            for pid in self.cgroups.pids(cg):
                if pid != keep:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, 9)
        except (OSError, errors.CgroupError):
            inst.dead = True  # cannot vouch for this instance: do not reuse it
        finally:
            with contextlib.suppress(OSError, errors.CgroupError):
                self.cgroups.set_frozen(cg, False)
        self.counters["leftovers_killed"] += 1

    def _retire(self, inst: InstanceHandle) -> None:
        """Take an instance out of service: kill it; reclaim its cgroup in the background."""
        if inst.table_id < 0:
            return
        inst.dead = True
        self._notify()
        for waiter in inst.waiters:  # calls waiting for it by key: serve them elsewhere
            waiter.event.set()
        inst.waiters.clear()
        state = self.table.state(inst.table_id)
        if state != _native.STATE_DEAD:
            self.table.set_state(inst.table_id, _native.STATE_DEAD)
        inst.kill()
        inst.fv.instances.pop(inst.table_id, None)
        # It stays in its zygote's instances until the zygote reports its exit.
        if inst.chan is not None:
            inst.chan.close()
        tid, inst.table_id = inst.table_id, -1
        if self._nursery is not None and not self._closing:
            self._reclaiming.add(inst)
            self._nursery.start_soon(self._reclaim, inst, tid)
        else:
            self.table.set_state(tid, _native.STATE_FREE)
        if inst.fv.retired:
            self._maybe_finish_draining(inst.fv)

    def _instance_exited(self, inst: InstanceHandle) -> None:
        """An instance died while idle (killed from outside, or its own thread's doing):
        never hand it out, and keep the spares up."""
        if inst.table_id >= 0 and self.table.state(inst.table_id) == _native.STATE_IDLE:
            self._retire(inst)
            self._want_spares(inst.fv)

    @trio.lowlevel.enable_ki_protection
    async def _reclaim(self, inst: InstanceHandle, tid: int) -> None:
        cg = inst.cgroup
        try:
            with trio.move_on_after(10):
                await inst.spawned.wait()
                if inst.proc is not None:
                    # Reaped by its zygote, not only exited: until then it still
                    # counts in its cgroup's pids.current.
                    await inst.proc.exited.wait()
                    await inst.proc.wait_gone()
            self._reclaiming.discard(inst)
            if inst.proc is not None:
                inst.proc.close()
            if cg is not None:
                try:
                    await self._reclaim_cgroup(inst, cg)
                except (CgroupError, OSError) as exc:
                    # Out of descriptors, or a process that will not leave it: the
                    # cgroup stays (the subtree goes at the stop), its descriptors do
                    # not; the server goes on.
                    self._background_error("an instance cgroup could not be reclaimed", exc)
                    self.cgroups.close_fds(cg)
        finally:
            self.table.set_state(tid, _native.STATE_FREE)

    async def _reclaim_cgroup(self, inst: InstanceHandle, cg: CgroupSet) -> None:
        reusable = await trio.to_thread.run_sync(self._empty_cgroup, cg,
                                                 limiter=self._cleanup_limiter)
        # A strict function's code ran in a zygote that held this cgroup's join
        # descriptors (opened by root): it may have kept copies. Reused for another
        # function, they would let it join that one's cgroup. A new cgroup instead: a
        # removed one's descriptors write nowhere.
        reusable = reusable and inst.fv.isolation != "strict"
        if reusable and len(self._cg_free) < self.cgroup_pool_size * 2:
            self.cgroups.ensure_join_fds(cg)
            self.cgroups.mark_throttled(cg)  # the next instance's count starts here
            self._cg_free.append(cg)
        else:
            await trio.to_thread.run_sync(self.cgroups.destroy, cg,
                                          limiter=self._cleanup_limiter)

    def _background_error(self, what: str, exc: BaseException) -> None:
        """A background task's failure that the server survives: said once per kind,
        counted always (statistics()["counters"]["background_errors"])."""
        self.counters["background_errors"] += 1
        self._say(what, exc)

    def _empty_cgroup(self, cg: CgroupSet) -> bool:
        """Kill what is left in a dead instance's cgroup; True when it is empty again."""
        for _ in range(100):
            pids = self.cgroups.pids(cg)
            if not pids and self.cgroups.task_count(cg) == 0:
                self.cgroups.force_empty(cg)
                cg.oom_seen = self.cgroups.oom_kills(cg)
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, 9)
            time.sleep(0.002)  # a worker thread: dying tasks leave with no notification
        return False

    # --- spares, pools, reaping ----------------------------------------------------

    def _spare_target(self, fv: FunctionVersion) -> int:
        if not fv.freq.frequent:
            return fv.config.prewarm  # the long tail keeps no spares
        base = policy.spare_target(prewarm=fv.config.prewarm, spares=self.spares)
        # spares=0 turns the adaptive part off too (tests use it for "no spare").
        return fv.sizer.target(self._now(), base) if self.spares else base

    def _want_spares(self, fv: FunctionVersion) -> None:
        if fv.spare_task or fv.retired or self._nursery is None or self._closing:
            return
        fv.spare_task = True
        self._nursery.start_soon(self._keep_spares, fv)

    @trio.lowlevel.enable_ki_protection
    async def _keep_spares(self, fv: FunctionVersion) -> None:
        try:
            while not fv.retired and fv.zygote is not None and not fv.zygote.dead:
                need = policy.spare_deficit(
                    target=self._spare_target(fv),
                    idle_spares=self.table.idle(fv.slot, _native.KIND_SPARE),
                    spawning=fv.spawning_spares,
                )
                if need <= 0:
                    return
                if self._memory_used + fv.instance_memory > self.memory_budget:
                    self.counters["spares_skipped_for_memory"] += 1
                    return  # spares never evict anything
                if self._live_instances() >= self._max_instances:
                    self.counters["spares_skipped_for_descriptors"] += 1
                    return
                fv.spawning_spares += 1
                try:
                    inst = await self._spawn(fv, fv.zygote)
                    if inst is None:
                        return
                    await inst.spawned.wait()
                    if inst.spawn_error:
                        self._retire(inst)
                        return
                    if not await self._warm_up(inst):
                        self._retire(inst)
                        return
                finally:
                    fv.spawning_spares -= 1
                if _retired(fv):  # deployed anew while this spare was forked
                    self._retire(inst)
                    return
                self._set_idle(inst, spare=True)
        except ZygoteError:
            return
        except (TooManyRequestsError, CgroupError, OSError) as exc:
            # Out of descriptors or cgroups: no spare now; calls still get their
            # own errors. Never takes the runtime down.
            self.counters["spare_errors"] += 1
            if self.counters["spare_errors"] == 1:
                print(f"fastfaas: cannot fork spares ({exc}); going on without",
                      file=sys.stderr)
            return
        finally:
            fv.spare_task = False

    async def _warm_up(self, inst: InstanceHandle) -> bool:
        """Run the instance's invocation path once with a no-op (never the user's handler)."""
        assert inst.chan is not None
        with trio.move_on_after(WARMUP_TIMEOUT_S):
            try:
                await inst.chan.send(wire.Warmup())
                got = await inst.chan.recv()
            except (OSError, wire.FrameError):
                return False
            return got is not None
        return False

    @trio.lowlevel.enable_ki_protection
    async def _fill_warming_pool(self) -> None:
        while True:
            target = self._pool_sizer.target(self._now())
            while len(self._pool) > target:  # demand fell: stop the extra zygotes
                extra = self._pool.pop()
                extra.stop()
                self.counters["generic_zygotes_stopped"] += 1
            need = policy.pool_deficit(target=target, ready=len(self._pool),
                                       forking=self._pool_forking)
            if need <= 0:
                with trio.move_on_after(self._pool_sizer.step_s):  # look at demand again
                    await self._pool_lot.park()
                continue
            self._pool_forking += 1
            try:
                z = await self._fork_generic(self._pool_sandbox)
            except OSError as exc:  # out of descriptors or memory for its socket
                self._background_error("cannot fill the warming pool", exc)
                await trio.sleep(1)
                continue
            except ZygoteError as exc:
                if self.template.ready.is_set() and not self.template.chan_closed():
                    self._background_error("cannot fill the warming pool", exc)
                    await trio.sleep(1)  # back off: the template is up but cannot fork
                    continue
                await self._template_up.wait()  # the template died: wait for the next one
                if not self.template.ready.is_set():
                    return  # it is not coming back
                continue
            finally:
                self._pool_forking -= 1
            self._pool.append(z)
            self._notify()

    @trio.lowlevel.enable_ki_protection
    async def _watch_zygote(self, z: ZygoteHandle) -> None:
        """Serve a zygote's messages; when it is gone, clean up after it."""
        await z.serve()
        z.dead = True
        z.chan.close()
        if z.cgroup is not None:
            with contextlib.suppress(OSError):
                z.oom_killed = self.cgroups.oom_kills(z.cgroup) > 0
        z.gone.set()
        fv = z.fv
        if fv is not None and fv.zygote is z:
            fv.zygote = None
        for inst in list(z.instances.values()):
            if inst.proc is not None and not inst.proc.exited.is_set():
                inst.proc.exited.set()  # no exit report will come: its zygote is gone
            if inst.table_id >= 0 and self.table.state(inst.table_id) == _native.STATE_IDLE:
                self._retire(inst)
        z.instances.clear()
        with trio.CancelScope(shield=True):
            if z.proc is not None:
                z.proc.kill()
                with trio.move_on_after(10):
                    await z.proc.wait_gone()
                z.proc.close()
            if z.cgroup is not None:
                try:
                    await trio.to_thread.run_sync(self.cgroups.destroy, z.cgroup,
                                                  limiter=self._cleanup_limiter)
                except (CgroupError, OSError) as exc:  # a process that will not leave it
                    self._background_error("a zygote cgroup could not be removed", exc)
        self._all_zygotes.discard(z)

    def _stop_zygote(self, fv: FunctionVersion) -> None:
        z = fv.zygote
        fv.zygote = None
        self._drain_idle(fv)
        if z is not None:
            z.stop()
            self.counters["zygotes_reaped"] += 1

    async def _take_cgroup(self, memory_mb: int) -> CgroupSet | None:
        """An instance cgroup of this size, from the pool when it has one.

        Sizing costs ~0.2 ms of cgroup writes, and a write can wait on the kernel's
        cgroup lock for milliseconds while other cgroups are made or removed: the
        pool keeps cgroups sized for the size last asked for, and when it has none
        of this size, one is made or resized in a thread, not in the event loop.
        """
        if not self.cgroups.enabled:
            return None
        free = self._cg_free
        match = next((i for i in range(len(free) - 1, -1, -1)
                      if free[i].memory_mb == memory_mb), None)
        self._cg_hint = memory_mb
        self._cg_lot.unpark_all()
        try:
            if match is not None:  # sized already, descriptors open: no writes here
                return self._sized_cgroup(free.pop(match), memory_mb)
            self.counters["cgroup_resized"] += 1
            return await trio.to_thread.run_sync(
                self._sized_cgroup, free.pop() if free else None, memory_mb)
        except (CgroupError, OSError) as exc:
            if getattr(exc, "errno", None) == errno.EMFILE:
                raise TooManyRequestsError(
                    "the server has no file descriptors left for another instance"
                    f" ({len(self._all_zygotes)} zygotes); retry later, or raise its"
                    " RLIMIT_NOFILE") from None
            raise

    def _sized_cgroup(self, cg: CgroupSet | None, memory_mb: int) -> CgroupSet:
        """`cg`, or a new instance cgroup, ready at `memory_mb` (in a thread when it
        makes or resizes one; for one of the pool's at that size, a no-op)."""
        if cg is None:
            cg = self.cgroups.new_instance()
        try:
            self.cgroups.ensure_join_fds(cg)
            self.cgroups.size_instance(cg, memory_mb)
        except BaseException:
            self.cgroups.destroy(cg)
            raise
        return cg

    @trio.lowlevel.enable_ki_protection
    async def _fill_cgroup_pool(self) -> None:
        if not self.cgroups.enabled:
            return
        while True:
            hint = self._cg_hint
            ready = sum(1 for cg in self._cg_free if cg.memory_mb == hint)
            if ready >= self.cgroup_pool_size or (
                    len(self._cg_free) >= self.cgroup_pool_size * 2):
                await self._cg_lot.park()
                continue
            try:
                cg = await trio.to_thread.run_sync(self._sized_cgroup, None, hint)
            except (CgroupError, OSError) as exc:
                # Out of descriptors, or the hierarchy refuses (a full pids or memory
                # limit above us): the request path makes its own; try again later.
                self._background_error("the cgroup pool cannot grow", exc)
                await trio.sleep(CGROUP_POOL_RETRY_S)
                continue
            self._cg_free.insert(0, cg)  # taken last: reclaimed ones are warmer

    @trio.lowlevel.enable_ki_protection
    async def _reap_idle(self) -> None:
        look = trio.current_time()
        while True:
            with trio.move_on_at(look + self._reap_tick()):
                await self._reap_lot.park()  # a deploy with shorter timeouts wakes it early
            # Taken out of service now (DRAINING: never handed out), and stopped one
            # by one over the tick to the next look (eviction may stop them sooner).
            look = trio.current_time()
            tick = self._reap_tick()
            self._reaping = self._reap_pass(look)
            try:
                for i, inst in enumerate(self._reaping):
                    if i:
                        await trio.sleep_until(look + tick * i / REAP_PER_TICK)
                    self._retire(inst)  # (a no-op if an eviction stopped it already)
            finally:
                self._reaping = []

    def _reap_tick(self) -> float:
        return policy.reap_tick(
            t for fv in [*self._functions.values(), *self._draining]
            for t in (min(fv.config.idle_timeout_s, INFREQUENT_IDLE_S),
                      fv.config.zygote_idle_timeout_s))

    def _reap_pass(self, now: float) -> list[InstanceHandle]:
        """One look of the reaper: stops the zygotes past their idle timeout, and
        takes out of service the instances past theirs (and the spares of functions
        now infrequent), at most REAP_PER_TICK of them, which it returns."""
        budget = REAP_PER_TICK  # a mass expiry is spread over several looks
        out: list[InstanceHandle] = []
        for fv in [*self._functions.values(), *self._draining]:
            if fv.slot_released:
                continue
            idle_timeout = fv.config.idle_timeout_s
            if not fv.freq.update(now, fv.in_flight):
                idle_timeout = min(idle_timeout, INFREQUENT_IDLE_S)
                if not fv.config.prewarm:  # demoted: its spares go
                    while len(out) < budget and (tid := self.table.pop_expired(
                            fv.slot, _native.KIND_SPARE, math.inf)) is not None:
                        out.append(fv.instances[tid])
            expired = policy.expired_instances(self.table, fv.slot, now, idle_timeout,
                                               limit=max(0, budget - len(out)))
            self.counters["instances_reaped"] += len(expired)
            out.extend(fv.instances[tid] for tid in expired)
            if fv.zygote is not None and fv.claiming is None and policy.zygote_expired(
                last_used=fv.last_used, now=now,
                zygote_idle_timeout_s=fv.config.zygote_idle_timeout_s,
                busy=self.table.count(fv.slot, _native.STATE_BUSY) + fv.in_flight,
                warm=self.table.idle(fv.slot, _native.KIND_WARM),
                prewarm=0 if fv.retired else fv.config.prewarm,
            ):
                self._stop_zygote(fv)
            if fv.retired:
                self._maybe_finish_draining(fv)
        self._notify()  # classes may have changed, instances expired
        return out

    # --- observability -----------------------------------------------------------

    def _fv_state(self, fv: FunctionVersion) -> dict[str, Any]:
        z = fv.zygote
        counts = {name: self.table.count(fv.slot, state) for name, state in (
            ("spawning", _native.STATE_SPAWNING), ("busy", _native.STATE_BUSY),
            ("draining", _native.STATE_DRAINING))}
        counts["warm"] = self.table.idle(fv.slot, _native.KIND_WARM)
        counts["spare"] = self.table.idle(fv.slot, _native.KIND_SPARE)
        return {
            "generation": fv.generation,
            "zygote": None if z is None or z.proc is None else {
                "id": z.zygote_id, "pid": z.proc.pid, "alive": not z.dead},
            "instances": counts,
            "in_flight": fv.in_flight,
            "spare_target": self._spare_target(fv),
            "spawning_spares": fv.spawning_spares,
            "route_keys": len(fv.routes),
            "class": "frequent" if fv.freq.update(self._now(), fv.in_flight) else "infrequent",
            "rate_per_s": round(fv.freq.rate(self._now()), 3),
            "throttled": fv.throttled,
            "retired": fv.retired,
        }

    def statistics(self) -> dict[str, Any]:
        """Zygotes and instances by state, pools, cgroups mode, counters."""
        return {
            "cgroups": {
                "enabled": self.cgroups.enabled,
                "mode": self.cgroups.mode,
                "reason": self.cgroups.reason,
                "subtree": self.cgroups.name if self.cgroups.enabled else None,
                "pool": len(self._cg_free),
            },
            "isolation": {"default": self.isolation, "available": list(self.isolation_levels),
                          "reason": self.isolation_reason},
            "template": {"pid": self.template.pid, "running": self.template.ready.is_set()},
            "function_cpus": None if self.function_cpus is None else sorted(self.function_cpus),
            "function_sched": self.function_sched,
            "warming_pool": {"ready": len(self._pool), "forking": self._pool_forking,
                             "target": self._pool_sizer.current,
                             "minimum": self._pool_sizer.minimum,
                             "maximum": self._pool_sizer.maximum,
                             "recent_claims": self._pool_sizer.recent_claims(self._now())},
            "zygotes": len(self._all_zygotes),
            "concurrency": self.limits.statistics(),
            "memory": {"used_bytes": self._memory_used, "budget_bytes": self.memory_budget},
            "instances": {"live": self._live_instances(), "max": self._max_instances},
            "functions": {name: self._fv_state(fv) for name, fv in self._functions.items()},
            "draining": [self._fv_state(fv) | {"name": fv.name} for fv in self._draining],
            "counters": dict(self.counters),
        }

    def pids(self) -> list[int]:
        """Every fastfaas process this runtime knows of (template, zygotes, instances)."""
        out = [self.template.pid] if self.template.pid else []
        out += [z.proc.pid for z in self._all_zygotes if z.proc is not None]
        for fv in [*self._functions.values(), *self._draining]:
            out += [i.proc.pid for i in fv.instances.values() if i.proc is not None]
        return out


class FastCall:
    """A warm call handed to its instance by `Runtime.invoke_nowait`, not waited for.

    The caller watches `fd` (the instance's channel) and calls `step()` when it
    is readable, and once at first (a quick handler may have answered already)
    unless `waits_first` (other calls are in flight: the reply is not in yet):

    - None: no answer yet; wait for `fd` again;
    - an InvocationResult: the call is over, as `invoke` would have ended it;
    - an async function: the rest needs waiting (the instance died or left
      processes behind, an OutOfMemory to run again larger, an event that
      could not be sent at once); awaiting it gives the result.

    Exactly one of the last two comes, once. No cancellation: as for an
    abandoned `invoke`, a call handed to an instance runs to its end.
    """

    __slots__ = ("_spin", "cpu_base", "entry", "fd", "fv", "inst", "later", "payload",
                 "replace_after", "request_id", "rt", "start", "waits_first")

    def __init__(self, rt: Runtime, fv: FunctionVersion, inst: InstanceHandle, start: str,
                 request_id: str, payload: bytes, cpu_base: int, replace_after: bool) -> None:
        assert inst.chan is not None
        self.rt = rt
        self.fv = fv
        self.inst = inst
        self.start = start
        self.request_id = request_id
        self.payload = payload
        self.cpu_base = cpu_base
        self.replace_after = replace_after
        self.fd = inst.chan.fd
        self.entry: Deadline | None = None
        self.later: Callable[[], Awaitable[InvocationResult]] | None = None
        # The first step: for a lone call, poll as `_run` does, or try once; with other
        # calls in flight the answer is not there yet (4% of first tries found it, at
        # 32 connections): the caller had better wait for the fd before stepping.
        lone = rt._running == 1
        self._spin = rt._poll_ns(fv, start) if lone else 0
        self.waits_first = not lone

    def step(self) -> InvocationResult | Callable[[], Awaitable[InvocationResult]] | None:
        if self.later is not None:
            return self._rest
        chan = self.inst.chan
        assert chan is not None
        spin, self._spin = self._spin, 0
        try:
            got = chan.recv_nowait(spin)
        except BlockingIOError:
            return None
        except (OSError, wire.FrameError):
            got = None
        return self.settle(got)

    def settle(self, got: tuple[bytes, list[int]] | None,
               ended: tuple[int, int, int, int] | None = None,
               ) -> InvocationResult | Callable[[], Awaitable[InvocationResult]]:
        """`step` once the reply is in: `got` as `recv_nowait` gave it; `ended`,
        what `Cgroups.end` gave if it was called for this reply already."""
        rt = self.rt
        assert self.entry is not None
        self.entry.finish()
        try:
            done = rt._finish_now(self.fv, self.inst, self.start, self.request_id, got,
                                  self.cpu_base, ended)
        except BaseException:  # what invoke's finally clauses would undo
            self._end()
            raise
        if not isinstance(done, InvocationResult):
            self.later = done
            return self._rest
        if rt._escalation_size(self.fv, done):
            self.later = functools.partial(_given, done)
            return self._rest
        rt._call_done(self.fv, self.replace_after)
        try:
            return rt._done(self.fv, done)
        finally:
            rt.limits.release(self.fv.name)

    def abandon(self) -> None:
        """Nobody will step this call any more: it runs to its end in the runtime's own
        nursery, as an abandoned `invoke` does, and its result is dropped."""
        rt = self.rt
        if rt._nursery is not None and not rt._closing:
            rt._nursery.start_soon(self._run_to_end)
            return
        # The runtime is closing: the instance goes with the rest.
        if self.entry is not None:
            self.entry.finish()
        rt._retire(self.inst)
        self._end()

    def _end(self) -> None:
        """What `invoke`'s finally clauses do at a call's end."""
        self.rt._call_done(self.fv, self.replace_after)
        self.rt.limits.release(self.fv.name)

    async def _run_to_end(self) -> None:
        try:
            while True:
                out = self.step()
                if out is None:
                    await trio.lowlevel.wait_readable(self.fd)
                    continue
                if not isinstance(out, InvocationResult):
                    await out()
                return
        except (OSError, FastfaasError, trio.ClosedResourceError) as exc:
            self.rt._background_error("an abandoned call could not finish", exc)

    async def _rest(self) -> InvocationResult:
        """`_invoke_acquired`'s handling of what `later` gives (retries, escalation)."""
        rt, fv = self.rt, self.fv
        assert self.later is not None
        try:
            try:
                result = await self.later()
            finally:
                rt._call_done(fv, self.replace_after)
            result = await rt._escalate_if_needed(fv, self.payload, self.request_id, result)
        except _Retry:  # the event reached no handler: invoke's path tries other instances
            rt.counters["retries"] += 1
            return await rt._invoke_acquired(fv, self.payload, self.request_id,
                                             attempts=RETRIES)
        except BaseException:
            rt.limits.release(fv.name)
            raise
        try:
            return rt._done(fv, result)
        finally:
            rt.limits.release(fv.name)


async def _given(result: InvocationResult) -> InvocationResult:
    return result


class _Waiter:
    """A call waiting for its key's busy instance."""

    __slots__ = ("event", "inst")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.inst: InstanceHandle | None = None


class LogEntry(msgspec.Struct, frozen=True, gc=False):
    """One invocation in a function's recent log.

    gc=False: scalars only. A function keeps its last entries, one new per call
    and the oldest dropped: as a tracked object (a NamedTuple is never untracked,
    unlike a plain tuple) each outlived a young collection and died later, so the
    young generation grew to thousands of them between collections (2-3 ms each
    at 1,000 calls/s, measured with a gc callback in the Zipf benchmark).
    """

    time: float
    request_id: str
    start: str
    duration_us: int
    error: str | None
    log: bytes


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


class _Retry(Exception):
    """The invocation reached no handler; take another instance."""


class Invocation(NamedTuple):
    data: bytes  # the encoded wire.Invoke
    deadline: float  # trio clock


def _retired(fv: FunctionVersion) -> bool:
    return fv.retired


def _event_bytes(event: Any, payload: bytes | None) -> bytes:
    if payload is not None:
        raw = bytes(payload)
        try:
            msgspec.json.decode(raw)
        except ValueError as exc:  # msgspec.DecodeError, and UnicodeDecodeError for bad UTF-8
            raise InvalidRequestError(f"the event is not valid JSON: {exc}") from None
    else:
        try:
            raw = _json_encode(event)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidRequestError(f"the event cannot be encoded as JSON: {exc}") from None
    if len(raw) > wire.MAX_PAYLOAD:
        raise RequestTooLargeError(
            f"the event is {len(raw)} bytes; the limit is {wire.MAX_PAYLOAD} bytes")
    return raw


def _invalid_response(what: str) -> FunctionError:
    return FunctionError(errors.CRASHED, "Runtime.InvalidResponse",
                         f"the instance sent {what} on its channel and was killed")


def _init_error(message: str, error_type: str = "Runtime.InitError") -> FunctionError:
    return FunctionError(errors.INIT_ERROR, error_type, message)


def _error_payload(error: FunctionError) -> bytes:
    return _json_encode({"errorMessage": error.error_message, "errorType": error.error_type,
                         "stackTrace": error.stack_trace})


def _stack_of(payload: bytes) -> list[str]:
    try:
        body = msgspec.json.decode(payload)
    except ValueError:  # msgspec.DecodeError, UnicodeDecodeError
        return []
    stack = body.get("stackTrace") if isinstance(body, dict) else None
    return [str(s) for s in stack] if isinstance(stack, list) else []


def _error_result(error: FunctionError, start: str, request_id: str, log: bytes = b"",
                  instance_id: str = "", duration_us: int = 0) -> InvocationResult:
    return InvocationResult(_error_payload(error), error, start, instance_id, request_id,
                            duration_us, Usage(0, 0), log)


def strict_unavailable(probe_uid: int | None = None, probe_gid: int | None = None,
                       python: str = sys.executable) -> str:
    """Why this machine cannot give the strict level; "" when it can.

    With `probe_uid`, a throwaway process also makes a user namespace the way a
    zygote does (as that uid): a security module may forbid it (Ubuntu 24.04's
    apparmor_restrict_unprivileged_userns) where the kernel alone would not."""
    if os.geteuid() != 0:
        return "strict needs root"
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user namespaces are disabled (user.max_user_namespaces is 0)"
    except (OSError, ValueError):
        pass
    try:
        with open("/proc/self/status") as f:
            if "\nSeccomp:" not in f.read():
                return "the kernel has no seccomp"
    except OSError:
        return "no /proc/self/status"
    if not os.path.exists("/proc/self/ns/user") or not os.path.exists("/proc/self/ns/pid"):
        return "the kernel has no user or PID namespaces"
    if probe_uid is not None:
        gid = probe_uid if probe_gid is None else probe_gid
        code = ("from fastfaas import _native; _native.enter_user_namespace("
                f"1000, {int(probe_uid)}, 1000, {int(gid)}); _native.drop_capabilities();"
                " _native.seccomp_install()")
        try:
            done = subprocess.run([python, "-I", "-c", code], capture_output=True, text=True,
                                  timeout=30, env={"PATH": os.environ.get("PATH", "")})
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the user-namespace probe could not run: {exc}"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            return f"this machine refuses the sandbox's user namespace: {last}"
    return ""


def _machine_memory() -> int:
    """MemTotal from /proc/meminfo (bytes)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
