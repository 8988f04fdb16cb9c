# cython: language_level=3
"""fastfaas._native: the hot path in C. Thin: converts types, maps errors, holds no policy."""

from libc.errno cimport errno
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, strerror
from libc.stdio cimport snprintf
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from posix.types cimport pid_t

from ff cimport *

import math
import os
from collections import deque as _deque
from heapq import heapify as _heapify, heappop as _heappop, heappush as _heappush

cdef extern from "Python.h":
    void PyOS_BeforeFork()
    void PyOS_AfterFork_Parent()
    void PyOS_AfterFork_Child()

cdef extern from "sys/prctl.h":
    int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)
    int PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE

cdef extern from "time.h":
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int clock_gettime(int clk, timespec *ts)

cdef extern from "sys/timerfd.h":
    struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec *new_value, itimerspec *old_value)
    int TFD_NONBLOCK, TFD_CLOEXEC, TFD_TIMER_ABSTIME

STATE_FREE = FF_FREE
STATE_SPAWNING = FF_SPAWNING
STATE_IDLE = FF_IDLE
STATE_BUSY = FF_BUSY
STATE_DRAINING = FF_DRAINING
STATE_DEAD = FF_DEAD
STATE_NAMES = ("free", "spawning", "idle", "busy", "draining", "dead")
KIND_WARM = FF_WARM
KIND_SPARE = FF_SPARE


cdef _oserror(int err, str what):
    return OSError(err, f"{what}: {os.strerror(err)}")


def spawn(join_fds=(), close_fds=(), stdio=(-1, -1, -1), rlimits=(), *,
          bint new_session=True, bint reset_signals=True, int uid=-1, int gid=-1,
          int pdeathsig=0):
    """Fork an instance from the calling process and set it up in the child.

    Returns the child's pid in the parent and 0 in the child. Raises
    fastfaas.errors.SpawnError (an OSError) naming the step that failed.
    """
    from fastfaas.errors import SpawnError

    cdef ff_spawn_opts o
    cdef int step = 0
    cdef pid_t pid
    cdef int i
    cdef list join = list(join_fds), close = list(close_fds), rl = list(rlimits)
    cdef int *join_c = <int *>malloc(sizeof(int) * (len(join) + 1))
    cdef int *close_c = <int *>malloc(sizeof(int) * (len(close) + 1))
    cdef ff_rlimit *rl_c = <ff_rlimit *>malloc(sizeof(ff_rlimit) * (len(rl) + 1))
    if join_c == NULL or close_c == NULL or rl_c == NULL:
        free(join_c); free(close_c); free(rl_c)
        raise MemoryError()
    try:
        for i in range(len(join)):
            join_c[i] = join[i]
        for i in range(len(close)):
            close_c[i] = close[i]
        for i in range(len(rl)):
            rl_c[i].resource = rl[i][0]
            rl_c[i].soft = rl[i][1]
            rl_c[i].hard = rl[i][2]
        o.join_fds = join_c
        o.n_join = len(join)
        o.close_fds = close_c
        o.n_close = len(close)
        for i in range(3):
            o.stdio[i] = stdio[i]
        o.rlimits = rl_c
        o.n_rlimits = len(rl)
        o.new_session = new_session
        o.reset_signals = reset_signals
        o.uid = uid
        o.gid = gid
        o.pdeathsig = pdeathsig

        PyOS_BeforeFork()
        pid = ff_spawn(&o, &step)
        if pid == 0:
            PyOS_AfterFork_Child()
            return 0
        PyOS_AfterFork_Parent()
    finally:
        free(join_c)
        free(close_c)
        free(rl_c)
    if pid < 0:
        name = ff_spawn_step_name(step).decode()
        raise SpawnError(-pid, f"spawn failed at {name}: {os.strerror(-pid)}", name)
    return pid


def set_pdeathsig(int sig):
    """PR_SET_PDEATHSIG for the calling thread's process."""
    if prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) < 0:
        raise _oserror(errno, "prctl(PR_SET_PDEATHSIG)")


def set_child_subreaper(bint on=True):
    """Become the reaper of orphaned descendants."""
    if prctl(PR_SET_CHILD_SUBREAPER, on, 0, 0, 0) < 0:
        raise _oserror(errno, "prctl(PR_SET_CHILD_SUBREAPER)")


def monotonic_timer():
    """A non-blocking, close-on-exec timerfd on CLOCK_MONOTONIC (time.monotonic's clock)."""
    cdef int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        raise _oserror(errno, "timerfd_create")
    return fd


def arm_timer_at(int fd, double when):
    """Make `fd` (a monotonic_timer) readable at `when`, in time.monotonic() seconds.

    A time already past fires at once. Disarming is arming at 0."""
    cdef itimerspec its
    cdef double whole
    if not (-1e15 < when < 1e15):  # NaN, infinities, past what time_t holds
        raise ValueError(f"arm_timer_at: {when!r} is not a time")
    its.it_interval.tv_sec = 0
    its.it_interval.tv_nsec = 0
    if when <= 0:
        its.it_value.tv_sec = 0
        its.it_value.tv_nsec = 0
    else:
        whole = <double><long>when
        its.it_value.tv_sec = <time_t>whole
        its.it_value.tv_nsec = <long>((when - whole) * 1e9)
        if its.it_value.tv_sec == 0 and its.it_value.tv_nsec == 0:
            its.it_value.tv_nsec = 1  # 0 would disarm it
    if timerfd_settime(fd, TFD_TIMER_ABSTIME if when > 0 else 0, &its, NULL) < 0:
        raise _oserror(errno, "timerfd_settime")


def set_dumpable(bint on):
    if prctl(PR_SET_DUMPABLE, on, 0, 0, 0) < 0:
        raise _oserror(errno, "prctl(PR_SET_DUMPABLE)")


# ---- the strict sandbox (csrc/ff_sandbox.c): kernel calls, no policy ----

cdef extern from "sched.h":
    int CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET
    int CLONE_NEWCGROUP

cdef extern from "sys/mount.h":
    unsigned long MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC
    unsigned long MS_PRIVATE

NEWNS = CLONE_NEWNS
NEWUTS = CLONE_NEWUTS
NEWIPC = CLONE_NEWIPC
NEWUSER = CLONE_NEWUSER
NEWPID = CLONE_NEWPID
NEWNET = CLONE_NEWNET
NEWCGROUP = CLONE_NEWCGROUP
CLONE_NS_FLAGS = ff_clone_ns_flags
RDONLY = MS_RDONLY
NOSUID = MS_NOSUID
NODEV = MS_NODEV
NOEXEC = MS_NOEXEC
REMOUNT = MS_REMOUNT
BIND = MS_BIND
REC = MS_REC
PRIVATE = MS_PRIVATE


def unshare(int flags):
    """unshare(2) (os.unshare arrived in Python 3.12)."""
    cdef int rc = ff_unshare(flags)
    if rc < 0:
        raise _oserror(-rc, f"unshare({flags:#x})")


def setns(int fd, int nstype):
    cdef int rc = ff_setns(fd, nstype)
    if rc < 0:
        raise _oserror(-rc, f"setns({fd}, {nstype:#x})")


def mount(source, str target, fstype=None, unsigned long flags=0, data=None):
    """mount(2). source, fstype and data may be None."""
    cdef bytes s = os.fsencode(source) if source is not None else None
    cdef bytes t = os.fsencode(target)
    cdef bytes f = fstype.encode() if fstype is not None else None
    cdef bytes d = data.encode() if data is not None else None
    cdef int rc = ff_mount(<const char *>s if s is not None else NULL, t,
                           <const char *>f if f is not None else NULL, flags,
                           <const char *>d if d is not None else NULL)
    if rc < 0:
        raise _oserror(-rc, f"mount({source!r}, {target!r}, {fstype!r}, {flags:#x}, {data!r})")


def readonly_tree(str path):
    """Every mount at and under `path` read-only (mount_setattr; OSError ENOSYS before 5.12)."""
    cdef bytes p = os.fsencode(path)
    cdef int rc = ff_readonly_tree(p)
    if rc < 0:
        raise _oserror(-rc, f"mount_setattr({path!r}, AT_RECURSIVE, MOUNT_ATTR_RDONLY)")


def enter_user_namespace(unsigned int inside_uid, unsigned int outside_uid,
                         unsigned int inside_gid, unsigned int outside_gid):
    """A new user namespace where the caller (root outside) is inside_uid:inside_gid."""
    cdef int rc = ff_enter_userns(inside_uid, outside_uid, inside_gid, outside_gid)
    if rc < 0:
        raise _oserror(-rc, "entering a user namespace")


def drop_capabilities():
    """Every capability set emptied (the bounding set too), no_new_privs set."""
    cdef int rc = ff_drop_capabilities()
    if rc < 0:
        raise _oserror(-rc, "dropping capabilities")


def loopback_up():
    cdef int rc = ff_loopback_up()
    if rc < 0:
        raise _oserror(-rc, "bringing up lo")


def seccomp_install():
    """Install fastfaas's seccomp filter on the calling process (needs no_new_privs)."""
    cdef int rc = ff_seccomp_install()
    if rc < 0:
        raise _oserror(-rc, "installing the seccomp filter")


def seccomp_length():
    """Instructions in the filter (it is built once, before any fork uses it)."""
    return ff_seccomp_length()


def cpu_quota_us(int64_t memory_mb, int64_t period_us, int64_t ncpus):
    """CPU quota per period for a memory size: 1769 MB = one vCPU, >= 1 ms, <= ncpus."""
    cdef int64_t q = ff_cpu_quota_us(memory_mb, period_us, ncpus)
    if q < 0:
        raise ValueError(f"cpu_quota_us({memory_mb}, {period_us}, {ncpus}): all must be > 0")
    return q


def zygote_memory_bytes(int64_t memory_mb):
    """Memory limit of a function zygote's cgroup: size plus headroom."""
    cdef int64_t b = ff_zygote_memory_bytes(memory_mb)
    if b < 0:
        raise ValueError(f"zygote_memory_bytes({memory_mb}): memory_mb must be > 0")
    return b


def read_i64(int fd):
    """The first integer in a cgroup file read from offset 0 ('max' is 2**63-1)."""
    cdef int64_t v = 0
    cdef int rc = ff_read_i64(fd, &v)
    if rc < 0:
        raise _oserror(-rc, f"read integer from fd {fd}")
    return v


def read_files_i64(list paths):
    """The first integer of each file named in `paths` (bytes), 0 for one that
    cannot be read (a cgroup gone meanwhile): a memory pass over thousands of
    cgroups, read without the GIL (call it from a worker thread)."""
    cdef tuple keep = tuple(paths)  # holds the bytes while the GIL is released
    cdef Py_ssize_t n = len(keep), i
    cdef const char **names
    cdef int64_t *values
    for path in keep:
        if not isinstance(path, bytes):
            raise TypeError(f"paths must be bytes, not {type(path).__name__}")
    names = <const char **>malloc((n or 1) * sizeof(char *))
    values = <int64_t *>malloc((n or 1) * sizeof(int64_t))
    if names == NULL or values == NULL:
        free(names)
        free(values)
        raise MemoryError()
    try:
        for i in range(n):
            names[i] = <bytes>keep[i]
        with nogil:
            for i in range(n):
                if ff_read_path_i64(names[i], &values[i]) < 0:
                    values[i] = 0
        return [values[i] for i in range(n)]
    finally:
        free(names)
        free(values)


def remove_tree(path, int attempts=200, double retry_s=0.005):
    """Kill every task in the cgroup tree at `path` and remove it, deepest first
    (see ff_remove_tree). Runs without the GIL: a worker thread removing
    cgroups does not hold up the event loop. OSError names the directory that
    could not be removed."""
    cdef bytes root = os.fsencode(path)
    cdef size_t cap = 4096
    cdef char *buf
    cdef int rc
    cdef long retry_ns = <long>(retry_s * 1e9)
    if len(root) >= cap or b"\0" in root:
        raise ValueError(f"not a cgroup directory path: {path!r}")
    buf = <char *>malloc(cap)
    if buf == NULL:
        raise MemoryError()
    try:
        memcpy(buf, <const char *>root, len(root) + 1)
        with nogil:
            rc = ff_remove_tree(buf, cap, attempts, retry_ns)
        if rc < 0:
            failed = os.fsdecode(<bytes>buf)
            raise OSError(-rc, os.strerror(-rc), failed)
    finally:
        free(buf)


def uuid4_at(bytes pool, Py_ssize_t pos):
    """A UUID4 string from the 16 random bytes of `pool` at `pos` (version and
    variant bits set): a request id without a syscall or 20 Python operations."""
    if pos < 0 or pos + 16 > len(pool):
        raise ValueError(f"16 bytes at {pos} do not fit in a pool of {len(pool)}")
    return _uuid4(<const unsigned char *>pool + pos)


cdef class RequestIds:
    """UUID4 request ids from random bytes read 4 KB at a time (no syscall per call)."""

    cdef bytes _pool
    cdef Py_ssize_t _pos

    def __cinit__(self):
        self._pool = b""
        self._pos = 0

    cpdef str next(self):
        cdef Py_ssize_t pos = self._pos
        if pos + 16 > len(self._pool):
            self._pool = os.urandom(4096)
            pos = 0
        self._pos = pos + 16
        return _uuid4(<const unsigned char *>self._pool + pos)


cdef str _uuid4(const unsigned char *b):
    cdef char out[36]
    cdef unsigned char c
    cdef int i, j = 0
    for i in range(16):
        c = b[i]
        if i == 6:
            c = (c & 0x0F) | 0x40
        elif i == 8:
            c = (c & 0x3F) | 0x80
        if i == 4 or i == 6 or i == 8 or i == 10:
            out[j] = b'-'
            j += 1
        out[j] = b"0123456789abcdef"[c >> 4]
        out[j + 1] = b"0123456789abcdef"[c & 15]
        j += 2
    return out[:36].decode("ascii")


# --- trio's clock, read without a Python call ---------------------------------------

cdef class OffsetClock:
    """`offset` + CLOCK_MONOTONIC in seconds: what trio's SystemClock.current_time
    computes (`self.offset + time.perf_counter()`, perf_counter being
    CLOCK_MONOTONIC on Linux), as a callable with no Python frame."""

    cdef readonly double offset

    def __init__(self, double offset):
        self.offset = offset

    def __call__(self):
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return self.offset + (<double>(<int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec)) / 1e9


def clock_reader(clock):
    """A reader of `clock`'s current_time: an OffsetClock when it is trio's own
    SystemClock (the clock of a server), else its method (a test's MockClock)."""
    cls = type(clock)
    if (cls.__name__ == "SystemClock" and cls.__module__.startswith("trio.")
            and type(getattr(clock, "offset", None)) is float):
        return OffsetClock(clock.offset)
    return clock.current_time


# --- invocation deadlines (fastfaas.runtime.policy's, per call) -----------------------

cdef class Deadline:
    """One invocation's deadline in a Deadlines heap; `finish()` it when the call ends."""

    cdef readonly double at
    cdef readonly object key
    cdef readonly bint done
    cdef Deadlines _owner

    cpdef finish(self):
        if not self.done:
            self.done = True
            self._owner._live -= 1


cdef class Deadlines:
    """Deadlines of invocations in flight: O(log n) to add, O(1) to finish.

    Finished entries are dropped lazily, when they reach the top, and the
    heap is rebuilt when they outnumber the live ones: otherwise a long
    `timeout_s` under load would pile up millions of finished entries for
    the watcher to pop at once. Heap items are (at, seq, entry) tuples, so
    comparisons run in C.
    """

    cdef readonly list _heap
    cdef Py_ssize_t _live
    cdef long long _seq

    def __cinit__(self):
        self._heap = []
        self._live = 0
        self._seq = 0

    def __len__(self):
        return self._live

    cpdef Deadline push(self, double at, object key):
        cdef Deadline entry = Deadline.__new__(Deadline)
        entry.at = at
        entry.key = key
        entry._owner = self
        heap = self._heap
        if len(heap) > 64 and len(heap) > 2 * self._live:
            heap[:] = [item for item in heap if not (<Deadline>item[2]).done]
            _heapify(heap)
        _heappush(heap, (at, self._seq, entry))
        self._seq += 1
        self._live += 1
        return entry

    cdef void _drop_done(self) except *:
        heap = self._heap
        while heap and (<Deadline>heap[0][2]).done:
            _heappop(heap)

    def next_deadline(self):
        """The earliest deadline of an unfinished invocation."""
        self._drop_done()
        return self._heap[0][0] if self._heap else None

    def expired(self, double now):
        """Keys of unfinished invocations whose deadline is <= now (finished)."""
        cdef Deadline entry
        out = []
        self._drop_done()
        while self._heap and self._heap[0][0] <= now:
            entry = _heappop(self._heap)[2]
            if not entry.done:
                entry.finish()
                out.append(entry.key)
            self._drop_done()
        return out



# --- per-call policy (fastfaas.runtime.policy's, compiled: each runs per call) -------

cdef class ConcurrencyLimits:
    """A server-wide concurrency limit with per-function reservations (sans-IO).

    As on Lambda: a function with `reserved_concurrency` R has R executions
    held for it, which the others cannot take, and R is also its cap; the
    others share what is left (the limit minus every reservation). A
    function's `max_concurrency` caps it further. Counts are per function
    name, across its versions.
    """

    cdef readonly Py_ssize_t limit
    cdef readonly Py_ssize_t unreserved  # executions the functions without a reservation share
    cdef dict _reserved
    cdef dict _in_flight
    cdef Py_ssize_t _unreserved_in_use

    def __init__(self, Py_ssize_t limit):
        if limit < 1:
            raise ValueError(f"the concurrency limit must be >= 1, not {limit}")
        self.limit = limit
        self._reserved = {}
        self._in_flight = {}
        self._unreserved_in_use = 0
        self.unreserved = limit

    @property
    def reserved_total(self):
        return self.limit - self.unreserved

    def check_reservation(self, str name, reserved):
        """Why `reserved` cannot be given to `name` (None: it can)."""
        if not reserved:
            return None
        others = self.reserved_total - self._reserved.get(name, 0)
        if others + reserved > self.limit:
            return (f"reserved_concurrency {reserved} is more than what is left to reserve:"
                    f" the server's limit is {self.limit} and {others} is reserved by other"
                    " functions")
        return None

    def set_reservation(self, str name, reserved):
        """Raises ValueError when the reservation does not fit (see check_reservation)."""
        why = self.check_reservation(name, reserved)
        if why is not None:
            raise ValueError(why)
        cdef Py_ssize_t in_flight = self._in_flight.get(name, 0)
        was_reserved = name in self._reserved
        if reserved:
            self._reserved[name] = reserved
        else:
            self._reserved.pop(name, None)
        now_reserved = name in self._reserved
        self.unreserved = self.limit - sum(self._reserved.values())
        if was_reserved != now_reserved:  # its calls in flight move between the pools
            self._unreserved_in_use += -in_flight if now_reserved else in_flight

    def forget(self, str name):
        self.set_reservation(name, None)

    cpdef object try_acquire(self, str name, object max_concurrency):
        """Take one execution for `name`; the reason it is refused, or None."""
        cdef Py_ssize_t in_flight = self._in_flight.get(name, 0)
        if max_concurrency is not None and in_flight >= max_concurrency:
            return f"function {name!r} is at its max_concurrency ({max_concurrency})"
        reserved = self._reserved.get(name)
        if reserved is not None:
            if in_flight >= reserved:
                return f"function {name!r} is at its reserved_concurrency ({reserved})"
        elif self._unreserved_in_use >= self.unreserved:
            return (f"the server is at its concurrency limit ({self.unreserved} executions for"
                    " functions without a reservation)")
        else:
            self._unreserved_in_use += 1
        self._in_flight[name] = in_flight + 1
        return None

    cpdef release(self, str name):
        cdef Py_ssize_t in_flight = self._in_flight.get(name, 0) - 1
        if in_flight < 0:
            raise RuntimeError(f"release without acquire for {name!r}")
        if in_flight:
            self._in_flight[name] = in_flight
        else:
            del self._in_flight[name]
        if name not in self._reserved:
            self._unreserved_in_use -= 1

    def in_flight(self, str name):
        return self._in_flight.get(name, 0)

    def statistics(self):
        return {"limit": self.limit, "reserved": self.reserved_total,
                "unreserved_in_use": self._unreserved_in_use,
                "in_flight": sum(self._in_flight.values())}


cdef class FrequencyClass:
    """Is a function `frequent` or `infrequent`? From its recent rate and in-flight
    count, with hysteresis (sans-IO).

    It becomes frequent when its rate over `window_s` reaches `promote_per_s`,
    or at once when `burst_in_flight` of its calls are in flight; it becomes
    infrequent again only below `demote_per_s` with fewer calls in flight
    than that, and not before a whole window has passed since it last changed
    (or was created: the runtime creates a just-deployed function frequent, as
    a call is likely soon). The times of recent calls are kept in a bounded
    deque (the oldest go first under a flood).
    """

    cdef readonly double window_s, promote_per_s, demote_per_s
    cdef readonly Py_ssize_t burst_in_flight
    cdef public bint frequent
    cdef double _since
    cdef readonly object _calls

    def __init__(self, double window_s=10.0, double promote_per_s=1.0,
                 double demote_per_s=0.2, Py_ssize_t burst_in_flight=2, *,
                 bint frequent=False, double since=-math.inf):
        if not demote_per_s < promote_per_s:
            raise ValueError("demote_per_s must be below promote_per_s")
        self.window_s = window_s
        self.promote_per_s = promote_per_s
        self.demote_per_s = demote_per_s
        self.burst_in_flight = burst_in_flight
        self.frequent = frequent
        self._since = since
        self._calls = _deque(maxlen=max(8, math.ceil(4 * promote_per_s * window_s)))

    cdef Py_ssize_t _count(self, double now) except -1:
        """Calls in (now - window_s, now]."""
        cdef double cutoff = now - self.window_s
        times = self._calls
        while times and <double>times[0] <= cutoff:
            times.popleft()
        return len(times)

    def rate(self, double now):
        return self._count(now) / self.window_s

    cpdef bint note_call(self, double now, Py_ssize_t in_flight) except -1:
        """A call arrives with `in_flight` calls of the function running (itself
        included); returns whether the function is frequent now."""
        self._calls.append(now)
        return self.update(now, in_flight)

    cpdef bint update(self, double now, Py_ssize_t in_flight) except -1:
        cdef Py_ssize_t calls = self._count(now)
        cdef double rate = calls / self.window_s
        if not self.frequent:
            # At least two calls: one call in a short window is no rate.
            if (calls >= max(2.0, self.promote_per_s * self.window_s)
                    or in_flight >= self.burst_in_flight):
                self.frequent = True
                self._since = now
        elif (rate < self.demote_per_s and in_flight < self.burst_in_flight
              and now - self._since >= self.window_s):
            self.frequent = False
            self._since = now
        return self.frequent



# --- HTTP/1.1 requests in their common form -----------------------------------------

cdef unsigned char _TCHAR[256]  # a header name's characters (RFC 9110 tchar)
cdef unsigned char _TARGET[256]  # a request target's, kept to RFC 3986's (no '#')


cdef void _fill_classes():
    cdef int c
    for c in range(256):
        _TCHAR[c] = 0
        _TARGET[c] = 0
    for c in b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        _TCHAR[c] = 1
        _TARGET[c] = 1
    for c in b"!#$%&'*+-.^_`|~":
        _TCHAR[c] = 1
    for c in b"-._~:/?[]@!$&'()*+,;=%":
        _TARGET[c] = 1


_fill_classes()

cdef tuple _METHODS = (b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS")
cdef bytes _CONTENT_LENGTH = b"content-length"
cdef bytes _CONNECTION = b"connection"
# Proxy-Connection, which llhttp reads as Connection, is httptools' whatever its value.
cdef tuple _NOT_COMMON = (b"transfer-encoding", b"expect", b"upgrade", b"proxy-connection")


def parse_request(bytes data not None, Py_ssize_t start, Py_ssize_t max_head,
                  Py_ssize_t max_headers, Py_ssize_t max_body):
    """One whole request at data[start:] in the common form, parsed in one call:
    (method, target, headers with lower-case names, body, end offset); None for
    anything else, incomplete or not, which the full parser (httptools) then
    takes, with its errors.

    The common form, and nothing looser: a method of GET, POST, PUT, PATCH,
    DELETE, HEAD or OPTIONS; a target of RFC 3986 characters starting with '/';
    HTTP/1.1; CRLF line ends; header names of token characters, each once;
    values of visible ASCII and inner spaces; no Transfer-Encoding, Expect or
    Upgrade, Connection only as keep-alive and no Proxy-Connection; a
    Content-Length of at most nine digits and max_body; at most max_headers
    headers, and max_head bytes of head both as sent and as ServerConnection
    counts them (target, and name, value and 4 per header); the whole body
    present."""
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = start, mark, name_end, value_start, ml, i, count = 0
    cdef Py_ssize_t limit, counted
    cdef long long length = 0
    cdef char *low
    cdef bytes name, value
    cdef dict headers = {}
    if start < 0 or start > n:
        raise ValueError("start is outside the data")
    limit = n if n - start <= max_head else start + max_head
    method = None
    for m in _METHODS:
        ml = PyBytes_GET_SIZE(m)
        if (limit - pos > ml and memcmp(p + pos, PyBytes_AS_STRING(m), ml) == 0
                and p[pos + ml] == 32):  # SP
            method = m
            pos += ml + 1
            break
    if method is None:
        return None
    mark = pos
    if pos >= limit or p[pos] != 47:  # '/'
        return None
    while pos < limit and _TARGET[p[pos]]:
        pos += 1
    target = PyBytes_FromStringAndSize(<const char *>p + mark, pos - mark)
    counted = pos - mark  # the head's size as ServerConnection counts it for its 431
    if limit - pos < 11 or memcmp(p + pos, b" HTTP/1.1\r\n", 11) != 0:
        return None
    pos += 11
    while True:
        if limit - pos < 2:
            return None
        if p[pos] == 13 and p[pos + 1] == 10:  # the blank line: the head ends
            pos += 2
            break
        mark = pos
        while pos < limit and _TCHAR[p[pos]]:
            pos += 1
        name_end = pos
        if name_end == mark or pos >= limit or p[pos] != 58:  # ':'
            return None
        pos += 1
        while pos < limit and p[pos] == 32:
            pos += 1
        value_start = pos
        while pos < limit and 32 <= p[pos] <= 126:
            pos += 1
        if (pos == value_start or p[pos - 1] == 32 or limit - pos < 2
                or p[pos] != 13 or p[pos + 1] != 10):
            return None
        count += 1
        counted += name_end - mark + pos - value_start + 4
        if count > max_headers or counted > max_head:
            return None
        name = PyBytes_FromStringAndSize(NULL, name_end - mark)
        low = PyBytes_AS_STRING(name)
        for i in range(name_end - mark):
            low[i] = p[mark + i] + 32 if 65 <= p[mark + i] <= 90 else p[mark + i]
        value = PyBytes_FromStringAndSize(<const char *>p + value_start, pos - value_start)
        pos += 2
        if name in headers or name in _NOT_COMMON:
            return None
        if name == _CONTENT_LENGTH:
            if PyBytes_GET_SIZE(value) > 9:
                return None
            for i in range(PyBytes_GET_SIZE(value)):
                if not 48 <= p[value_start + i] <= 57:
                    return None
                length = length * 10 + (p[value_start + i] - 48)
        elif name == _CONNECTION and value.lower() != b"keep-alive":
            return None
        headers[name] = value
    if length > max_body or n - pos < length:
        return None
    body = PyBytes_FromStringAndSize(<const char *>p + pos, length) if length else b""
    return method, target, headers, body, pos + length


def response_bytes(bytes status_line not None, list headers not None, bytes body not None,
                   bint length, bint keep_alive, bint head):
    """An HTTP/1.1 response in one allocation: `status_line` (with its CRLF), each
    (name, value) header of bytes, `content-length` when `length`, `connection:
    close` unless `keep_alive`, the blank line, and `body` unless `head`."""
    cdef char digits[24]
    cdef int ndigits = 0
    cdef Py_ssize_t size = PyBytes_GET_SIZE(status_line) + 2
    cdef Py_ssize_t n
    cdef char *out
    cdef bytes data
    cdef tuple header
    for item in headers:
        if not (type(item) is tuple and len(<tuple>item) == 2
                and type((<tuple>item)[0]) is bytes and type((<tuple>item)[1]) is bytes):
            raise TypeError(f"a header must be a (bytes, bytes) tuple, not {item!r}")
        size += PyBytes_GET_SIZE((<tuple>item)[0]) + PyBytes_GET_SIZE((<tuple>item)[1]) + 4
    if length:
        ndigits = snprintf(digits, sizeof(digits), "%zd", PyBytes_GET_SIZE(body))
        size += 16 + ndigits + 2  # "content-length: " N CRLF
    if not keep_alive:
        size += 19  # "connection: close" CRLF
    if not head:
        size += PyBytes_GET_SIZE(body)
    data = PyBytes_FromStringAndSize(NULL, size)
    out = PyBytes_AS_STRING(data)

    n = PyBytes_GET_SIZE(status_line)
    memcpy(out, PyBytes_AS_STRING(status_line), n)
    out += n
    for item in headers:
        header = <tuple>item
        n = PyBytes_GET_SIZE(header[0])
        memcpy(out, PyBytes_AS_STRING(header[0]), n)
        out += n
        memcpy(out, b": ", 2)
        out += 2
        n = PyBytes_GET_SIZE(header[1])
        memcpy(out, PyBytes_AS_STRING(header[1]), n)
        out += n
        memcpy(out, b"\r\n", 2)
        out += 2
    if length:
        memcpy(out, b"content-length: ", 16)
        out += 16
        memcpy(out, digits, ndigits)
        out += ndigits
        memcpy(out, b"\r\n", 2)
        out += 2
    if not keep_alive:
        memcpy(out, b"connection: close\r\n", 19)
        out += 19
    memcpy(out, b"\r\n", 2)
    out += 2
    if not head:
        memcpy(out, PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body))
    return data


def call_begin(int peak_fd, bytes peak_reset, int cpu_fd, int cpu_version):
    """An invocation's start in an instance's cgroup, in one call: reset the memory
    peak (peak_fd >= 0); the CPU counter to subtract at its end (ns): v1's is
    reset to 0 instead (0), v2's usage_usec is read; 0 without cpu_fd."""
    cdef int rc
    cdef int64_t v = 0
    if peak_fd >= 0:
        rc = ff_write_at0(peak_fd, peak_reset, len(peak_reset))
        if rc < 0:
            raise _oserror(-rc, f"write {peak_reset!r} to fd {peak_fd}")
    if cpu_fd < 0:
        return 0
    if cpu_version == 1:
        rc = ff_write_at0(cpu_fd, b"0", 1)
        if rc < 0:
            raise _oserror(-rc, f"write b'0' to fd {cpu_fd}")
        return 0
    rc = ff_read_keyed_i64(cpu_fd, b"usage_usec", &v)
    if rc < 0:
        raise _oserror(-rc, f"read usage_usec from fd {cpu_fd}")
    return v * 1000


def call_end(int peak_fd, int cpu_fd, int cpu_version, int pids_fd, int64_t cpu_base,
             bytes peak_reset=None):
    """An invocation's end, in one call: (memory peak bytes or 0 without peak_fd, CPU
    ns since `call_begin` or 0 without cpu_fd, tasks in the cgroup or 1 without
    pids_fd, the next call's base or -1).

    With `peak_reset`, and no task but the instance's in the cgroup, the next
    call begins here: the peak is reset after it is read, and the CPU counter as
    read (ns) is the next call's base, for `call_begin` not to be needed (one
    system call fewer: v1's counter is not reset). -1 when the next call must
    call `call_begin`: no `peak_reset`, leftovers, or a reset that failed (which
    `call_begin` then reports)."""
    cdef int rc
    cdef int64_t peak = 0, cpu = 0, tasks = 1, next_base = -1
    if peak_fd >= 0:
        rc = ff_read_i64(peak_fd, &peak)
        if rc < 0:
            raise _oserror(-rc, f"read integer from fd {peak_fd}")
    if cpu_fd >= 0:
        if cpu_version == 1:
            rc = ff_read_i64(cpu_fd, &cpu)
        else:
            rc = ff_read_keyed_i64(cpu_fd, b"usage_usec", &cpu)
            cpu = cpu * 1000
        if rc < 0:
            raise _oserror(-rc, f"read the CPU counter from fd {cpu_fd}")
    if pids_fd >= 0:
        rc = ff_read_i64(pids_fd, &tasks)
        if rc < 0:
            raise _oserror(-rc, f"read integer from fd {pids_fd}")
    if peak_reset is not None and tasks <= 1:
        if peak_fd < 0 or ff_write_at0(peak_fd, peak_reset, len(peak_reset)) >= 0:
            next_base = cpu
    return peak, cpu - cpu_base, tasks, next_base


def read_keyed_i64(int fd, bytes key):
    """The integer after `key` in a keyed cgroup file ('oom_kill 3')."""
    cdef int64_t v = 0
    cdef int rc = ff_read_keyed_i64(fd, key, &v)
    if rc < 0:
        raise _oserror(-rc, f"read {key.decode()} from fd {fd}")
    return v


cdef class InstanceTable:
    """Per function version (slot), LIFO stacks of idle instances (warm, spare).

    States and their legal transitions live in csrc/ff_table.c; an illegal
    transition raises ValueError.
    """
    cdef ff_table t

    def __cinit__(self):
        ff_table_init(&self.t)

    def __dealloc__(self):
        ff_table_free(&self.t)

    def new_slot(self):
        cdef int32_t s = ff_table_slot_new(&self.t)
        if s < 0:
            raise MemoryError()
        return s

    def release_slot(self, int32_t slot):
        cdef int rc = ff_table_slot_release(&self.t, slot)
        if rc == -16:  # EBUSY
            raise ValueError(f"slot {slot} still has live instances")
        if rc < 0:
            raise ValueError(f"no slot {slot}")

    def add(self, int32_t slot):
        """A new instance in state SPAWNING; returns its id."""
        cdef int32_t i = ff_table_add(&self.t, slot)
        if i == -12:
            raise MemoryError()
        if i < 0:
            raise ValueError(f"no slot {slot}")
        return i

    def set_state(self, int32_t id, int state, int kind=FF_WARM, double now=0.0):
        cdef int old = ff_table_state(&self.t, id)
        cdef int rc = ff_table_set_state(&self.t, id, state, kind, now)
        if rc < 0:
            old_name = STATE_NAMES[old] if 0 <= old < FF_NSTATES else "?"
            new_name = STATE_NAMES[state] if 0 <= state < FF_NSTATES else str(state)
            raise ValueError(f"instance {id}: illegal transition {old_name} -> {new_name}")

    def release(self, int32_t id, double now, int kind=FF_WARM):
        """BUSY (or SPAWNING) -> IDLE on the kind's stack."""
        self.set_state(id, FF_IDLE, kind, now)

    def acquire(self, int32_t slot):
        """Pop the most recently idle instance, warm before spare: (id, kind) or None."""
        cdef int kind = 0
        cdef int32_t i = ff_table_acquire(&self.t, slot, &kind)
        if i == -1:
            return None
        if i < 0:
            raise ValueError(f"no slot {slot}")
        return (i, kind)

    def pop_expired(self, int32_t slot, int kind, double cutoff):
        """The least recently idle instance of `kind` idle since before `cutoff`, now DRAINING."""
        cdef int32_t i = ff_table_pop_expired(&self.t, slot, kind, cutoff)
        if i == -1:
            return None
        if i < 0:
            raise ValueError(f"no slot {slot}")
        return i

    def state(self, int32_t id):
        return ff_table_state(&self.t, id)

    def count(self, int32_t slot, int state):
        cdef int c = ff_table_count(&self.t, slot, state)
        if c < 0:
            raise ValueError(f"no slot {slot}")
        return c

    def idle(self, int32_t slot, int kind):
        cdef int c = ff_table_idle(&self.t, slot, kind)
        if c < 0:
            raise ValueError(f"no slot {slot}")
        return c

    @staticmethod
    def transition_ok(int frm, int to):
        return bool(ff_table_transition_ok(frm, to))
