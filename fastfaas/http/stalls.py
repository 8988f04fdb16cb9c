"""A trio instrument that reports task steps that hold the event loop too long.

`FASTFAAS_LOG_STALLS_MS=N fastfaas serve ...`: every task step longer than N ms
is printed on stderr with its task's name, its length and the CPU it took; a
watcher thread prints where the loop's thread is while such a step runs (its
innermost frames: Python code, or the system call it waits in); and every
garbage collection longer than N/2 ms is printed too. A diagnostic for tail
latency (while one step runs, no other request moves); the watcher costs a
thread waking every N/4 ms, so it is off by default.
`FASTFAAS_LOG_STALLS_WATCH=0` leaves the watcher out: a thread that takes the
interpreter's lock every N/4 ms itself delays the loop's steps (the Zipf
benchmark's p99 rose from ~30 to ~40 ms with it on).
"""

from __future__ import annotations

import collections
import gc
import os
import sys
import threading
import time
from typing import Any

import trio


class StallLog(trio.abc.Instrument):
    def __init__(self, threshold_ms: float, *, watch: bool = True) -> None:
        self.threshold_s = threshold_ms / 1000
        self._began = 0.0
        self._cpu = 0.0
        self._step = 0  # odd while a step runs
        self.stalls = 0
        self.caught: list[str] = []  # the last places steps were caught in the act
        self._loop_thread = threading.get_ident()
        # A watcher thread catches a step in the act: where the loop's thread is while
        # the step is past the threshold (Python code, or a system call it waits in).
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="fastfaas-stall-watch",
                                         daemon=True)
        if watch:
            self._watcher.start()

    def after_run(self) -> None:
        self._stop.set()
        if self._watcher.is_alive():
            self._watcher.join()

    def before_task_step(self, task: Any) -> None:
        self._began = time.perf_counter()
        self._cpu = time.thread_time()
        self._step += 1

    def after_task_step(self, task: Any) -> None:
        self._step += 1
        took = time.perf_counter() - self._began
        if took > self.threshold_s:
            self.stalls += 1
            cpu = time.thread_time() - self._cpu
            # CPU far below the wall time: the process was not running (preempted, or
            # blocked in a system call).
            print(f"fastfaas: stall: {took * 1000:.1f} ms ({cpu * 1000:.1f} ms CPU) at"
                  f" {time.monotonic():.3f} in task {task.name}", file=sys.stderr, flush=True)

    def _watch(self) -> None:
        reported = 0
        while not self._stop.wait(self.threshold_s / 4):
            step = self._step
            if step % 2 == 0 or step == reported:
                continue
            if time.perf_counter() - self._began < self.threshold_s:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            if frame is None or self._step != step:
                continue
            reported = step
            where = " < ".join(f"{f.f_code.co_name} ({os.path.basename(f.f_code.co_filename)}"
                               f":{f.f_lineno})" for f in _frames(frame, 6))
            self.caught.append(where)
            del self.caught[:-100]
            print(f"fastfaas: stall: in the act at {time.monotonic():.3f}: {where}",
                  file=sys.stderr, flush=True)


def _frames(frame: Any, n: int) -> list[Any]:
    out: list[Any] = []
    while frame is not None and len(out) < n:
        out.append(frame)
        frame = frame.f_back
    return out


class _GcLog:
    """Garbage collections longer than the threshold, with their generation."""

    def __init__(self, threshold_ms: float) -> None:
        self.threshold_s = threshold_ms / 1000
        self._began = 0.0
        self._described = False

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        if took > self.threshold_s:
            print(f"fastfaas: stall: {took * 1000:.1f} ms in a garbage collection of"
                  f" generation {info['generation']} ({info['collected']} collected) at"
                  f" {time.monotonic():.3f}", file=sys.stderr, flush=True)
            if info["generation"] == 2 and not self._described:
                self._described = True  # once: what the collector walks, by type
                objects = gc.get_objects()
                kinds = collections.Counter(type(o).__qualname__ for o in objects)
                print(f"fastfaas: stall: {len(objects)} objects tracked; most:"
                      f" {kinds.most_common(12)}", file=sys.stderr, flush=True)


def from_environment() -> list[trio.abc.Instrument]:
    value = os.environ.get("FASTFAAS_LOG_STALLS_MS")
    if not value:
        return []
    if not float(value) > 0:
        raise ValueError(f"FASTFAAS_LOG_STALLS_MS={value!r}: a threshold in ms, above 0")
    watch = os.environ.get("FASTFAAS_LOG_STALLS_WATCH", "1")
    if watch not in ("0", "1"):
        raise ValueError(f"FASTFAAS_LOG_STALLS_WATCH={watch!r}: 0 or 1")
    gc.callbacks.append(_GcLog(float(value) / 2))
    return [StallLog(float(value), watch=watch == "1")]
