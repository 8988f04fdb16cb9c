"""A trio instrument that reports task steps that hold the event loop too long.

`FASTFAAS_LOG_STALLS_MS=N fastfaas serve ...`: every task step longer than N ms
is printed on stderr with its task's name, its length and the CPU it took, and
so is every garbage collection longer than N/2 ms (a diagnostic for tail
latency: while one step runs, no other request moves).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import Any

import trio


class StallLog(trio.abc.Instrument):
    def __init__(self, threshold_ms: float) -> None:
        self.threshold_s = threshold_ms / 1000
        self._began = 0.0
        self._cpu = 0.0
        self.stalls = 0

    def before_task_step(self, task: Any) -> None:
        self._began = time.perf_counter()
        self._cpu = time.thread_time()

    def after_task_step(self, task: Any) -> None:
        took = time.perf_counter() - self._began
        if took > self.threshold_s:
            self.stalls += 1
            cpu = time.thread_time() - self._cpu
            # CPU far below the wall time: the process was not running (preempted, or
            # blocked in a system call).
            print(f"fastfaas: stall: {took * 1000:.1f} ms ({cpu * 1000:.1f} ms CPU) at"
                  f" {time.monotonic():.3f} in task {task.name}", file=sys.stderr, flush=True)


class _GcLog:
    """Garbage collections longer than the threshold, with their generation."""

    def __init__(self, threshold_ms: float) -> None:
        self.threshold_s = threshold_ms / 1000
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        if took > self.threshold_s:
            print(f"fastfaas: stall: {took * 1000:.1f} ms in a garbage collection of"
                  f" generation {info['generation']} ({info['collected']} collected) at"
                  f" {time.monotonic():.3f}", file=sys.stderr, flush=True)


def from_environment() -> list[trio.abc.Instrument]:
    value = os.environ.get("FASTFAAS_LOG_STALLS_MS")
    if not value:
        return []
    gc.callbacks.append(_GcLog(float(value) / 2))
    return [StallLog(float(value))]
