# cython: language_level=3
"""fastfaas._lane: the warm invocation over HTTP, compiled.

`WarmLane.take` and `WarmLane.start` are the HTTP server's fast path
(`HttpServer(take=..., fast=...)`) for `POST /v1/functions/{name}/invoke`:
they take an idle warm instance, encode the Invoke and send it;
`LaneCall.step` receives the Result and answers with the response's bytes,
the instance idle again. It does what `Runtime.invoke_nowait` (with
`_hand_over`), `FastCall.step` (with `_finish_now` and `_answered`) and
`NativeApi._invoke_response` do for such a call, with the frames, objects
and lookups between them gone: the server's CPU per warm call was mostly
the interpreter running those layers.

Only the plain success is finished here. Anything else leaves the lane for
the Python path, at the point it is met, with nothing done twice: a spare
instance, a send that cannot go at once, a reply with descriptors or none, a
timeout, an error result, leftover processes, a retired function or a
one-off instance: `Runtime.FastCall` and the native API's `_FastInvoke` take
the call over from there. The policy objects (concurrency limits,
frequency, deadlines, the instance table, logs, metrics) are the runtime's
own, called as on the Python path (`Runtime._take_idle` for the admission,
`Runtime._warm_success` at the end).
"""

from libc.errno cimport errno
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef extern from "ff_lane.h":
    ssize_t ff_lane_recv(int fd, char *buf, size_t cap, int *fds, int *nfds, int *flags)
    ssize_t ff_lane_send(int fd, const char *buf, size_t length)
    int FF_LANE_MAX_FDS

cdef extern from "time.h":
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef extern from "sys/socket.h":
    int MSG_TRUNC, MSG_CTRUNC
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    int MSG_DONTWAIT

cdef extern from "stdio.h":
    int snprintf(char *s, size_t n, const char *fmt, ...)

cdef extern from "errno.h":
    int EAGAIN


cdef enum:
    _BUCKETS_MAX = 64  # the most histogram buckets WarmLane.observe takes


cdef inline int64_t _mono_ns() noexcept:
    """time.monotonic_ns() and time.perf_counter_ns() on Linux: CLOCK_MONOTONIC."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void _put_be64(char *p, double x) noexcept:
    cdef uint8_t raw[8]
    cdef int i
    memcpy(raw, &x, 8)
    for i in range(8):  # little-endian host (x86-64, aarch64 Linux): msgpack is big-endian
        p[i] = <char>raw[7 - i]


cdef inline Py_ssize_t _head_size(Py_ssize_t n, bint fix) noexcept:
    """The size of a msgpack str (`fix`: with its one-byte form) or bin header."""
    if fix and n < 32:
        return 1
    if n < 256:
        return 2
    if n < 65536:
        return 3
    return 5


cdef inline char *_put_head(char *p, Py_ssize_t size, Py_ssize_t n, int fix, int t8,
                            int t16, int t32) noexcept:
    """Write a header of `size` (_head_size) for length `n`: the one-byte form
    `fix | n`, or the tag t8, t16 or t32 and the length, big-endian."""
    if size == 1:
        p[0] = <char>(fix | n)
    elif size == 2:
        p[0] = <char>t8
        p[1] = <char>n
    elif size == 3:
        p[0] = <char>t16
        p[1] = <char>(n >> 8)
        p[2] = <char>n
    else:
        p[0] = <char>t32
        p[1] = <char>(n >> 24)
        p[2] = <char>(n >> 16)
        p[3] = <char>(n >> 8)
        p[4] = <char>n
    return p + size


cpdef bytes encode_invoke(str request_id, bytes payload, double deadline):
    """wire.Invoke(request_id, payload, deadline) as wire.encoder encodes it: a
    msgpack array [tag, str, bin, float64], built in one allocation."""
    if request_id is None or payload is None:
        raise TypeError("encode_invoke: request_id and payload must not be None")
    cdef bytes rid = request_id.encode("utf-8")
    cdef Py_ssize_t nr = PyBytes_GET_SIZE(rid), np = PyBytes_GET_SIZE(payload)
    cdef Py_ssize_t rh = _head_size(nr, True), ph = _head_size(np, False)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 1 + 7 + rh + nr + ph + np + 9)
    cdef char *p = PyBytes_AS_STRING(out)
    p[0] = <char>0x94
    memcpy(p + 1, b"\xa6Invoke", 7)
    p = _put_head(p + 8, rh, nr, 0xa0, 0xd9, 0xda, 0xdb)
    memcpy(p, PyBytes_AS_STRING(rid), nr)
    p = _put_head(p + nr, ph, np, 0, 0xc4, 0xc5, 0xc6)
    memcpy(p, PyBytes_AS_STRING(payload), np)
    p += np
    p[0] = <char>0xcb
    _put_be64(p + 1, deadline)
    return out


cpdef bytes ok_response(bytes request_id, bytes instance_id, int64_t duration_us,
                        int64_t server_us, bytes body):
    """NativeApi._invoke_response's headers for a warm call's success, encoded as
    encode_response encodes them for a keep-alive connection."""
    if request_id is None or instance_id is None or body is None:
        raise TypeError("ok_response: request_id, instance_id and body must not be None")
    cdef char nums[96]
    cdef int nd = snprintf(nums, 32, "%lld", <long long>duration_us)
    cdef int ns = snprintf(nums + 32, 32, "%lld", <long long>server_us)
    cdef int nl = snprintf(nums + 64, 32, "%zd", PyBytes_GET_SIZE(body))
    cdef Py_ssize_t nr = PyBytes_GET_SIZE(request_id), ni = PyBytes_GET_SIZE(instance_id)
    cdef Py_ssize_t nb = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t size = (len(_HEAD) + len(_RID) + nr + len(_START) + len(_DUR) + nd
                            + len(_SRV) + ns + len(_INST) + ni + len(_TAIL) + nl + 4 + nb)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char *p = PyBytes_AS_STRING(out)
    p = _put(p, _HEAD, len(_HEAD))
    p = _put(p, _RID, len(_RID))
    p = _put(p, PyBytes_AS_STRING(request_id), nr)
    p = _put(p, _START, len(_START))
    p = _put(p, _DUR, len(_DUR))
    p = _put(p, nums, nd)
    p = _put(p, _SRV, len(_SRV))
    p = _put(p, nums + 32, ns)
    p = _put(p, _INST, len(_INST))
    p = _put(p, PyBytes_AS_STRING(instance_id), ni)
    p = _put(p, _TAIL, len(_TAIL))
    p = _put(p, nums + 64, nl)
    p = _put(p, b"\r\n\r\n", 4)
    _put(p, PyBytes_AS_STRING(body), nb)
    return out


cdef inline char *_put(char *p, const char *src, Py_ssize_t n) noexcept:
    memcpy(p, src, n)
    return p + n


cdef const char *_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
cdef const char *_RID = b"x-fastfaas-request-id: "
cdef const char *_START = b"\r\nx-fastfaas-start: warm\r\n"
cdef const char *_DUR = b"x-fastfaas-duration-us: "
cdef const char *_SRV = b"\r\nx-fastfaas-server-us: "
cdef const char *_INST = b"\r\nx-fastfaas-instance: "
cdef const char *_TAIL = b"\r\nx-fastfaas-route: direct\r\ncontent-length: "


cdef class WarmLane:
    """The fast path of one NativeApi (see the module's docstring).

    Args:
        api: the NativeApi: its runtime, metrics, token and `_bug`.
        fast_invoke: the native API's `_FastInvoke` class (the Python path's
            Pending), for calls that leave the lane.
        decode_result: `wire.instance_out.decode`.
        compare: `hmac.compare_digest`.
        stats: `trio.lowlevel.current_statistics`.
        parse: `_native.parse_request`, and its limits `max_headers` and
            `fast_body_max` (the HTTP protocol's).
        metrics_buckets: the latency histograms' bounds (`metrics.BUCKETS`).
        receive_bytes: the most a connection's read takes (the HTTP server's).
        max_payload, inline_max: wire's limits.
    """

    cdef object api, rt, limits, metrics, fast_invoke, decode_result
    cdef object compare, stats, expected_auth, counters, parse, deadlines
    cdef double bounds[_BUCKETS_MAX]
    cdef Py_ssize_t nbounds
    cdef Py_ssize_t max_payload, inline_max, max_body, max_headers, fast_body_max
    cdef char *buf
    cdef Py_ssize_t cap
    cdef char *inbuf
    cdef Py_ssize_t incap

    def __cinit__(self):
        self.buf = NULL
        self.inbuf = NULL

    def __init__(self, api, *, fast_invoke, decode_result, compare,
                 stats, parse, metrics_buckets, Py_ssize_t max_payload, Py_ssize_t inline_max,
                 Py_ssize_t receive_bytes,
                 Py_ssize_t max_headers, Py_ssize_t fast_body_max):
        self.api = api
        self.rt = api.runtime
        self.limits = self.rt.limits
        self.metrics = api.metrics
        self.counters = self.rt.counters
        self.deadlines = self.rt._deadlines
        buckets = metrics_buckets
        if len(buckets) > _BUCKETS_MAX:
            raise ValueError(f"WarmLane takes at most {_BUCKETS_MAX} histogram buckets")
        self.nbounds = len(buckets)
        for i, bound in enumerate(buckets):
            self.bounds[i] = bound
        self.expected_auth = api._expected_auth
        self.fast_invoke = fast_invoke
        self.decode_result = decode_result
        self.compare = compare
        self.stats = stats
        self.max_payload = max_payload
        self.inline_max = inline_max
        self.parse = parse
        self.max_body = api.max_body  # NativeApi.body_limit of POST /v1/functions/...
        self.max_headers = max_headers
        self.fast_body_max = fast_body_max
        self.incap = receive_bytes
        self.inbuf = <char *>PyMem_Malloc(self.incap)
        if self.inbuf == NULL:
            raise MemoryError()
        self.cap = inline_max + 1  # as the channel's own buffer: a longer datagram is truncated
        self.buf = <char *>PyMem_Malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self.buf)
        PyMem_Free(self.inbuf)

    def start(self, req):
        """A Request's answer without a task: None (the App answers it), a Response
        (a bug of ours: 500), or the Pending call in flight."""
        name = self._route(req.method, req.path, req.headers)
        if name is None:
            return None
        cdef int64_t t0 = _mono_ns()
        try:
            return self._start(name, req.body or b"{}", t0)
        except Exception as exc:  # a bug of ours (or a cgroup file that failed): a 500
            return self.api._bug(exc)

    def take(self, int fd, Py_ssize_t max_head):
        """Read a connection as `socket.recv(RECEIVE_BYTES)` does, and when what came
        is one whole request in the common form (`_native.parse_request`) that
        `start` takes, start it: the Pending call (or the 500 Response of a bug of
        ours). Otherwise the bytes, for the connection's parser (b"" at EOF).

        Raises BlockingIOError when nothing is there, OSError as recv."""
        cdef ssize_t n = recv(fd, self.inbuf, self.incap, MSG_DONTWAIT)
        if n < 0:
            raise OSError(errno, "recv")  # BlockingIOError for EAGAIN
        data = PyBytes_FromStringAndSize(self.inbuf, n)
        if n == 0 or n == self.incap:  # the end, or more than one read's worth
            return data
        got = self.parse(data, 0, max_head, self.max_headers, self.fast_body_max)
        if got is None or got[4] != n:  # not whole, not common, or more than one
            return data
        method, target, headers, body, _ = got
        if PyBytes_GET_SIZE(body) > self.max_body or b"%" in target or b"?" in target:
            return data  # the parser's 413, or a path to unquote: the usual way
        name = self._route(method, target.decode("latin-1"), headers)
        if name is None:
            return data
        cdef int64_t t0 = _mono_ns()
        try:
            call = self._start(name, body or b"{}", t0)
        except Exception as exc:
            return self.api._bug(exc)
        return data if call is None else call

    cdef object _route(self, method, str path, headers):
        """The function's name for a synchronous invocation of it (RequestResponse,
        no route key, the token if one is set); None for anything else."""
        if (method != b"POST" or not path.startswith("/v1/functions/")
                or not path.endswith("/invoke")):
            return None
        if self.expected_auth is not None and not self.compare(
                headers.get(b"authorization", b""), self.expected_auth):
            return None
        if (headers.get(b"x-fastfaas-invocation-type", b"RequestResponse") != b"RequestResponse"
                or b"x-fastfaas-route-key" in headers):
            return None
        parts = path.split("/")
        if len(parts) != 5:
            return None
        return parts[3]

    cdef object _start(self, str name, object body, int64_t t0):
        """Runtime.invoke_nowait and _hand_over for a warm instance."""
        rt = self.rt
        taken = rt._take_idle(name, body)
        if taken is None:
            return None
        fv, inst, start, payload = taken
        chan = inst.chan
        try:
            # Larger than a datagram (48 bytes of framing around the id and payload),
            # or the channel busy or shut: the Python path sends it, or says why not.
            if (start != "warm" or chan.closed or len(payload) + 64 > self.inline_max
                    or chan.waiting_sends):
                return self.fast_invoke(self.api, rt._hand_over(fv, inst, start, payload),
                                        name, t0)
            now = rt._now()
            fv.freq.note_call(now, fv.in_flight)
            request_id = rt._request_ids.next()
            timeout = fv.config.timeout_s
            data = encode_invoke(request_id, payload, _mono_ns() / 1e9 + timeout)
            cg = inst.cgroup
            cpu_base = 0 if cg is None else rt.cgroups.begin(cg)
            self.counters["warm"] += 1  # rt._count_start(fv, "warm"): nothing more
            if ff_lane_send(chan.fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)) < 0:
                # Dead, or its buffer full: invoke's own path sends it (or retries).
                return self.fast_invoke(self.api, rt._hand_over_unsent(
                    fv, inst, "warm", request_id, payload, data, now + timeout, cpu_base),
                    name, t0)
            self.counters["nowait_calls"] += 1
            entry = self.deadlines.push(now + timeout, inst)  # rt._watch_deadline, in line
            if now + timeout < rt._watching_until:
                rt._deadline_lot.unpark_all()
        except BaseException:  # what invoke's finally clauses would undo
            rt._call_done(fv, False)
            self.limits.release(name)
            raise
        cdef LaneCall call = LaneCall.__new__(LaneCall)
        call.lane = self
        call.fv = fv
        call.inst = inst
        call.chan = chan
        call.fd = chan.fd
        call.owner = chan
        call.name = name
        call.request_id = request_id
        call.payload = payload
        call.cpu_base = cpu_base
        call.entry = entry
        call.t0 = t0
        # A lone call polls for a quick handler's reply; beside others, the reply is
        # not in yet: the server waits for the descriptor before the first step.
        call.waits_first = rt._running != 1
        call.spin_ns = 0 if call.waits_first else rt._poll_ns(fv, "warm")
        return call


    cdef void observe(self, name, double seconds) except *:
        """Metrics.record(name, "warm", "success", seconds), with Histogram.observe's
        bucket found in C."""
        metrics = self.metrics
        hist = metrics.latency.get(name)
        if hist is None:  # its first: the Metrics make the histogram
            metrics.record(name, "warm", "success", seconds)
            return
        metrics.invocations[name, "warm", "success"] += 1
        cdef Py_ssize_t i = 0
        while i < self.nbounds and self.bounds[i] < seconds:  # bisect_left
            i += 1
        counts = hist.counts
        counts[i] += 1
        hist.sum += seconds


cdef class LaneCall:
    """A warm call started by `WarmLane.start`: the HTTP server's Pending."""

    cdef WarmLane lane
    cdef object fv, inst, chan, name, request_id, payload, entry, cpu_base, left_to
    cdef int64_t t0, spin_ns
    cdef public int fd
    cdef public object owner
    cdef public bint waits_first

    def step(self):
        """None (no reply yet); the response: its bytes, encoded for a keep-alive
        connection (the server adds `connection: close` otherwise), or a Response;
        or an async function giving the Response."""
        if self.left_to is not None:
            return self.left_to.step()
        lane = self.lane
        cdef int fds[16]
        cdef int nfds = 0, flags = 0
        cdef ssize_t n
        cdef int64_t end
        if self.chan.closed:  # its descriptor may be another's now: as recv_nowait, none
            return self._leave(None)
        n = ff_lane_recv(self.fd, lane.buf, lane.cap, fds, &nfds, &flags)
        if n == -EAGAIN and self.spin_ns:
            # As Channel.recv_nowait's poll: while no other task is runnable.
            end = _mono_ns() + self.spin_ns
            stats = lane.stats
            while n == -EAGAIN and stats().tasks_runnable == 0 and _mono_ns() <= end:
                n = ff_lane_recv(self.fd, lane.buf, lane.cap, fds, &nfds, &flags)
        self.spin_ns = 0
        if n == -EAGAIN:
            return None
        if n < 0:  # reset, or another error: as the Python path, no reply
            return self._leave(None)
        if nfds or n <= 1 or flags & (MSG_TRUNC | MSG_CTRUNC):
            return self._leave(self._frame(n, [fds[i] for i in range(nfds)], flags))
        data = PyBytes_FromStringAndSize(lane.buf, n)
        inst, fv = self.inst, self.fv
        if inst.timed_out or fv.retired or inst.dead or inst.one_off or inst.waiters:
            return self._leave((data, []))
        try:
            result = lane.decode_result(data)
        except ValueError:
            return self._leave((data, []))
        if (not result.ok or PyBytes_GET_SIZE(result.payload) > lane.max_payload
                or result.request_id != self.request_id):
            return self._leave((data, []))
        rt = lane.rt
        cg = inst.cgroup
        if cg is not None:
            try:  # the reply came inline: the next call begins here (carry)
                peak, cpu_ns, tasks, held_ns = rt.cgroups.end(cg, self.cpu_base)
            except Exception:  # a cgroup file that failed: the Python path reads it again,
                return self._leave((data, []))  # and undoes the call's counts as it fails
            if tasks > 1:  # leftovers: the Python path kills them
                return self._leave((data, []), (peak, cpu_ns, tasks, held_ns))
        else:
            peak, cpu_ns, held_ns = result.max_rss_kb * 1024, result.cpu_ns, 0
        self.entry.finish()
        name = self.name
        try:
            rt._warm_success(fv, inst, self.request_id, result.duration_ns, peak, cpu_ns,
                             held_ns, result.log_tail)
        finally:
            lane.limits.release(name)
        duration_us = result.duration_ns // 1000
        lane.counters["lane_finished"] += 1
        # NativeApi._invoke_response
        server_ns = _mono_ns() - self.t0
        lane.observe(name, server_ns / 1e9)
        return ok_response(self.request_id.encode(), inst.instance_id.encode(), duration_us,
                            server_ns // 1000, result.payload)

    cdef object _frame(self, ssize_t n, list fds, int flags):
        """Channel._frame's odd cases: a large message, descriptors, EOF."""
        from fastfaas import wire
        if n == 0 and not fds:
            return None
        try:
            return wire.incoming(PyBytes_FromStringAndSize(self.lane.buf, n), fds, flags)
        except (OSError, wire.FrameError):
            return None

    cdef object _left(self):
        """The call on the Python path from here: a FastCall in the native API's Pending."""
        lane = self.lane
        if self.left_to is None:
            call = lane.rt._fast_call(self.fv, self.inst, "warm", self.request_id, self.payload,
                                      self.cpu_base, self.entry)
            self.left_to = lane.fast_invoke(lane.api, call, self.name, self.t0)
            lane.counters["lane_left"] += 1
        return self.left_to

    cdef object _leave(self, got, ended=None):
        return self._left().settle(got, ended)

    def abandon(self):
        """Its connection went: the call runs to its end in the runtime, as any."""
        self._left().abandon()
