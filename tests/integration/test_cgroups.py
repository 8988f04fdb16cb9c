"""Real cgroups: limits read back from the cgroup files, usage, and the rlimit fallback."""

from __future__ import annotations

import errno
import resource
import signal
import subprocess
from pathlib import Path

import pytest

import fastfaas
from fastfaas import _native, wire
from fastfaas.errors import CgroupError
from fastfaas.runtime.cgroups import CHILD_KERNEL_BYTES, JOIN_FILE, Cgroups, remove_tree
from fastfaas.runtime.runtime import SPARES_MAX

CGROUP_REPORT = """
import os
def handler(event, context):
    if event.get("allocate_mb"):
        block = bytearray(event["allocate_mb"] * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
    if event.get("spin"):
        n = 0
        for i in range(event["spin"]):
            n += i
    with open("/proc/self/cgroup") as f:
        return {"pid": os.getpid(), "cgroup": f.read()}
"""


def cgroup_dirs(proc_cgroup: str) -> dict[str, Path]:
    out = {}
    for line in proc_cgroup.splitlines():
        _, names, path = line.split(":", 2)
        for name in names.split(","):
            if name in ("memory", "cpu", "cpuacct", "pids", "freezer"):
                out[name] = Path("/sys/fs/cgroup") / name / path.lstrip("/")
    return out


@pytest.mark.cgroups
async def test_instance_and_zygote_cgroups_have_the_functions_limits(
    runtime, make_function
) -> None:
    await runtime.deploy("sized", source=make_function(app=CGROUP_REPORT),
                         handler="app.handler", memory_mb=256)
    result = await runtime.invoke("sized", {})
    dirs = cgroup_dirs(result.value()["cgroup"])
    subtree = runtime.cgroups.name
    for name in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        assert subtree in dirs[name].parts, (name, dirs[name])
    assert int((dirs["memory"] / "memory.limit_in_bytes").read_text()) == 256 * 1024 * 1024
    quota = int((dirs["cpu"] / "cpu.cfs_quota_us").read_text())
    assert quota == _native.cpu_quota_us(256, 100_000, runtime.cgroups.ncpus) == 14472
    assert int((dirs["pids"] / "pids.max").read_text()) == 1024

    zygote_pid = runtime.describe("sized")["state"]["zygote"]["pid"]
    zdirs = cgroup_dirs(Path(f"/proc/{zygote_pid}/cgroup").read_text())
    # After the import, room for the kernel memory of its live children's forks.
    children = runtime.limits.limit + SPARES_MAX
    assert int((zdirs["memory"] / "memory.limit_in_bytes").read_text()) == (
        _native.zygote_memory_bytes(256) + children * CHILD_KERNEL_BYTES)
    assert int((zdirs["cpu"] / "cpu.cfs_quota_us").read_text()) == -1  # no CPU quota
    assert zdirs["memory"] != dirs["memory"]


@pytest.mark.cgroups
async def test_usage_is_measured_per_invocation(runtime, make_function) -> None:
    await runtime.deploy("usage", source=make_function(app=CGROUP_REPORT),
                         handler="app.handler", memory_mb=512)
    await runtime.invoke("usage", {})
    big = await runtime.invoke("usage", {"allocate_mb": 64, "spin": 2_000_000})
    small = await runtime.invoke("usage", {})
    assert big.start == small.start == "warm"
    assert big.usage.max_memory_bytes >= 64 * 1024 * 1024
    assert small.usage.max_memory_bytes < big.usage.max_memory_bytes  # reset between calls
    assert big.usage.cpu_us > small.usage.cpu_us > 0


@pytest.mark.cgroups
async def test_a_calls_end_begins_the_next_only_after_an_inline_reply(
        runtime, make_function) -> None:
    """After a reply that came inline, the next call's cgroup begin is done at the
    end (the peak reset there, the CPU counter kept as its base); after one that
    came as a memfd (over wire.INLINE_MAX), whose pages the instance may still
    hold, the next call begins afresh, and is measured on its own either way."""
    await runtime.deploy("reply", source=make_function(app=SIZED_REPLY),
                         handler="app.handler", memory_mb=512)
    first = await runtime.invoke("reply", {"kb": 1})
    assert first.ok
    [inst] = [i for i in runtime._functions["reply"].instances.values()
              if i.instance_id == first.instance_id]
    assert inst.cgroup.next_base >= 0
    big = await runtime.invoke("reply", {"kb": 2 * wire.INLINE_MAX // 1024})
    assert big.ok and len(big.payload) > wire.INLINE_MAX
    assert inst.cgroup.next_base == -1
    small = await runtime.invoke("reply", {"kb": 1})
    assert small.ok and inst.cgroup.next_base >= 0
    assert big.instance_id == small.instance_id == first.instance_id
    assert big.start == small.start == "warm"
    assert small.usage.cpu_us > 0


SIZED_REPLY = """
def handler(event, context):
    return "x" * (event["kb"] * 1024)
"""


@pytest.mark.cgroups
async def test_statistics_report_cgroups(runtime) -> None:
    stats = runtime.statistics()["cgroups"]
    assert stats["enabled"] is True
    assert stats["subtree"].startswith("fastfaas-")
    for root in runtime.cgroups.roots.values():
        assert root.is_dir()


async def test_rlimit_fallback_when_cgroups_are_off(tmp_path, make_function) -> None:
    code = make_function(app="""
        import resource
        def handler(event, context):
            block = bytearray(event["mb"] * 1024 * 1024) if event["mb"] else b""
            return {"data": resource.getrlimit(resource.RLIMIT_DATA),
                    "core": resource.getrlimit(resource.RLIMIT_CORE), "n": len(block)}
    """)
    async with fastfaas.Runtime(data_dir=tmp_path / "d", cgroups="off", isolation="none") as rt:
        stats = rt.statistics()["cgroups"]
        assert stats["enabled"] is False and "rlimits" in stats["reason"]
        assert rt.statistics()["isolation"]["available"] == ["none"]
        await rt.deploy("limited", source=code, handler="app.handler", memory_mb=128)
        ok = await rt.invoke("limited", {"mb": 0})
        assert ok.value()["data"] == [128 * 1024 * 1024] * 2
        assert ok.value()["core"] == [0, 0]
        assert ok.usage.max_memory_bytes > 0  # the instance's own maxrss
        too_big = await rt.invoke("limited", {"mb": 512})
        assert too_big.error is not None and too_big.error.error_type == "MemoryError"
        again = await rt.invoke("limited", {"mb": 0})
        assert again.ok and again.instance_id == ok.instance_id


def test_cgroups_mode_is_validated() -> None:
    with pytest.raises(ValueError, match="cgroups mode"):
        fastfaas.Runtime(cgroups="sometimes")
    assert resource.RLIMIT_DATA  # the fallback's limit exists on this platform


@pytest.mark.cgroups
def test_remove_tree_kills_what_is_inside_thaws_and_removes_deepest_first() -> None:
    groups = Cgroups("require")
    groups.start()
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        trees = []
        for h, root in groups.roots.items():
            leaf = root / "t" / "a" / "b"
            leaf.mkdir(parents=True)
            (root / "t" / "c").mkdir()
            p = subprocess.Popen(["sleep", "600"])
            sleepers.append(p)
            (leaf / JOIN_FILE[h.version]).write_text(str(p.pid))
            if h.version == 1 and "freezer" in h.controllers:
                (leaf / "freezer.state").write_text("FROZEN")
                assert (leaf / "freezer.state").read_text().strip() in ("FREEZING", "FROZEN")
            trees.append(root / "t")
        assert any("freezer" in h.controllers for h in groups.roots)  # a frozen leaf was made
        for tree in trees:
            remove_tree(tree)
            assert not tree.exists()
            remove_tree(tree)  # gone already: nothing to do
        for p in sleepers:
            assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        roots = list(groups.roots.values())
        groups.close()  # thaws and kills a sleeper a failed assert left behind
        for p in sleepers:
            p.kill()
            p.wait()
    assert roots and not any(root.exists() for root in roots)


def test_remove_tree_names_the_directory_it_cannot_remove(tmp_path: Path) -> None:
    stuck = tmp_path / "t" / "a" / "full"
    stuck.mkdir(parents=True)
    (stuck / "file").write_text("rmdir refuses a directory that is not empty\n")
    (tmp_path / "t" / "b").mkdir()
    with pytest.raises(CgroupError) as caught:
        remove_tree(tmp_path / "t", attempts=3)
    assert caught.value.errno == errno.ENOTEMPTY
    assert f"cannot remove cgroup {stuck}:" in str(caught.value)
    assert (stuck / "file").exists()
