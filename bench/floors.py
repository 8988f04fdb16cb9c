"""What this machine charges for the parts of a start, with no fastfaas code in the way.

The start-latency targets (`starts.py`) assume a machine's costs; this measures
them, so that a missed target can be told apart from slow code:

- `cow_fault_us`: a forked child writes one byte to each of 400 private
  anonymous pages its parent populated (each write a copy-on-write fault),
  per page, minus the same writes once the pages are its own. CPython writes
  a reference count into every object it touches, so each page of objects
  that an instance's first call touches costs one of these.
- `first_read_us`: the same child reads 2,000 other such pages (no fault the
  guest kernel sees), per page, minus a second read: what a page's first use
  in a new address space costs on top of nothing.
- `fork_to_result_ms`: a process with the worker's imports (msgspec and the
  rest of `fastfaas.worker`, its heap frozen as a zygote's is) forks a child
  that decodes a 70-byte JSON event, calls a one-line handler, encodes its
  result and writes it to a pipe; the parent's time from `fork()` to the
  result, and the child's page faults. A `forked` start is this plus the
  server's side and two process wake-ups.
- `round_trip_after_pause_ms`: a 100-byte `SOCK_SEQPACKET` round trip to a
  blocking child after 5 ms of quiet, with the child on the parent's CPU, on
  the other one, and where the scheduler puts it (interleaved). A `prewarmed`
  start is at least this: its spare has been idle since its warm-up.

    .venv/bin/python bench/floors.py [--quick] [--out bench/results/floors-DATE.json]
"""

from __future__ import annotations

import gc
import mmap
import os
import resource
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import msgspec
from _common import emit, log, machine_info, quick_out_args, summary

import fastfaas.worker.instance
import fastfaas.worker.zygote  # noqa: F401  (the zygote's imports, for its size)

PAGE = mmap.PAGESIZE
PAUSE_S = 0.005


def _child_result(fn: Any) -> Any:
    """Run fn() in a forked child; its msgspec-encodable result, read from a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(lambda: os.write(w, msgspec.msgpack.encode(fn())))
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return msgspec.msgpack.decode(b"".join(chunks))


def _child(body: Any) -> None:
    """A forked child's whole life: body(), then exit; never back into the parent's code."""
    try:
        body()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def page_costs(runs: int) -> dict[str, Any]:
    writes, reads = 400, 2000
    buf = mmap.mmap(-1, (writes + reads) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    view = memoryview(buf)
    for off in range(0, len(buf), PAGE):
        view[off] = 1

    def in_child() -> list[float]:
        w_end = writes * PAGE
        t0 = time.perf_counter_ns()
        for off in range(0, w_end, PAGE):
            view[off] = 2
        t1 = time.perf_counter_ns()
        for off in range(0, w_end, PAGE):
            view[off] = 3
        t2 = time.perf_counter_ns()
        total = 0
        for off in range(w_end, len(buf), PAGE):
            total += view[off]
        t3 = time.perf_counter_ns()
        for off in range(w_end, len(buf), PAGE):
            total += view[off]
        t4 = time.perf_counter_ns()
        return [((t1 - t0) - (t2 - t1)) / writes / 1e3, ((t3 - t2) - (t4 - t3)) / reads / 1e3]

    got = [_child_result(in_child) for _ in range(runs)]
    view.release()
    buf.close()
    return {"cow_fault_us": _us_summary([g[0] for g in got]),
            "first_read_us": _us_summary([g[1] for g in got]),
            "pages": {"written": writes, "read": reads}, "runs": runs}


def _us_summary(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"p50": round(s[len(s) // 2], 3), "min": round(s[0], 3), "max": round(s[-1], 3)}


def fork_to_result(n: int) -> dict[str, Any]:
    decode, encode = msgspec.json.decode, msgspec.json.encode
    event = encode({"id": 1, "body": "x" * 64})

    def handler(e: Any) -> Any:
        return {"echo": e}

    gc.collect()
    gc.freeze()
    samples, faults = [], []
    for _ in range(n):
        r, w = os.pipe()
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            def answer(w: int = w) -> None:
                out = encode(handler(decode(event)))
                os.write(w, encode([len(out), resource.getrusage(resource.RUSAGE_SELF).ru_minflt]))
            _child(answer)
        os.close(w)
        got = os.read(r, 256)
        samples.append(time.perf_counter_ns() - t0)
        os.close(r)
        os.waitpid(pid, 0)
        faults.append(decode(got)[1])
    gc.unfreeze()
    status = Path("/proc/self/status").read_text().splitlines()
    rss_kb = int(next(line.split()[1] for line in status if line.startswith("VmRSS:")))
    return {**summary(samples), "child_minor_faults_p50": sorted(faults)[len(faults) // 2],
            "parent_rss_kb": rss_kb}


def round_trips(n: int) -> dict[str, Any]:
    """Interleaved: child pinned to this process's CPU, to another, unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {"skipped": "needs two CPUs"}
    here, there = cpus[0], cpus[1]
    placements = {"same_cpu": {here}, "other_cpu": {there}, "unpinned": set(cpus)}
    os.sched_setaffinity(0, {here})
    children = {}
    try:
        for name, mask in placements.items():
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:
                def echo(a: socket.socket = a, b: socket.socket = b,
                         mask: set[int] = mask) -> None:
                    a.close()
                    for _, other in children.values():  # or its child never sees EOF
                        other.close()
                    os.sched_setaffinity(0, mask)
                    while msg := b.recv(256):
                        b.send(msg)
                _child(echo)
            b.close()
            children[name] = (pid, a)
        msg = b"x" * 100
        samples: dict[str, list[int]] = {name: [] for name in placements}
        for _ in range(n):
            for name, (_, sock) in children.items():
                time.sleep(PAUSE_S)
                t0 = time.perf_counter_ns()
                sock.send(msg)
                sock.recv(256)
                samples[name].append(time.perf_counter_ns() - t0)
    finally:
        for pid, sock in children.values():
            sock.close()
            os.waitpid(pid, 0)
        os.sched_setaffinity(0, set(cpus))
    return {name: summary(s) for name, s in samples.items()} | {"pause_s": PAUSE_S}


def main(argv: list[str] | None = None) -> int:
    args = quick_out_args(__doc__, argv)
    runs, forks, trips = (5, 50, 50) if args.quick else (30, 1000, 500)
    report: dict[str, Any] = {"benchmark": "bench/floors.py", "quick": args.quick,
                              "machine": machine_info()}
    report["page_costs"] = page_costs(runs)
    log(f"page costs: {report['page_costs']}")
    report["fork_to_result_ms"] = fork_to_result(forks)
    log(f"fork to result: {report['fork_to_result_ms']}")
    report["round_trip_after_pause_ms"] = round_trips(trips)
    log(f"round trips after a pause: {report['round_trip_after_pause_ms']}")
    return emit(report, args.out, indent=1)


if __name__ == "__main__":
    sys.exit(main())
