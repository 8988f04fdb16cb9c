"""fastfaas._native.spawn with real forks: what the child gets, and failures by step."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal

import pytest

from fastfaas import _native
from fastfaas.errors import SpawnError


def _child_report(write_fd: int, watched_fd: int) -> None:
    def is_open(fd: int) -> bool:
        try:
            os.fstat(fd)
            return True
        except OSError:
            return False

    with open("/proc/self/status") as f:
        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
    report = {
        "pid": os.getpid(),
        "sid": os.getsid(0),
        "core": resource.getrlimit(resource.RLIMIT_CORE),
        "watched_open": is_open(watched_fd),
        "stdout_is": os.readlink("/proc/self/fd/1"),
        "sig_ignored": int(status["SigIgn"].strip(), 16),
        "sig_blocked": int(status["SigBlk"].strip(), 16),
    }
    os.write(write_fd, json.dumps(report).encode())


def test_the_child_is_set_up_before_it_returns(tmp_path) -> None:
    r, w = os.pipe()
    watched = os.open(os.devnull, os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        pid = _native.spawn((), [watched, r, out], (-1, out, out),
                            [(resource.RLIMIT_CORE, 0, 0)], pdeathsig=signal.SIGKILL)
        if pid == 0:
            try:
                _child_report(w, watched)
            finally:
                os._exit(0)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    _, status = os.waitpid(pid, 0)
    for fd in (r, watched, out):
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0
    rep = json.loads(data)
    assert rep["sid"] == rep["pid"] == pid  # its own session
    assert rep["core"] == [0, 0]
    assert not rep["watched_open"]  # fastfaas's descriptors are closed
    assert rep["stdout_is"] == str(tmp_path / "out")
    pipe_bit = 1 << (signal.SIGPIPE - 1)
    assert rep["sig_ignored"] & pipe_bit  # as CPython sets it
    assert rep["sig_blocked"] == 0  # the mask is cleared


def test_a_failing_step_is_reported_with_its_errno_and_name() -> None:
    with pytest.raises(SpawnError) as info:
        _native.spawn(join_fds=[987654])
    assert info.value.errno == errno.EBADF
    assert info.value.step == "cgroup join"
    assert "cgroup join" in str(info.value)
    assert isinstance(info.value, OSError)


def test_a_failing_rlimit_is_named() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with pytest.raises(SpawnError) as info:
        # soft above hard is refused by the kernel with EINVAL
        _native.spawn(rlimits=[(resource.RLIMIT_NOFILE, hard + 1, hard)])
    assert info.value.step == "setrlimit"
    assert info.value.errno == errno.EINVAL


def test_a_failed_child_is_reaped() -> None:
    with pytest.raises(SpawnError):
        _native.spawn(join_fds=[987654])
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
