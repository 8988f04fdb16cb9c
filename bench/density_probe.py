#!/usr/bin/env python3
"""Density: N idle instances of one small function, and what they cost in memory.

    .venv/bin/python bench/density_probe.py N

An embedded Runtime (so that it can read each process's PSS and each cgroup's
usage directly): one 128 MB function with prewarm=N; once every instance is
forked, placed and idle, prints one JSON line: instances, seconds to get them,
the sum of PSS (/proc/PID/smaps_rollup; shared pages split between sharers)
and the sum of the memory cgroups' usage (this also counts page tables and
kernel memory, which PSS does not), of the instances and their zygote.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import trio

import fastfaas


def pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="fastfaas-density-") as tmp:
        code = Path(tmp) / "fn"
        code.mkdir()
        (code / "app.py").write_text("def handler(event, context):\n    return 1\n")
        async with fastfaas.Runtime(data_dir=Path(tmp) / "data") as rt:
            t0 = time.perf_counter()
            await rt.deploy("small", code, "app.handler", memory_mb=128, prewarm=n)
            fv = rt._functions["small"]
            with trio.fail_after(600):
                while rt.statistics()["functions"]["small"]["instances"]["spare"] < n:
                    await rt.wait_changed()
            elapsed = time.perf_counter() - t0
            await rt.wait_memory_measured()
            instances = [i for i in fv.instances.values() if i.proc is not None]
            assert fv.zygote is not None and fv.zygote.proc is not None
            pss_total = sum(pss(i.proc.pid) for i in instances if i.proc is not None)
            pss_total += pss(fv.zygote.proc.pid)
            cgroup_total = 0
            if rt.cgroups.enabled:
                cgroup_total = sum(rt.cgroups.memory_usage(i.cgroup) for i in instances
                                   if i.cgroup is not None)
                if fv.zygote.cgroup is not None:
                    cgroup_total += rt.cgroups.memory_usage(fv.zygote.cgroup)
            first = await rt.invoke("small")
            print(json.dumps({
                "instances": len(instances), "seconds_to_fork": round(elapsed, 2),
                "pss_bytes": pss_total, "cgroup_bytes": cgroup_total,
                "pss_per_instance_kib": round(pss_total / len(instances) / 1024),
                "cgroup_per_instance_kib": round(cgroup_total / len(instances) / 1024),
                "cgroups": rt.cgroups.enabled, "first_call": first.start,
            }))


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]))
