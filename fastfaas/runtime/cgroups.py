"""Cgroups for zygotes and instances, v1 or v2 per controller, or none.

fastfaas creates `fastfaas-<pid namespace>-<pid>-<start time>-<n>` under the server's own
cgroup in each hierarchy it uses, removes such subtrees left by runtimes
whose process is gone, and never touches any other cgroup. Instances join
their cgroups in the child of a fork by writing "0" to a join file opened
beforehand (v1 `tasks`, which is cheap; never a pid to `cgroup.procs` while
serving, which takes the lock every fork needs).

The per-invocation reads and writes go through descriptors opened when a
cgroup is created, and through fastfaas._native.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fastfaas import _native
from fastfaas.errors import CgroupError

CONTROLLERS: Final = ("memory", "cpu", "cpuacct", "pids", "freezer")
INSTANCE_PIDS_MAX: Final = 1024
ZYGOTE_PIDS_MAX: Final = 4096
CFS_PERIOD_US: Final = 100_000
PREFIX: Final = "fastfaas-"
# Killed tasks leave their cgroup as they exit, and nothing signals that: rmdir
# is tried again after this long.
REMOVE_RETRY_S: Final = 0.005
MiB: Final = 1024 * 1024


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and the server's own cgroup in it."""

    version: int  # 1 or 2
    mount: Path
    own: Path  # the server's cgroup directory in this hierarchy
    controllers: frozenset[str]


def _parse_mounts(mounts_text: str) -> list[tuple[str, Path, set[str]]]:
    found = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        fstype, where, options = parts[2], Path(parts[1]), set(parts[3].split(","))
        if fstype in ("cgroup", "cgroup2"):
            found.append((fstype, where, options))
    return found


def detect(
    mounts_path: str = "/proc/self/mounts", cgroup_path: str = "/proc/self/cgroup"
) -> dict[str, Hierarchy]:
    """Controller -> hierarchy, for each of CONTROLLERS that is mounted (v1 preferred)."""
    with open(mounts_path) as f:
        mounts = _parse_mounts(f.read())
    with open(cgroup_path) as f:
        membership = {}
        for line in f.read().splitlines():
            _hid, names, path = line.split(":", 2)
            membership[names] = path
    result: dict[str, Hierarchy] = {}
    for fstype, where, options in mounts:
        if fstype != "cgroup":
            continue
        ctrls = {c for c in CONTROLLERS if c in options}
        if not ctrls:
            continue
        rel = next((p for names, p in membership.items() if ctrls & set(names.split(","))), None)
        if rel is None:
            continue
        h = Hierarchy(1, where, where / rel.lstrip("/"), frozenset(ctrls))
        for c in ctrls:
            result.setdefault(c, h)
    for fstype, where, _ in mounts:
        if fstype != "cgroup2" or "" not in membership:
            continue
        own = where / membership[""].lstrip("/")
        try:
            available = set((own / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        v2ctrls: set[str] = {
            c for c in ("memory", "cpu", "pids") if c in available and c not in result
        }
        if not v2ctrls:
            continue
        # cpu.stat (usage) and cgroup.freeze come with every v2 cgroup.
        if "cpu" in v2ctrls:
            v2ctrls.add("cpuacct")
        v2ctrls.add("freezer")
        h2 = Hierarchy(2, where, own, frozenset(v2ctrls))
        for name in v2ctrls:
            result.setdefault(name, h2)
    return result


# --- what to write where, per version ------------------------------------


def limit_writes(version: int, controllers: frozenset[str], memory_bytes: int | None,
                 cpu_quota_us: int | None, pids_max: int | None) -> list[tuple[str, str]]:
    """(file, value) to size a cgroup, in an order the kernel accepts."""
    out: list[tuple[str, str]] = []
    if version == 1:
        if memory_bytes is not None and "memory" in controllers:
            out.append(("memory.limit_in_bytes", str(memory_bytes)))
            out.append(("memory.memsw.limit_in_bytes", str(memory_bytes)))
        if cpu_quota_us is not None and "cpu" in controllers:
            out.append(("cpu.cfs_period_us", str(CFS_PERIOD_US)))
            out.append(("cpu.cfs_quota_us", str(cpu_quota_us)))
        if pids_max is not None and "pids" in controllers:
            out.append(("pids.max", str(pids_max)))
    else:
        if memory_bytes is not None and "memory" in controllers:
            out.append(("memory.max", str(memory_bytes)))
            out.append(("memory.swap.max", "0"))
        if cpu_quota_us is not None and "cpu" in controllers:
            out.append(("cpu.max", f"{cpu_quota_us} {CFS_PERIOD_US}"))
        if pids_max is not None and "pids" in controllers:
            out.append(("pids.max", str(pids_max)))
    return out


JOIN_FILE: Final = {1: "tasks", 2: "cgroup.procs"}
CHILD_KERNEL_BYTES: Final = 1024 * 1024  # per live child of a zygote; ~0.4 MB measured
PEAK_FILE: Final = {1: "memory.max_usage_in_bytes", 2: "memory.peak"}
PEAK_RESET: Final = {1: b"0", 2: b"reset"}
CPU_FILE: Final = {1: "cpuacct.usage", 2: "cpu.stat"}
OOM_FILE: Final = {1: "memory.oom_control", 2: "memory.events"}
FREEZE: Final = {1: ("freezer.state", b"FROZEN", b"THAWED"), 2: ("cgroup.freeze", b"1", b"0")}


def _write(path: Path, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(
            exc.errno, f"cannot write {value!r} to {path}: {exc.strerror}"
        ) from exc


def _open(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(exc.errno, f"cannot open {path}: {exc.strerror}") from exc


@dataclass(eq=False)
class CgroupSet:
    """One cgroup per hierarchy (v1 has one hierarchy per controller here)."""

    name: str
    dirs: dict[Hierarchy, Path]
    join_fds: list[int] = field(default_factory=list)
    peak_fd: int = -1
    cpu_fd: int = -1
    cpu_version: int = 1
    pids_fd: int = -1
    oom_fd: int = -1
    oom_version: int = 1
    # The time the CPU quota held it back (its cpu.stat), as the counter stood when
    # last read (ns); read by path, and only after a call that used more CPU than one
    # period's quota (`quota_ns`; none could be held back otherwise): no descriptor.
    throttle_path: str | None = None
    throttled_base: int = 0
    quota_ns: int = 0
    memory_mb: int | None = None  # the size it was last given
    usage_path: bytes | None = None  # its memory usage file, once looked up
    oom_seen: int = 0
    # The CPU counter as the last call's end read it (ns), the peak reset then: the
    # next call's base, its `begin` with no system call; -1 when `begin` must read.
    next_base: int = -1

    def dir_for(self, controller: str) -> Path | None:
        for h, d in self.dirs.items():
            if controller in h.controllers:
                return d
        return None

    def all_fds(self) -> list[int]:
        fds = [*self.join_fds, self.peak_fd, self.cpu_fd, self.pids_fd, self.oom_fd]
        return [fd for fd in fds if fd >= 0]


def _pidns() -> int:
    """This process's PID namespace (pids name processes only within one)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _starttime(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


_counter = itertools.count()


class Cgroups:
    """fastfaas's cgroup subtree for one runtime.

    `mode`: "auto" (use cgroups where writable, else fall back to rlimits),
    "require" (raise CgroupError if not writable), or "off" (rlimits only).
    """

    def __init__(self, mode: str = "auto", hierarchies: dict[str, Hierarchy] | None = None,
                 ncpus: int | None = None) -> None:
        if mode not in ("auto", "require", "off"):
            raise ValueError(f"cgroups mode must be 'auto', 'require' or 'off', not {mode!r}")
        self.mode = mode
        self.ncpus = ncpus or os.cpu_count() or 1
        self._given = hierarchies
        self.hierarchies: list[Hierarchy] = []
        self.roots: dict[Hierarchy, Path] = {}
        self.enabled = False
        self.reason = ""
        pid = os.getpid()
        self.name = f"{PREFIX}{_pidns()}-{pid}-{_starttime(pid) or 0}-{next(_counter)}"
        self._ids = itertools.count()
        self.stale_removed: list[str] = []

    # --- set-up and tear-down --------------------------------------------

    def start(self) -> None:
        if self.mode == "off":
            self.reason = "cgroups switched off by configuration: limits are rlimits only"
            return
        try:
            found = self._given if self._given is not None else detect()
        except OSError as exc:
            found = {}
            self.reason = f"cannot read the cgroup mounts: {exc}"
        missing = [c for c in ("memory", "pids") if c not in found]
        if missing:
            self._fallback(f"no cgroup hierarchy for {', '.join(missing)}")
            return
        hierarchies = list(dict.fromkeys(found[c] for c in CONTROLLERS if c in found))
        unwritable = [str(h.own) for h in hierarchies if not os.access(h.own, os.W_OK)]
        if unwritable:
            self._fallback(f"cgroups not writable here ({', '.join(unwritable)}); run as root")
            return
        try:
            for h in hierarchies:
                self._remove_stale(h)
                root = h.own / self.name
                root.mkdir()
                self.roots[h] = root
                self.hierarchies.append(h)
        except OSError as exc:
            self.close()
            self._fallback(f"cannot create {self.name} under the server's cgroups: {exc}")
            return
        self.enabled = True
        kinds = sorted({f"{c}=v{h.version}" for c, h in found.items()})
        self.reason = f"cgroups: {' '.join(kinds)} under {self.name}"

    def _fallback(self, why: str) -> None:
        self.reason = f"{why}: limits are rlimits only (no per-invocation memory or CPU accounting)"
        if self.mode == "require":
            raise CgroupError(errno.EACCES, f"cgroups are required but {why}")

    def _remove_stale(self, h: Hierarchy) -> None:
        """Remove subtrees of runtimes whose process is gone (never another process's live one)."""
        own_ns = str(_pidns())
        for entry in h.own.glob(f"{PREFIX}*"):
            parts = entry.name[len(PREFIX):].split("-")
            if len(parts) == 3:  # named before the PID namespace was part of the name
                parts = [own_ns, *parts]
            if len(parts) != 4 or not entry.is_dir():
                continue
            pidns, pid, start = parts[0], parts[1], parts[2]
            if pidns != own_ns:
                continue  # a runtime in another PID namespace: its pid means nothing here
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            if _starttime(int(pid)) == start:
                continue  # alive
            remove_tree(entry)
            self.stale_removed.append(str(entry))

    def close(self) -> None:
        """Kill whatever is left in the subtree and remove it."""
        for h, root in list(self.roots.items()):
            remove_tree(root)
            del self.roots[h]
        self.hierarchies.clear()
        self.enabled = False

    # --- creating cgroups ------------------------------------------------

    def _make(self, prefix: str, controllers: tuple[str, ...]) -> CgroupSet:
        name = f"{prefix}{next(self._ids)}"
        dirs: dict[Hierarchy, Path] = {}
        cg = CgroupSet(name, dirs)
        try:
            for h, root in self.roots.items():
                if not h.controllers & set(controllers):
                    continue
                d = root / name
                d.mkdir()
                dirs[h] = d
                cg.join_fds.append(_open(d / JOIN_FILE[h.version], os.O_WRONLY))
        except OSError as exc:
            self.destroy(cg)
            raise CgroupError(exc.errno, f"cannot create cgroup {name}: {exc}") from exc
        return cg

    def drop_join_fds(self, cg: CgroupSet) -> None:
        """Close the `tasks` descriptors once the zygote has its copies: an idle
        instance then holds 4 descriptors in the server, not 9."""
        for fd in cg.join_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        cg.join_fds.clear()

    def ensure_join_fds(self, cg: CgroupSet) -> None:
        """Open the `tasks` descriptors again before the cgroup is used for a spawn."""
        if cg.join_fds:
            return
        try:
            for h, d in cg.dirs.items():
                cg.join_fds.append(_open(d / JOIN_FILE[h.version], os.O_WRONLY))
        except OSError as exc:
            self.drop_join_fds(cg)
            raise CgroupError(exc.errno, f"cannot open {cg.name}'s tasks files: {exc}") from exc

    def new_instance(self) -> CgroupSet:
        """An unsized instance cgroup with its hot-path descriptors open."""
        cg = self._make("i", CONTROLLERS)
        try:
            for h, d in cg.dirs.items():
                if "memory" in h.controllers:
                    cg.peak_fd = _open(d / PEAK_FILE[h.version], os.O_RDWR)
                    cg.oom_fd = _open(d / OOM_FILE[h.version], os.O_RDONLY)
                    cg.oom_version = h.version
                if "cpuacct" in h.controllers:
                    flags = os.O_RDWR if h.version == 1 else os.O_RDONLY
                    cg.cpu_fd = _open(d / CPU_FILE[h.version], flags)
                    cg.cpu_version = h.version
                if "cpu" in h.controllers:
                    cg.throttle_path = str(d / "cpu.stat")
                if "pids" in h.controllers:
                    cg.pids_fd = _open(d / "pids.current", os.O_RDONLY)
        except CgroupError:
            self.destroy(cg)
            raise
        return cg

    def new_zygote(self, memory_mb: int, children: int = 0) -> CgroupSet:
        """A zygote's cgroup: memory with headroom, a pids limit, no CPU quota.

        `children`: see room_for_children; 0 while the user's import runs, so
        that the import is held to the function's memory.
        """
        cg = self._make("z", ("memory", "pids", "freezer"))
        try:
            for h, d in cg.dirs.items():
                if "memory" in h.controllers:
                    cg.oom_fd = _open(d / OOM_FILE[h.version], os.O_RDONLY)
                    cg.oom_version = h.version
            limit = _native.zygote_memory_bytes(memory_mb) + children * CHILD_KERNEL_BYTES
            self._size(cg, limit, None, ZYGOTE_PIDS_MAX)
        except CgroupError:
            self.destroy(cg)
            raise
        cg.memory_mb = memory_mb
        return cg

    def room_for_children(self, cg: CgroupSet, memory_mb: int, children: int) -> None:
        """After the import: make room in a zygote's memory limit for `children`
        live instances. The kernel memory of a fork (the child's page tables and
        kernel structures, ~0.4 MB here) is charged to the forking zygote's
        memory cgroup and stays there when the child joins its own; without the
        room, a zygote with a few hundred instances is OOM-killed."""
        limit = _native.zygote_memory_bytes(memory_mb) + children * CHILD_KERNEL_BYTES
        self._size(cg, limit, None, ZYGOTE_PIDS_MAX)

    def size_instance(self, cg: CgroupSet, memory_mb: int) -> None:
        if cg.memory_mb == memory_mb:
            return
        quota = _native.cpu_quota_us(memory_mb, CFS_PERIOD_US, self.ncpus)
        self._size(cg, memory_mb * MiB, quota, INSTANCE_PIDS_MAX)
        cg.memory_mb = memory_mb
        cg.quota_ns = quota * 1000 if quota > 0 else 0

    def _size(self, cg: CgroupSet, memory: int | None, quota: int | None,
              pids: int | None) -> None:
        for h, d in cg.dirs.items():
            writes = limit_writes(h.version, h.controllers, memory, quota, pids)
            # Lowering a v1 limit: memory before memsw; raising: memsw first.
            if h.version == 1 and memory is not None:
                try:
                    current = int((d / "memory.limit_in_bytes").read_text())
                except (OSError, ValueError):
                    current = 0
                if memory > current:
                    writes.sort(key=lambda w: w[0] != "memory.memsw.limit_in_bytes")
            for name, value in writes:
                path = d / name
                if name == "memory.memsw.limit_in_bytes" and not path.exists():
                    continue  # no swap accounting on this kernel
                _write(path, value)

    def close_fds(self, cg: CgroupSet) -> None:
        """Close the descriptors fastfaas holds on it (idempotent)."""
        for fd in cg.all_fds():
            with contextlib.suppress(OSError):
                os.close(fd)
        cg.join_fds.clear()
        cg.peak_fd = cg.cpu_fd = cg.pids_fd = cg.oom_fd = -1

    def destroy(self, cg: CgroupSet) -> None:
        """Close its descriptors, kill what is left in it, remove it."""
        self.close_fds(cg)
        for d in cg.dirs.values():
            remove_tree(d)
        cg.dirs.clear()

    # --- per invocation ----------------------------------------------------

    def begin(self, cg: CgroupSet, *, fresh: bool = False) -> int:
        """Reset the peak; returns the CPU counter to subtract at the end (ns). After
        a call's `end` that began the next, nothing to do. `fresh`: a new instance
        in the cgroup, whatever ran in it before (the last `end`'s base is not its)."""
        base = cg.next_base
        if base >= 0 and not fresh:
            cg.next_base = -1
            return base
        cg.next_base = -1
        return _native.call_begin(cg.peak_fd, PEAK_RESET[cg.oom_version], cg.cpu_fd,
                                  cg.cpu_version)

    def end(self, cg: CgroupSet, cpu_base: int, *,
            carry: bool = True) -> tuple[int, int, int, int]:
        """(peak memory bytes, CPU ns since begin, tasks in the cgroup, ns the CPU quota
        held it back since the last end or `mark_throttled`).

        `carry`, and no leftovers: the next call's `begin` is done here, the peak
        reset and the CPU counter kept. Only for a reply that came inline: what
        the instance still frees after sending it (the reply, under 64 KB) stays
        in its heap either way, while a larger reply's memfd could still be
        charged to it here (its next call's `begin` then resets the peak)."""
        cg.next_base = -1  # until the reads below have all succeeded
        peak, cpu, pids, next_base = _native.call_end(
            cg.peak_fd, cg.cpu_fd, cg.cpu_version, cg.pids_fd, cpu_base,
            PEAK_RESET[cg.oom_version] if carry else None)
        cg.next_base = next_base
        held = 0
        if cg.quota_ns and cpu >= cg.quota_ns:
            now = self.throttled(cg)
            if now is not None:
                held, cg.throttled_base = max(0, now - cg.throttled_base), now
        return peak, cpu, pids, held

    def throttled(self, cg: CgroupSet) -> int | None:
        """The cgroup's throttled time so far (ns); None when it cannot be read now
        (the base then stays: a later read charges nothing of the past twice)."""
        if cg.throttle_path is None:
            return None
        try:
            with open(cg.throttle_path, "rb") as f:
                text = f.read()
        except OSError:
            return None
        try:
            for line in text.splitlines():
                key, _, value = line.partition(b" ")
                if key == b"throttled_time":  # v1, ns
                    return int(value)
                if key == b"throttled_usec":  # v2
                    return int(value) * 1000
        except ValueError:  # not a number: as unreadable (the call's end must not fail)
            return None
        return None

    def mark_throttled(self, cg: CgroupSet) -> None:
        """Its throttling counts from now (a cgroup back in the pool for a new instance)."""
        now = self.throttled(cg)
        if now is not None:
            cg.throttled_base = now

    def usage_file(self, cg: CgroupSet) -> bytes | None:
        """Its memory cgroup's usage file (worked out once), None without one."""
        path = cg.usage_path
        if path is None:
            for h, d in cg.dirs.items():
                if "memory" in h.controllers:
                    name = "memory.current" if h.version == 2 else "memory.usage_in_bytes"
                    path = cg.usage_path = os.fsencode(d / name)
        return path

    def memory_usage(self, cg: CgroupSet) -> int:
        """The memory cgroup's usage now (bytes), 0 if it has none or is gone."""
        path = self.usage_file(cg)
        return 0 if path is None else _native.read_files_i64([path])[0]

    def oom_kills(self, cg: CgroupSet) -> int:
        if cg.oom_fd < 0:
            return 0
        return _native.read_keyed_i64(cg.oom_fd, b"oom_kill")

    def task_count(self, cg: CgroupSet) -> int:
        """Tasks charged to the cgroup, exited-but-unreaped ones included."""
        if cg.pids_fd >= 0:
            return _native.read_i64(cg.pids_fd)
        return len(self.pids(cg))

    def pids(self, cg: CgroupSet) -> list[int]:
        d = cg.dir_for("pids") or cg.dir_for("memory")
        if d is None:
            return []
        return read_pids(d)

    def set_frozen(self, cg: CgroupSet, frozen: bool) -> None:
        for h, d in cg.dirs.items():
            if "freezer" in h.controllers:
                name, on, off = FREEZE[h.version]
                _write(d / name, (on if frozen else off).decode())

    def is_frozen(self, cg: CgroupSet) -> bool:
        for h, d in cg.dirs.items():
            if "freezer" in h.controllers:
                name, _on, _ = FREEZE[h.version]
                if h.version == 1:
                    return (d / name).read_text().strip() == "FROZEN"
                events = (d / "cgroup.events").read_text()
                return "frozen 1" in events
        return True

    def force_empty(self, cg: CgroupSet) -> None:
        """v1: reclaim the memory charged to an emptied cgroup before reuse."""
        d = cg.dir_for("memory")
        if d is not None and (d / "memory.force_empty").exists():
            with contextlib.suppress(CgroupError):
                _write(d / "memory.force_empty", "0")


def read_pids(d: Path) -> list[int]:
    try:
        text = (d / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def remove_tree(root: Path, attempts: int = 200) -> None:
    """Kill every task in a fastfaas cgroup subtree and rmdir it, deepest first.

    In C without the interpreter's lock: a worker thread removing cgroups took
    the lock for every path operation in Python and held up the event loop."""
    try:
        _native.remove_tree(root, attempts, REMOVE_RETRY_S)
    except OSError as exc:
        raise CgroupError(exc.errno,
                          f"cannot remove cgroup {exc.filename}: {exc.strerror}") from exc
