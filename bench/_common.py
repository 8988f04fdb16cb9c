"""What the benchmark scripts share: logging, nearest-rank statistics, machine facts,
the processes below a server.

Imported as `_common` by scripts run as `python bench/NAME.py` (their folder is
first on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_t_start = time.perf_counter()


def cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's first line, in ticks)."""
    with contextlib.suppress(OSError):
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return []


def steal_share(before: list[int], after: list[int]) -> float | None:
    """The share of the CPU time between two `cpu_times()` that the hypervisor took
    for other guests (steal): on a shared host, the noise a run ran under."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])  # (guest time is inside user already)
    return round((after[7] - before[7]) / total, 4) if total > 0 else None


_cpu_start = cpu_times()


def busy_share(before: list[int], after: list[int]) -> float | None:
    """The share of the machine's CPU time between two `cpu_times()` spent on anything
    but idle and I/O wait, all CPUs together: how close to saturation a run was."""
    if len(before) < 8 or len(after) < 8:
        return None
    total = sum(after[:8]) - sum(before[:8])
    waiting = (after[3] - before[3]) + (after[4] - before[4])  # idle, iowait
    return round(1 - waiting / total, 3) if total > 0 else None


def steal_during_run() -> float | None:
    """steal_share since this module was imported (the benchmark's start)."""
    return steal_share(_cpu_start, cpu_times())


class BenchError(Exception):
    pass


def elapsed_s() -> float:
    """Seconds since the benchmark started (this module's import)."""
    return round(time.perf_counter() - _t_start, 1)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def nearest_rank(sorted_values: list[int], p: float) -> int:
    """The p-th percentile by nearest rank: the smallest value with >= p% at or below it."""
    k = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[k - 1]


def ms(ns: float) -> float:
    return round(ns / 1e6, 4)


def summary(samples_ns: list[int]) -> dict[str, Any]:
    """Count, p50/p90/p99/p99.9, min, max and mean of nanosecond samples, in ms."""
    if not samples_ns:
        raise BenchError("no samples")
    s = sorted(samples_ns)
    return {
        "n": len(s),
        "p50_ms": ms(nearest_rank(s, 50)),
        "p90_ms": ms(nearest_rank(s, 90)),
        "p99_ms": ms(nearest_rank(s, 99)),
        "p999_ms": ms(nearest_rank(s, 99.9)),
        "max_ms": ms(s[-1]),
        "min_ms": ms(s[0]),
        "mean_ms": ms(sum(s) / len(s)),
    }


def git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    return None


def machine_info() -> dict[str, Any]:
    """The machine and the code a run measured (scripts add their own facts)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    status = git("status", "--porcelain", "--", "fastfaas", "csrc")
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "fastfaas_commit": git("rev-parse", "HEAD"),
        "fastfaas_uncommitted_changes": bool(status) if status is not None else None,
    }


def quick_out_args(doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The options every start-latency benchmark takes: --quick and --out."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples: a smoke run")
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    return parser.parse_args(argv)


def run_in_tempdir(script: str, run: Any, *args: Any) -> Any:
    """trio.run(run, *args, a fresh temporary directory), removed after; None (said on
    stderr) when the run raises BenchError."""
    import tempfile

    import trio

    with tempfile.TemporaryDirectory(prefix="fastfaas-bench-") as tmp:
        try:
            return trio.run(run, *args, Path(tmp))
        except BenchError as exc:
            print(f"{script}: {exc}", file=sys.stderr)
            return None


def emit(report: dict[str, Any], out: Path | None, indent: int | None = None) -> int:
    """Print the JSON report (compact unless `indent`) and write it to `out` too."""
    if isinstance(report.get("machine"), dict):
        report["machine"]["steal_share_during_run"] = steal_during_run()
    text = json.dumps(report, indent=indent, separators=None if indent else (",", ":"))
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    return 0


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def descendants(root: int) -> dict[int, str]:
    """{pid: start time} of every live descendant of `root`."""
    children: dict[int, list[int]] = defaultdict(list)
    starts: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := proc_stat(int(entry.name))) and fields[0] != "Z":
            children[int(fields[1])].append(int(entry.name))
            starts[int(entry.name)] = fields[19]  # starttime: tells a reused pid apart
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = starts[child]
            todo.append(child)
    return out
