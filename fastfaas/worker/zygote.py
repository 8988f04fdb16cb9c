"""Generic and function zygotes.

A generic zygote (forked by the template ahead of need) waits for a Claim,
joins the function's zygote cgroups, imports the function's module and
becomes that function version's zygote: from then on it forks instances on
request and reports their exit statuses. It always ends in os._exit.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

from fastfaas import _native, wire
from fastfaas.errors import SpawnError
from fastfaas.wire import Claim, Claimed, InstanceExited, Sandbox, Spawn, Spawned, SpawnFailed
from fastfaas.worker import instance, sandbox

# Threads started at import do not survive a fork; numeric libraries start
# pools unless told not to.
_SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def reap(children: dict[int, int], report: Callable[[int, int, int], None]) -> None:
    """Reap every exited child; report(id, pid, status) for the ones in `children`."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        child_id = children.pop(pid, None)
        if child_id is not None:
            with contextlib.suppress(OSError):
                report(child_id, pid, status)


class SignalWakeup:
    """SIGCHLD (and friends) as a readable descriptor for poll()."""

    def __init__(self, *signals: int) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)
        for sig in signals:
            signal.signal(sig, _ignore_signal)

    def drain(self) -> None:
        try:
            while os.read(self.r, 512):
                pass
        except BlockingIOError:
            pass

    def fds(self) -> list[int]:
        return [self.r, self.w]


def _ignore_signal(signum: int, frame: Any) -> None:
    """A Python-level handler: its only job is the write to the wakeup fd."""


_INSTANCE_BUFFER = bytearray(wire.INLINE_MAX + 1)


def os_threads() -> int:
    """Threads of this process, as the kernel counts them (not only threading's)."""
    return len(os.listdir("/proc/self/task"))


class ThreadingForkHook:
    """Skips threading's after-fork clean-up in children of a single-threaded zygote.

    threading's hook re-creates its locks and thread table in the child: on
    this kind of machine the copy-on-write faults that costs add ~0.4 ms to
    every fork (0.35 -> 0.76 ms for a bare interpreter). In a child of a
    process with one thread there is nothing to clean up: no other thread
    existed, no lock was held, and the main thread's ident is unchanged. The
    child puts the real hook back at once, so that its own forks (where its
    handler may have started threads) get the full clean-up.
    """

    def __init__(self) -> None:
        self._hook: Any = None
        self._code: Any = None
        threading = sys.modules.get("threading")
        if threading is None or os_threads() != 1:
            return
        hook = getattr(threading, "_after_fork", None)
        if hook is None or not hasattr(hook, "__code__"):
            return
        self._hook, self._code = hook, hook.__code__
        hook.__code__ = _skipped_after_fork.__code__

    def restore(self) -> None:
        """In the child: the real hook again."""
        if self._hook is not None:
            self._hook.__code__ = self._code


def _skipped_after_fork() -> None:
    """Stands in for threading._after_fork while a single-threaded zygote forks."""


def resolve_handler(spec: str) -> tuple[Callable[..., Any], bool]:
    """Import `module.function` and say whether it takes (event, context)."""
    module_name, sep, attr = spec.rpartition(".")
    if not sep or not module_name or not attr:
        raise ValueError(f"handler {spec!r} is not of the form 'module.function'")
    module = importlib.import_module(module_name)
    try:
        handler = getattr(module, attr)
    except AttributeError:
        raise AttributeError(
            f"handler {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if not callable(handler):
        raise TypeError(f"handler {spec!r} is not callable (it is a {type(handler).__name__})")
    return handler, _takes_context(handler)


def _takes_context(handler: Callable[..., Any]) -> bool:
    code = getattr(handler, "__code__", None)
    if code is None:
        call = next((k.__dict__["__call__"] for k in type(handler).__mro__
                     if "__call__" in k.__dict__), None)
        code = getattr(call, "__code__", None)
        bound = 1
    else:
        bound = 1 if getattr(handler, "__self__", None) is not None else 0
    if code is None:
        return True
    if code.co_flags & 0x04:  # CO_VARARGS
        return True
    return bool(code.co_argcount - bound >= 2)


def _capture_start() -> int:
    """The import's output into a memfd. The server's stderr, which this process
    inherited, is not kept: the user's code must not hold it (a thread or a
    daemon started at import would keep it for the zygote's life)."""
    capture = os.memfd_create("fastfaas-init-log", os.MFD_CLOEXEC)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    return capture


def _capture_end(capture: int) -> bytes:
    """The import's last output; the zygote's own from then on goes nowhere."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    tail = instance.read_tail(capture, os.lseek(capture, 0, os.SEEK_END))
    devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    os.close(capture)
    return tail


def generic_main(ctl_fd: int, strict: Sandbox | None = None) -> None:
    """A generic zygote: wait for a claim, import, serve spawns. Never returns.

    With `strict`, it is PID 1 of a new PID namespace and makes the rest of
    its sandbox now, ahead of the claim."""
    try:
        _native.set_child_subreaper(True)
        code_root = sandbox.isolate_generic(strict) if strict is not None else -1
        chan = wire.BlockingChannel(socket.socket(fileno=ctl_fd))
        got = chan.recv()
        if got is None:
            os._exit(0)
        data, fds = got
        claim = wire.zygote_in.decode(data)
        if not isinstance(claim, Claim):
            os._exit(71)
        for fd in fds:
            os.pwrite(fd, b"0", 0)  # join the zygote cgroups before any user code
            os.close(fd)
        task_root = claim.code_dir
        if strict is not None:
            task_root = sandbox.enter_function(strict, code_root, claim.code_dir, claim.tmp_mb)
        handler, two_args = _claim(chan, claim, task_root)
        _function_zygote(chan, claim, handler, two_args, strict is not None)
    except BaseException:
        traceback.print_exc()
        os._exit(70)
    os._exit(0)


def _claim(chan: wire.BlockingChannel, claim: Claim,
           task_root: str) -> tuple[Callable[..., Any], bool]:
    os.environ.update(_SINGLE_THREAD_ENV)
    os.environ.update(claim.env)
    os.environ.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": claim.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": claim.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(claim.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(claim.timeout_s)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{claim.function_name}",
            "AWS_LAMBDA_RUNTIME_API": "",
            "AWS_REGION": claim.region,
            "AWS_DEFAULT_REGION": claim.region,
            "LAMBDA_TASK_ROOT": task_root,
            "_HANDLER": claim.handler,
        }
    )
    os.chdir(task_root)
    sys.path.insert(0, task_root)
    instance.unbuffered_stdio()
    capture = _capture_start()
    try:
        handler, two_args = resolve_handler(claim.handler)
    except BaseException as exc:
        log = _capture_end(capture)
        error_type, message, _ = instance.error_body(exc, skip_frames=0)
        stack = traceback.format_exception(exc)
        chan.send(Claimed(False, error_type, message, stack, log))
        os._exit(0)
    log = _capture_end(capture)
    gc.collect()
    gc.freeze()
    chan.send(Claimed(True, log_tail=log, threads=os_threads()))
    return handler, two_args


def _function_zygote(
    chan: wire.BlockingChannel, claim: Claim, handler: Callable[..., Any], two_args: bool,
    strict: bool,
) -> None:
    info = instance.FunctionInfo(claim.function_name, claim.version, claim.memory_mb,
                                 claim.self_usage, claim.region)
    instance.lambda_logging(info)
    fork_hook = ThreadingForkHook()
    rlimits = [tuple(r) for r in claim.rlimits]
    wakeup = SignalWakeup(signal.SIGCHLD)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    children: dict[int, int] = {}
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    poller.register(wakeup.r, select.POLLIN)
    own = [chan.fileno(), *wakeup.fds(), devnull]

    def report_exit(instance_id: int, pid: int, status: int) -> None:
        if strict:
            sandbox.remove_instance_tmpdir(instance_id)
        chan.send(InstanceExited(instance_id, pid, status))

    while True:
        for fd, _events in poller.poll():
            if fd == wakeup.r:
                wakeup.drain()
                reap(children, report_exit)
                continue
            got = chan.recv()
            if got is None:  # the server is gone or stopped us
                for pid in children:
                    _kill(pid)
                os._exit(0)
            data, fds = got
            msg = wire.zygote_in.decode(data)
            if not isinstance(msg, Spawn) or not fds:
                wire.close_all(fds)
                continue
            pid_or_chan = _spawn(chan, msg, fds[0], fds[1:], own, devnull, rlimits)
            if isinstance(pid_or_chan, wire.BlockingChannel):
                # The child: the spawn closed the zygote's descriptors already.
                fork_hook.restore()
                chan.sock.detach()
                signal.set_wakeup_fd(-1)
                if strict:
                    sandbox.make_instance_tmpdir(msg.instance_id)
                instance.serve(pid_or_chan, handler, two_args, info, msg.first)
                os._exit(0)
            if pid_or_chan > 0:
                children[pid_or_chan] = msg.instance_id
        reap(children, report_exit)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _spawn(
    chan: wire.BlockingChannel,
    msg: Spawn,
    child_fd: int,
    join_fds: list[int],
    own: list[int],
    devnull: int,
    rlimits: list[Any],
) -> int | wire.BlockingChannel:
    """Fork one instance on the socket the server made for it.

    In the child: its channel. In the parent: its pid (0 on failure). The
    server holds the other end already, so the child's first result does not
    wait for this process's own (copy-on-write-faulting) report of the fork.
    """
    child_end = socket.socket(fileno=child_fd)
    capture = os.memfd_create("fastfaas-log", os.MFD_CLOEXEC)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = _native.spawn(
            join_fds,
            [*own, capture, *join_fds],
            (devnull, capture, capture),
            rlimits,
            new_session=True,
            reset_signals=True,
            pdeathsig=signal.SIGKILL,
        )
    except SpawnError as exc:
        chan.send(SpawnFailed(msg.instance_id, exc.errno or 0, exc.step, str(exc)))
        pid = -1
    if pid == 0:
        return wire.BlockingChannel(child_end, _INSTANCE_BUFFER)
    try:
        child_end.close()
        if pid > 0:
            pidfd = os.pidfd_open(pid)
            try:
                chan.send(Spawned(msg.instance_id, pid), [pidfd])
            finally:
                os.close(pidfd)
    finally:
        os.close(capture)
        wire.close_all(join_fds)
    return max(pid, 0)
