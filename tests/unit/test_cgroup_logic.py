"""Cgroup detection, sizing and file-writing logic, against fake cgroupfs trees
(and the other small helpers of the native extension: request ids).

cgroup v2 is not available on the reference machine; its logic is tested
here against a directory laid out like one (the kernel behaviour of real v1
cgroups is tested in tests/integration/test_cgroups.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastfaas import _native
from fastfaas.runtime import cgroups as cg

V1_MOUNTS = """\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
V1_SELF = "8:pids:/\n6:freezer:/\n4:memory:/svc/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n"


def test_detect_v1_prefers_v1_and_finds_the_servers_own_cgroup(tmp_path: Path) -> None:
    (tmp_path / "mounts").write_text(V1_MOUNTS)
    (tmp_path / "cgroup").write_text(V1_SELF)
    found = cg.detect(str(tmp_path / "mounts"), str(tmp_path / "cgroup"))
    assert set(found) == {"memory", "cpu", "cpuacct", "pids", "freezer"}
    assert found["memory"].version == 1
    assert found["memory"].own == Path("/sys/fs/cgroup/memory/svc/abc")
    assert found["cpu"].own == Path("/sys/fs/cgroup/cpu")
    assert found["cpu"] != found["cpuacct"]  # separate hierarchies here


def fake_v2(tmp_path: Path) -> dict[str, cg.Hierarchy]:
    mount = tmp_path / "cgroup2"
    own = mount / "user.slice" / "me"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu memory pids io\n")
    (tmp_path / "mounts").write_text(f"cgroup2 {mount} cgroup2 rw 0 0\n")
    (tmp_path / "cgroup").write_text("0::/user.slice/me\n")
    return cg.detect(str(tmp_path / "mounts"), str(tmp_path / "cgroup"))


def test_detect_v2(tmp_path: Path) -> None:
    found = fake_v2(tmp_path)
    assert {c for c, h in found.items() if h.version == 2} == {
        "memory", "cpu", "cpuacct", "pids", "freezer"}
    assert found["memory"].own == tmp_path / "cgroup2" / "user.slice" / "me"


def test_v2_instance_cgroup_is_sized_joined_and_read_through_its_files(tmp_path: Path) -> None:
    found = fake_v2(tmp_path)
    own = found["memory"].own
    groups = cg.Cgroups("require", hierarchies=found, ncpus=2)
    # A fake cgroupfs creates no control files on mkdir: lay them out as the kernel would.
    real_mkdir = Path.mkdir

    def mkdir_with_files(self: Path, *a: object, **k: object) -> None:
        real_mkdir(self, *a, **k)  # type: ignore[arg-type]
        for name, text in {"cgroup.procs": "", "memory.peak": "4096\n",
                           "cpu.stat": "usage_usec 250\nuser_usec 200\nthrottled_usec 40\n",
                           "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
                           "pids.current": "2\n", "cgroup.controllers": ""}.items():
            (self / name).write_text(text)

    Path.mkdir = mkdir_with_files  # type: ignore[method-assign]
    try:
        groups.start()
        inst = groups.new_instance()
    finally:
        Path.mkdir = real_mkdir  # type: ignore[method-assign]
    assert groups.enabled and len(inst.dirs) == 1
    d = next(iter(inst.dirs.values()))
    assert d.parent == own / groups.name
    groups.size_instance(inst, 1769)
    assert (d / "memory.max").read_text() == str(1769 * 1024 * 1024)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "cpu.max").read_text() == "100000 100000"
    assert (d / "pids.max").read_text() == str(cg.INSTANCE_PIDS_MAX)
    base = groups.begin(inst)
    assert base == 250_000
    assert (d / "memory.peak").read_text().startswith("reset")
    (d / "memory.peak").write_text("8192\n")
    groups.mark_throttled(inst)  # a new instance: throttling counts from here
    (d / "cpu.stat").write_text("usage_usec 1250\nthrottled_usec 540\n")
    # 1 ms of CPU: under one period's quota (100 ms at 1769 MB), nothing was held back
    # and the counter is not read.
    assert groups.end(inst, base) == (8192, 1_000_000, 2, 0)
    (d / "cpu.stat").write_text("usage_usec 150250\nthrottled_usec 540\n")
    assert groups.end(inst, base) == (8192, 150_000_000, 2, 500_000)
    assert groups.end(inst, base)[3] == 0  # nothing more since
    # Unreadable for a moment (out of descriptors): nothing charged, the base kept, so
    # the next read charges only what came after.
    (d / "cpu.stat").unlink()
    assert groups.end(inst, base)[3] == 0
    (d / "cpu.stat").write_text("usage_usec 150250\nthrottled_usec 700\n")
    assert groups.end(inst, base)[3] == 160_000
    assert groups.oom_kills(inst) == 1
    os.pwrite(inst.join_fds[0], b"0", 0)
    assert (d / "cgroup.procs").read_text() == "0"
    groups.set_frozen(inst, True)
    assert (d / "cgroup.freeze").read_text() == "1"
    for f in d.iterdir():  # a real cgroupfs rmdir ignores control files
        f.unlink()
    groups.destroy(inst)
    assert not d.exists()
    for f in (own / groups.name).iterdir():
        f.unlink()
    groups.close()
    assert not (own / groups.name).exists()


def test_limit_writes_per_version() -> None:
    v1 = cg.limit_writes(1, frozenset({"memory", "cpu", "pids"}), 128 * cg.MiB, 7236, 1024)
    assert v1 == [
        ("memory.limit_in_bytes", str(128 * cg.MiB)),
        ("memory.memsw.limit_in_bytes", str(128 * cg.MiB)),
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "7236"),
        ("pids.max", "1024"),
    ]
    assert cg.limit_writes(1, frozenset({"pids"}), 1, 1, 5) == [("pids.max", "5")]
    v2 = cg.limit_writes(2, frozenset({"memory", "cpu"}), 256, 2000, None)
    assert v2 == [("memory.max", "256"), ("memory.swap.max", "0"), ("cpu.max", "2000 100000")]


@pytest.mark.parametrize(
    ("memory_mb", "ncpus", "quota"),
    [(128, 2, 7236), (1769, 2, 100_000), (3538, 2, 200_000), (10240, 2, 200_000),
     (10240, 1, 100_000), (1, 2, 1000)],
)
def test_cpu_quota_is_proportional_to_memory(memory_mb: int, ncpus: int, quota: int) -> None:
    assert _native.cpu_quota_us(memory_mb, 100_000, ncpus) == quota


def test_zygote_memory_has_headroom() -> None:
    assert _native.zygote_memory_bytes(128) == (128 + 64) * cg.MiB
    assert _native.zygote_memory_bytes(1024) == (1024 + 256) * cg.MiB
    with pytest.raises(ValueError):
        _native.zygote_memory_bytes(0)


def test_native_file_readers(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 7\n")
    fd = os.open(f, os.O_RDWR)
    try:
        assert _native.read_keyed_i64(fd, b"oom_kill") == 7
        with pytest.raises(OSError):
            _native.read_keyed_i64(fd, b"missing")
        os.pwrite(fd, b"max\n", 0)
        assert _native.read_i64(fd) == 2**63 - 1
        os.pwrite(fd, b"12345\n", 0)
        assert _native.read_i64(fd) == 12345
    finally:
        os.close(fd)


def test_unwritable_cgroups_fall_back_or_fail_as_asked(tmp_path: Path) -> None:
    found = fake_v2(tmp_path)
    gone = {c: cg.Hierarchy(h.version, h.mount, tmp_path / "not-there", h.controllers)
            for c, h in found.items()}
    auto = cg.Cgroups("auto", hierarchies=gone)
    auto.start()
    assert not auto.enabled
    assert "not writable" in auto.reason and "rlimits" in auto.reason
    with pytest.raises(cg.CgroupError, match="required"):
        cg.Cgroups("require", hierarchies=gone).start()


def test_off_switch_uses_rlimits() -> None:
    groups = cg.Cgroups("off")
    groups.start()
    assert not groups.enabled
    assert "switched off" in groups.reason


def test_stale_subtrees_of_dead_runtimes_are_removed_and_others_kept(tmp_path: Path) -> None:
    found = fake_v2(tmp_path)
    own = found["memory"].own
    ns = cg._pidns()
    dead = own / f"fastfaas-{ns}-999999999-1-0"
    (dead / "i0").mkdir(parents=True)
    dead_old_name = own / "fastfaas-999999998-1-0"  # before the namespace was in the name
    dead_old_name.mkdir()
    alive_pid = os.getppid()
    alive = own / f"fastfaas-{ns}-{alive_pid}-{cg._starttime(alive_pid)}-0"
    alive.mkdir()
    # Another PID namespace's runtime: its pid cannot be checked from here.
    elsewhere = own / f"fastfaas-{ns + 1}-999999999-1-0"
    elsewhere.mkdir()
    other = own / "not-ours"
    other.mkdir()
    groups = cg.Cgroups("require", hierarchies=found)
    groups.start()
    try:
        assert not dead.exists()
        assert alive.exists() and other.exists() and elsewhere.exists()
        assert sorted(groups.stale_removed) == sorted([str(dead), str(dead_old_name)])
    finally:
        groups.close()


def test_request_ids_are_uuid4_strings_of_the_pools_bytes() -> None:
    import uuid

    pool = bytes(range(256)) * 2
    for pos in (0, 16, 100, len(pool) - 16):
        got = uuid.UUID(_native.uuid4_at(pool, pos))
        want = bytearray(pool[pos:pos + 16])
        want[6] = (want[6] & 0x0F) | 0x40
        want[8] = (want[8] & 0x3F) | 0x80
        assert got.bytes == bytes(want)
        assert got.version == 4 and got.variant == uuid.RFC_4122
    for pos in (-1, len(pool) - 15):
        with pytest.raises(ValueError, match="do not fit"):
            _native.uuid4_at(pool, pos)
    ids = _native.RequestIds()
    seen = [ids.next() for _ in range(600)]  # past one 4 KB pool of random bytes
    assert len(set(seen)) == 600
    assert all(str(uuid.UUID(s)) == s and uuid.UUID(s).version == 4 for s in seen)


def test_read_files_i64_reads_each_files_first_integer_and_0_for_the_unreadable(
        tmp_path: Path) -> None:
    files = {"usage": "8192\n", "limit": "max\n", "text": "none\n", "empty": ""}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    paths = [os.fsencode(tmp_path / name) for name in [*files, "gone"]]
    assert _native.read_files_i64(paths) == [8192, 2**63 - 1, 0, 0, 0]
    assert _native.read_files_i64([]) == []
    with pytest.raises(TypeError, match="bytes"):
        _native.read_files_i64([str(tmp_path / "usage")])  # type: ignore[list-item]


def test_call_begin_and_call_end_do_a_calls_cgroup_reads_and_writes_in_one_step(
        tmp_path: Path) -> None:
    def opened(name: str, text: str) -> int:
        (tmp_path / name).write_text(text)
        return os.open(tmp_path / name, os.O_RDWR)

    peak = opened("memory.max_usage_in_bytes", "123456789\n")
    cpu_v1 = opened("cpuacct.usage", "987654321\n")
    cpu_v2 = opened("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    pids = opened("pids.current", "3\n")
    try:
        # v1: the peak and the CPU counter are reset by writing at offset 0.
        assert _native.call_begin(peak, b"0", cpu_v1, 1) == 0
        assert (tmp_path / "memory.max_usage_in_bytes").read_bytes().startswith(b"0")
        assert (tmp_path / "cpuacct.usage").read_bytes().startswith(b"0")
        (tmp_path / "cpuacct.usage").write_text("2500\n")
        (tmp_path / "memory.max_usage_in_bytes").write_text("4096\n")
        assert _native.call_end(peak, cpu_v1, 1, pids, 0) == (4096, 2500, 3, -1)
        # With the reset given and leftovers (3 tasks): nothing written, no next base.
        assert _native.call_end(peak, cpu_v1, 1, pids, 0, b"0") == (4096, 2500, 3, -1)
        assert (tmp_path / "memory.max_usage_in_bytes").read_bytes().startswith(b"4096")
        # The instance alone: the next call begins here, the peak reset and the CPU
        # counter as read its base (v1's counter is not reset).
        (tmp_path / "pids.current").write_text("1\n")
        assert _native.call_end(peak, cpu_v1, 1, pids, 500, b"0") == (4096, 2000, 1, 2500)
        assert (tmp_path / "memory.max_usage_in_bytes").read_bytes().startswith(b"0")
        assert (tmp_path / "cpuacct.usage").read_bytes().startswith(b"2500")
        # v2: the CPU counter is read (us) and subtracted at the end (ns).
        base = _native.call_begin(-1, b"reset", cpu_v2, 2)
        assert base == 1_500_000
        (tmp_path / "cpu.stat").write_text("usage_usec 1750\n")
        assert _native.call_end(-1, cpu_v2, 2, -1, base) == (0, 250_000, 1, -1)
        assert _native.call_end(-1, cpu_v2, 2, -1, base, b"reset") == (
            0, 250_000, 1, 1_750_000)
        assert _native.call_begin(-1, b"0", -1, 1) == 0  # no controllers: nothing read
        assert _native.call_end(-1, -1, 1, -1, 0) == (0, 0, 1, -1)
    finally:
        for fd in (peak, cpu_v1, cpu_v2, pids):
            os.close(fd)
    with pytest.raises(OSError, match=f"fd {peak}"):  # closed: the error names the descriptor
        _native.call_end(peak, -1, 1, -1, 0)
    with pytest.raises(OSError, match=f"fd {cpu_v2}"):
        _native.call_begin(-1, b"0", cpu_v2, 2)
