"""The server's handles on the template zygote, zygotes and instances.

The server never forks: it starts the template once with subprocess.Popen
(from the trio thread, not trio.open_process, whose worker thread would fire
the template's parent-death signal when it exits) and asks it for zygotes.
Zygotes fork instances and hand each one's socket and pidfd to the server,
which signals processes only through their pidfd.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from fastfaas import wire
from fastfaas.errors import ZygoteError
from fastfaas.runtime.cgroups import CgroupSet
from fastfaas.runtime.channel import AsyncChannel

ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TZ")
TEMPLATE_BOOT_TIMEOUT_S = 30.0


def describe_status(status: int) -> str:
    """'exit status 3' or 'signal 11 (SIGSEGV)' for a wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


async def read_messages(
    chan: AsyncChannel,
    decoder: msgspec.msgpack.Decoder[Any],
    dispatch: Callable[[Any, list[int]], None],
) -> None:
    """Decode and dispatch a peer's messages until EOF or garbage.

    Every message from a zygote is validated against its decoder's types: a
    peer that sends anything else is done for.
    """
    while True:
        try:
            got = await chan.recv()
        except (OSError, wire.FrameError):
            return
        if got is None:
            return
        data, fds = got
        try:
            msg = decoder.decode(data)
        except msgspec.DecodeError:
            wire.close_all(fds)
            return
        dispatch(msg, fds)


def pid_of_pidfd(pidfd: int) -> int:
    """The pid, in this process's PID namespace, of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}", "rb") as f:
        for line in f:
            if line.startswith(b"Pid:"):
                return int(line.split()[1])
    raise OSError(f"descriptor {pidfd} is not a pidfd")


class Process:
    """A process known by pidfd (not our child: the zygote or template reaps it)."""

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.status: int | None = None
        self.exited = trio.Event()
        self.gone = False

    def kill(self) -> None:
        if self.pidfd >= 0 and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def set_exited(self, status: int) -> None:
        self.status = status
        self.exited.set()

    async def wait_gone(self) -> None:
        """Until the process has exited (its pidfd turns readable)."""
        if self.pidfd >= 0 and not self.gone:
            try:
                await trio.lowlevel.wait_readable(self.pidfd)
            except (trio.ClosedResourceError, trio.BusyResourceError, OSError):
                return
            self.gone = True

    def close(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(OSError):
                trio.lowlevel.notify_closing(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1


@dataclass(eq=False)
class InstanceHandle:
    """An instance as the server sees it."""

    table_id: int
    instance_id: str
    fv: Any  # FunctionVersion
    zygote: ZygoteHandle
    cgroup: CgroupSet | None
    proc: Process | None = None
    chan: AsyncChannel | None = None
    dead: bool = False
    cpu_base: int = 0  # the cgroup CPU counter when it was forked with its first invocation
    early_status: int | None = None  # an exit reported before the server had its pidfd
    timed_out: bool = False  # killed by the deadline watcher
    spawned: trio.Event = field(default_factory=trio.Event)  # its pid and pidfd arrived
    spawn_error: str = ""  # the zygote could not fork it
    # Calls waiting for this instance by affinity (route key), handed it in turn.
    waiters: list[Any] = field(default_factory=list)
    idle_since: float = 0.0  # when it last went idle (for eviction, least recently used)
    spare: bool = False  # idle as a spare (never served), not warm
    memory: int = 0  # bytes, as last measured
    # Forked at another size than its function's (escalation, tuning): it serves only
    # the calls it was forked for, never goes idle, and is retired after them.
    one_off: bool = False

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()


@dataclass(eq=False)
class ZygoteHandle:
    """A generic zygote, and after a claim the zygote of one function version."""

    zygote_id: int
    chan: AsyncChannel
    proc: Process | None = None
    cgroup: CgroupSet | None = None
    fv: Any = None
    claimed: wire.Claimed | None = None
    claim_done: trio.Event = field(default_factory=trio.Event)
    instances: dict[int, InstanceHandle] = field(default_factory=dict)
    dead: bool = False
    oom_killed: bool = False  # read from its memory cgroup once it is gone
    on_instance_exit: Callable[[InstanceHandle], None] | None = None
    gone: trio.Event = field(default_factory=trio.Event)
    sandbox: wire.Sandbox | None = None  # strict: its own namespaces

    @property
    def sandboxed(self) -> bool:
        return self.sandbox is not None

    async def serve(self) -> None:
        """Read this zygote's messages until it closes its socket."""
        try:
            await read_messages(self.chan, wire.zygote_out, self._dispatch)
        finally:
            self.dead = True
            self.claim_done.set()
            for inst in self.instances.values():
                if not inst.spawned.is_set():
                    inst.spawn_error = "its zygote exited"
                    inst.spawned.set()

    def _dispatch(self, msg: Any, fds: list[int]) -> None:
        if isinstance(msg, wire.Claimed):
            wire.close_all(fds)
            self.claimed = msg
            self.claim_done.set()
        elif isinstance(msg, wire.Spawned):
            inst = self.instances.get(msg.instance_id)
            if inst is None or inst.proc is not None or len(fds) != 1:
                wire.close_all(fds)
                return
            # A strict zygote's pids are numbers in its own PID namespace: ours
            # come from the pidfd.
            pid = msg.pid
            if self.sandboxed:
                try:
                    pid = pid_of_pidfd(fds[0])
                except (OSError, ValueError):
                    pid = -1  # gone already: its exit report follows
            inst.proc = Process(pid, fds[0])
            if inst.early_status is not None:
                inst.proc.set_exited(inst.early_status)
            elif inst.dead or inst.timed_out:
                inst.proc.kill()  # retired (or past its deadline) before its pidfd came
            inst.spawned.set()
        elif isinstance(msg, wire.SpawnFailed):
            wire.close_all(fds)
            inst = self.instances.pop(msg.instance_id, None)
            if inst is not None:
                inst.spawn_error = msg.message
                inst.spawned.set()
        elif isinstance(msg, wire.InstanceExited):
            wire.close_all(fds)
            inst = self.instances.pop(msg.instance_id, None)
            if inst is None:
                return
            if inst.proc is None:
                # A forked instance can finish (or crash) before its Spawned is handled.
                inst.early_status = msg.status
                return
            inst.proc.set_exited(msg.status)
            if self.on_instance_exit is not None:
                self.on_instance_exit(inst)

    async def spawn(self, instance_id: int, child_fd: int, join_fds: list[int],
                    first: bytes = b"") -> bool:
        """Ask the zygote to fork an instance on `child_fd`; False if the zygote is gone.

        Its pid and pidfd arrive later (the instance's `spawned` event). `first`,
        an encoded Invoke, is handed to the instance at its fork: it runs at
        once, without a round trip through the server."""
        if self.dead:
            return False
        try:
            await self.chan.send(wire.Spawn(instance_id, first), [child_fd, *join_fds])
        except OSError:
            return False
        return True

    def stop(self) -> None:
        self.dead = True
        self.chan.close()
        if self.proc is not None:
            self.proc.kill()


class Template:
    """The template zygote process and its control socket."""

    def __init__(self, python: str = sys.executable, cwd: str = "/",
                 cpus: frozenset[int] | None = None, batch: bool = False) -> None:
        self.python = python
        self.cwd = cwd
        self.cpus = cpus  # where it, and so every zygote and instance, may run
        self.batch = batch  # SCHED_BATCH for it, and so for every zygote and instance
        self.proc: subprocess.Popen[bytes] | None = None
        self.chan: AsyncChannel | None = None
        self._liveness_w = -1
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[trio.Event, list[Any]]] = {}
        self.zygotes: dict[int, ZygoteHandle] = {}
        self.pid = 0
        self.ready = trio.Event()

    def start(self) -> None:
        """Start the template process (the only Popen fastfaas makes)."""
        server_end, template_end = wire.new_seqpacket_pair()
        live_r, live_w = os.pipe2(os.O_CLOEXEC)
        env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
        argv = [
            self.python, "-I", "-m", "fastfaas.worker.template",
            str(template_end.fileno()), str(live_r), str(os.getpid()),
        ]
        try:
            self.proc = subprocess.Popen(
                argv,
                pass_fds=(template_end.fileno(), live_r),
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
            # Before the server asks it for a fork: every process after inherits these.
            try:
                if self.cpus is not None:
                    os.sched_setaffinity(self.proc.pid, self.cpus)
                if self.batch:
                    os.sched_setscheduler(self.proc.pid, os.SCHED_BATCH, os.sched_param(0))
            except OSError:
                self.proc.kill()
                self.proc.wait()
                raise
        except BaseException:
            server_end.close()
            os.close(live_w)
            raise
        finally:
            template_end.close()
            os.close(live_r)
        self.pid = self.proc.pid
        self._liveness_w = live_w
        self.chan = AsyncChannel(server_end)

    @trio.lowlevel.enable_ki_protection
    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the template's messages; started() once it said it is ready."""
        assert self.chan is not None
        started = False
        try:
            with trio.move_on_after(TEMPLATE_BOOT_TIMEOUT_S) as boot:
                got = await self.chan.recv()
            if boot.cancelled_caught or got is None:
                code = None
                if self.proc is not None:
                    with trio.move_on_after(2):
                        code = await trio.to_thread.run_sync(self.proc.wait)
                why = "timed out" if got else f"exit {code}"
                raise ZygoteError(
                    f"the template zygote did not start ({why}); "
                    f"run `{self.python} -I -m fastfaas.worker.template` to see why"
                )
            msg = wire.template_out.decode(got[0])
            if not isinstance(msg, wire.TemplateReady):
                raise ZygoteError(f"the template zygote said {msg!r} before it was ready")
            self.ready.set()
            started = True
            task_status.started()
            await read_messages(self.chan, wire.template_out, self._dispatch)
        finally:
            for event, box in self._pending.values():
                box.append(None)
                event.set()
            self._pending.clear()
            if not started:
                self.close()

    def _dispatch(self, msg: Any, fds: list[int]) -> None:
        if isinstance(msg, wire.ZygoteForked):
            waiter = self._pending.pop(msg.zygote_id, None)
            if waiter is None or len(fds) != 1:
                wire.close_all(fds)
                if waiter is not None:  # the template could not fork it (no pidfd)
                    waiter[1].append(None)
                    waiter[0].set()
                return
            waiter[1].append((msg, fds[0]))
            waiter[0].set()
        elif isinstance(msg, wire.ZygoteExited):
            wire.close_all(fds)
            z = self.zygotes.pop(msg.zygote_id, None)
            if z is not None:
                z.dead = True
                if z.proc is not None:
                    z.proc.set_exited(msg.status)

    async def fork_zygote(self, sandbox: wire.Sandbox | None = None) -> ZygoteHandle:
        """A new generic zygote (strict with `sandbox`). Raises ZygoteError if
        the template is gone."""
        if self.chan is None or not self.ready.is_set():
            raise ZygoteError("the template zygote is not running")
        zygote_id = next(self._ids)
        server_end, zygote_end = wire.new_seqpacket_pair()
        event = trio.Event()
        box: list[Any] = []
        self._pending[zygote_id] = (event, box)
        handle = ZygoteHandle(zygote_id, AsyncChannel(server_end))
        handle.sandbox = sandbox
        try:
            await self.chan.send(wire.ForkZygote(zygote_id, sandbox), [zygote_end.fileno()])
        except OSError as exc:
            self._pending.pop(zygote_id, None)
            handle.chan.close()
            raise ZygoteError(f"the template zygote is gone: {exc}") from exc
        finally:
            zygote_end.close()
        try:
            await event.wait()
        except BaseException:
            self._pending.pop(zygote_id, None)
            handle.chan.close()
            raise
        if not box or box[0] is None:
            handle.chan.close()
            raise ZygoteError("the template zygote could not fork a zygote, or exited"
                              " meanwhile (its stderr says why)")
        msg, pidfd = box[0]
        handle.proc = Process(msg.pid, pidfd)
        self.zygotes[zygote_id] = handle
        return handle

    def close(self) -> None:
        """Stop the template: its zygotes and instances follow (parent-death signals)."""
        if self._liveness_w >= 0:
            os.close(self._liveness_w)
            self._liveness_w = -1
        if self.chan is not None:
            self.chan.close()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def chan_closed(self) -> bool:
        return self.chan is None or self.chan.closed

    def wait_status(self) -> int | None:
        """Block until the template process exits; its exit code (a worker thread's call)."""
        return self.proc.wait() if self.proc is not None else None

    async def wait_closed(self) -> None:
        await trio.to_thread.run_sync(self.wait_status)
