#!/usr/bin/env python3
"""auto_size on a mixed population: memory reserved before and after, and what fits.

    .venv/bin/python bench/autosize.py [--quick] [--out PATH]

50 functions (seeded), each allocating and touching a known amount of memory
(8 to 200 MB) and then waiting on I/O (a sleep), are deployed with `auto_size`
at a size 4 to 16 times what they need (the need: the allocation plus the
instance's own pages, with 30% headroom, in 64 MB steps). Every function is
invoked `auto_size_after` (50) times, one call at a time per function, all
functions at once, in one Runtime with real cgroups (standard isolation: the
figures are about sizes). Then each function runs `check` (50) more calls at
its new size, next to its own calls before the change: no call may fail, the
duration p50 per function after / before (the second half of each phase)
says whether the new size slowed it,
and as many calls as `auto_size_after` let auto_size look again: a second
change would be a size that does not hold.

Reports: memory reserved (the sum of the configured sizes, one instance per
function) before and after; the instances of the population's mix that fit in
the "before" budget afterwards; per function the allocation, the size
configured, applied and the one it needs; the changes made; failures; the
duration ratio. Needs root (writable cgroups).
"""

from __future__ import annotations

import datetime
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common
import trio
from _common import log

from fastfaas.runtime.runtime import Runtime

SEED = 20261126
HANDLER = '''
import os, time
MB = int(os.environ["ALLOC_MB"])
WAIT = float(os.environ["WAIT_S"])
def handler(event, context):
    block = bytearray(MB * 1024 * 1024)  # zeroed: every page touched
    time.sleep(WAIT)  # a downstream call
    return len(block)
'''
ALLOCS_MB = (8, 24, 48, 80, 120, 200)
INSTANCE_BASE_MB = 12  # what a forked instance's own pages add (measured: 10-12 MB)
FULL = {"functions": 50, "auto_size_after": 50, "check": 50, "wait_s": 1.0}
QUICK = {"functions": 8, "auto_size_after": 5, "check": 5, "wait_s": 0.3}


def need_mb(alloc_mb: int) -> int:
    return max(128, math.ceil((alloc_mb + INSTANCE_BASE_MB) * 1.3 / 64) * 64)


def population(n: int) -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    out = []
    for i in range(n):
        alloc = rng.choice(ALLOCS_MB)
        factor = rng.uniform(4, 16)
        configured = min(10240, math.ceil(need_mb(alloc) * factor / 64) * 64)
        out.append({"name": f"pop{i:02d}", "alloc_mb": alloc, "need_mb": need_mb(alloc),
                    "factor": round(factor, 2), "configured_mb": configured})
    return out


async def run(counts: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    pop = population(counts["functions"])
    code = data_dir / "code"
    code.mkdir()
    (code / "app.py").write_text(HANDLER)
    durations: dict[str, dict[str, list[float]]] = {f["name"]: {"before": [], "after": []}
                                                    for f in pop}
    failures: list[str] = []
    async with Runtime(data_dir / "rt", cgroups="require", isolation="standard",
                       auto_size_after=counts["auto_size_after"], warm_pool_size=4,
                       spares=0) as rt:
        for f in pop:
            await rt.deploy(f["name"], code, "app.handler", memory_mb=f["configured_mb"],
                            timeout_s=30, auto_size=True,
                            env={"ALLOC_MB": str(f["alloc_mb"]),
                                 "WAIT_S": str(counts["wait_s"])})
        log(f"deployed {len(pop)} functions; {counts['auto_size_after']} calls each")

        async def calls(name: str, n: int, phase: str) -> None:
            for _ in range(n):
                result = await rt.invoke(name, {})
                if not result.ok:
                    failures.append(f"{name} {phase}: {result.payload[:200]!r}")
                durations[name][phase].append(result.duration_us / 1000)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for f in pop:
                nursery.start_soon(calls, f["name"], counts["auto_size_after"], "before")
        converged_s = time.perf_counter() - t0
        log(f"sizing round done in {converged_s:.1f}s; checking the new sizes")
        async with trio.open_nursery() as nursery:
            for f in pop:
                nursery.start_soon(calls, f["name"], counts["check"], "after")
        for f in pop:
            f["applied_mb"] = rt.config(f["name"]).memory_mb
            f["changes"] = len(rt.size_changes(f["name"]))
            rec = rt.sizing_for(f["name"])
            f["peak_p99_mb"] = rec.evidence.get("peak_p99_mb", 0.0)
            f["cpu_floor_mb"] = rec.evidence.get("cpu_floor_mb", 0.0)
            # The second half of each phase: the first calls of the first phase include
            # 50 functions claiming zygotes at once (a busier machine than later).
            before, after = (durations[f["name"]][phase][len(durations[f["name"]][phase]) // 2:]
                             for phase in ("before", "after"))
            f["duration_p50_ms"] = {"before": round(statistics.median(before), 2),
                                    "after": round(statistics.median(after), 2)}
    return {"functions": pop, "failures": failures, "converged_s": round(converged_s, 1)}


def main(argv: list[str] | None = None) -> int:
    args = _common.quick_out_args(__doc__, argv)
    counts = QUICK if args.quick else FULL
    began = datetime.datetime.now(datetime.UTC)
    got = _common.run_in_tempdir("bench/autosize.py", run, counts)
    if got is None:
        return 1
    pop = got["functions"]
    before = sum(f["configured_mb"] for f in pop)
    after = sum(f["applied_mb"] for f in pop)
    needed = sum(f["need_mb"] for f in pop)
    ratios = sorted(f["duration_p50_ms"]["after"] / f["duration_p50_ms"]["before"]
                    for f in pop)
    floored = sorted(f["duration_p50_ms"]["after"] / f["duration_p50_ms"]["before"]
                     for f in pop if f["applied_mb"] > f["need_mb"])
    report = {
        "benchmark": "bench/autosize.py",
        "date_utc": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _common.machine_info(),
        "config": {**counts, "seed": SEED, "allocations_mb": ALLOCS_MB,
                   "oversize_factor": [4, 16], "isolation": "standard"},
        "reserved_mb": {"before": before, "after": after, "needed_estimate": needed,
                        "after_over_before": round(after / before, 4)},
        # The "before" budget holds one instance of each function; afterwards, as many
        # instances of the population's mix (its mean applied size) as fit in it.
        "instances_in_the_same_budget": {"before": len(pop),
                                         "after": int(before / (after / len(pop)))},
        "functions_changed": sum(1 for f in pop if f["changes"]),
        "changes": sum(f["changes"] for f in pop),
        "changed_again": [f["name"] for f in pop if f["changes"] > 1],
        "applied_below_need": [f["name"] for f in pop
                               if f["applied_mb"] < f["peak_p99_mb"] * 1.3],
        "failures": got["failures"],
        "duration_p50_after_over_before": {
            "median": round(statistics.median(ratios), 3), "max": round(ratios[-1], 3),
            # those whose size the CPU rule set above their memory's need
            "cpu_floored": {"count": len(floored),
                            "median": round(statistics.median(floored), 3) if floored else None,
                            "over_1.1": sum(1 for r in floored if r > 1.1)}},
        "converged_s": got["converged_s"],
        "functions": pop,
        "elapsed_s": _common.elapsed_s(),
    }
    return _common.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
