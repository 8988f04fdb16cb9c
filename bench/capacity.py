#!/usr/bin/env python3
"""Capacity management under load (issue 5): four scenarios against `fastfaas serve`.

    .venv/bin/python bench/capacity.py [--quick] [--only zipf,rising,burst,density]
                                       [--out bench/results/capacity-<date>-<commit>.json]

1. zipf: 200 functions (1769 MB: one vCPU each, so that CPU quotas do not
   throttle the busiest instances; `zipf128` runs the same at 128 MB) whose
   handlers sleep 1 ms, Zipf popularity (s=1), an open loop at 1,000
   invocations/s for 60 s after 20 s of warm-up. Per start kind latency; the share
   of the 10 most popular functions' invocations that were warm or prewarmed
   (from the server's own counters in /metrics). Targets: >= 99%, overall p99
   <= 5 ms, no 5xx.
2. rising: one function, handler sleeps 50 ms, an open loop ramping 20 -> 400/s
   over 30 s, so that new instances are needed all along. Target: >= 95% of the
   starts that needed a new instance are prewarmed, not forked.
3. burst: 200 connections opened first, then 200 invocations sent at once to a
   function that was idle (one warm instance, its spare): completion time of
   the whole burst, p50/p99, start kinds, errors.
4. density: one small function (128 MB) with prewarm=1000; once the instances
   are idle, their memory as the sum of PSS (/proc/PID/smaps_rollup) and as
   the memory cgroups' usage (page tables are not in PSS). Target: 1,000
   instances within 2 GB.

Every scenario starts its own server (fresh data directory) and stops it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402  (bench/, first on sys.path)

from fastfaas.loadgen import report  # noqa: E402
from fastfaas.loadgen.client import Connection, build_request  # noqa: E402
from fastfaas.loadgen.engine import Plan, Target, run  # noqa: E402
from fastfaas.loadgen.hist import Histogram  # noqa: E402
from fastfaas.loadgen.scenarios import Api, fastfaas_server, function_env  # noqa: E402

METRIC = re.compile(r'^fastfaas_invocations_total\{function="([^"]+)",start="([^"]+)",'
                    r'outcome="([^"]+)"\} (\d+)$')


def invocation_counts(api: Api) -> dict[tuple[str, str, str], int]:
    text = api.client.get("/metrics").text
    out = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            out[m.group(1), m.group(2), m.group(3)] = int(m.group(4))
    return out


LOG = Path("/tmp/fastfaas-capacity-server.log")
SERVER_ARGS: list[str] = []  # more `fastfaas serve` options (--server-arg)


def zipf_scenario(quick: bool, memory_mb: int = 1769) -> dict[str, Any]:
    functions, rate, duration, warmup = (40, 300, 10, 5) if quick else (200, 1000, 60, 20)
    with fastfaas_server(*SERVER_ARGS, log=LOG) as server:
        api = Api(server.url)
        names = [f"z-{i:03d}" for i in range(functions)]
        env = function_env("sleep", 1, 0)
        for name in names:
            api.deploy(name, memory_mb=memory_mb, env=env)
        target = Target(host=server.host, port=server.port)
        # Warm-up: the same traffic, not measured (the first calls of 200 functions
        # are claims); then the steady state, measured by the client and by the
        # server's own counters over the same window.
        warm = Plan(target=target, functions=names, zipf_s=1.0, mode="open", rate=rate,
                    connections=512, duration_s=warmup, warmup_s=0, seed=4)
        run(warm, lambda done, elapsed: None)
        before = invocation_counts(api)
        plan = Plan(target=target, functions=names, zipf_s=1.0, mode="open", rate=rate,
                    connections=512, duration_s=duration, warmup_s=0, seed=5)
        stats = run(plan, lambda done, elapsed: None)
        after = invocation_counts(api)
        counts = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
        api.close()
    top = set(names[:10])
    top_total = sum(n for (f, _, _), n in counts.items() if f in top)
    top_hot = sum(n for (f, s, _), n in counts.items() if f in top and s in ("warm", "prewarmed"))
    summ = report.summary(stats)
    five_xx = sum(n for k, n in stats.errors.items() if k.startswith("http_5"))
    overall_p99 = summ["latency_ms"]["all"]["p99"]
    return {
        "params": {"functions": functions, "rate": rate, "duration_s": duration,
                   "warmup_s": warmup, "handler": "sleep 1 ms", "zipf_s": 1.0,
                   "memory_mb": memory_mb},
        "summary": summ,
        # Requests over 5 ms per second of the window: a tail's shape in time (the
        # reaper's mass expiry showed as a step 40 s in).
        "over_5ms_per_second": [h.count_at_least(5001) for h in stats.timeline_latency],
        "top10": {"invocations": top_total, "warm_or_prewarmed": top_hot,
                  "share": round(top_hot / top_total, 5) if top_total else None},
        "server_counts": {f"{f}|{s}|{o}": n for (f, s, o), n in counts.items()},
        "targets": {"top10_warm_or_prewarmed_ge_99pct": bool(top_total)
                    and top_hot / top_total >= 0.99,
                    "p99_le_5ms": overall_p99 <= 5.0, "no_5xx": five_xx == 0},
        "raw": stats.to_dict(),
    }


def rising_scenario(quick: bool) -> dict[str, Any]:
    start, end, duration = (20, 200, 10) if quick else (20, 400, 30)
    with fastfaas_server(*SERVER_ARGS) as server:
        api = Api(server.url)
        api.deploy("rise", memory_mb=128, env=function_env("sleep", 50, 0))
        api.warm("rise")
        plan = Plan(target=Target(host=server.host, port=server.port), functions=["rise"],
                    mode="open", rate=start, rate_end=end, connections=1024,
                    duration_s=duration, warmup_s=0, seed=6)
        stats = run(plan, lambda done, elapsed: None)
        api.close()
    summ = report.summary(stats)
    kinds = {k: v["count"] for k, v in summ["latency_ms"].items() if k != "all"}
    new = kinds.get("prewarmed", 0) + kinds.get("forked", 0)
    share = kinds.get("prewarmed", 0) / new if new else None
    return {
        "params": {"rate_start": start, "rate_end": end, "duration_s": duration,
                   "handler": "sleep 50 ms"},
        "summary": summ,
        "new_instance_starts": {"prewarmed": kinds.get("prewarmed", 0),
                                "forked": kinds.get("forked", 0), "share_prewarmed": share},
        "targets": {"prewarmed_ge_95pct": share is not None and share >= 0.95},
        "raw": stats.to_dict(),
    }


async def _burst(server_host: str, port: int, n: int) -> dict[str, Any]:
    conns = [await Connection.open(server_host, port) for _ in range(n)]
    data = build_request(server_host, port, "POST", "/v1/functions/burst/invoke", b"{}")
    hist = Histogram()
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    t0 = time.perf_counter_ns()

    async def one(conn: Connection) -> None:
        start = time.perf_counter_ns()
        try:
            r = await conn.request(data)
        except Exception as exc:  # counted, the burst goes on
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            return
        hist.record((time.perf_counter_ns() - start) // 1000)
        if r.status != 200 or r.function_error:
            key = f"http_{r.status}" if r.status != 200 else r.function_error
            errors[key] = errors.get(key, 0) + 1
        kinds[r.start] = kinds.get(r.start, 0) + 1

    async with trio.open_nursery() as nursery:
        for conn in conns:
            nursery.start_soon(one, conn)
    total_ms = (time.perf_counter_ns() - t0) / 1e6
    for conn in conns:
        conn.close()
    p = hist.percentiles((50.0, 99.0))
    return {"requests": n, "completion_ms": round(total_ms, 1), "p50_ms": p[50.0] / 1000,
            "p99_ms": p[99.0] / 1000, "max_ms": hist.max / 1000, "starts": kinds,
            "errors": errors, "histogram": hist.to_dict()}


def burst_scenario(quick: bool) -> dict[str, Any]:
    n = 50 if quick else 200
    rounds = []
    with fastfaas_server(*SERVER_ARGS) as server:
        api = Api(server.url)
        api.deploy("burst", memory_mb=128, env=function_env("sleep", 100, 0),
                   idle_timeout_s=1)
        for _ in range(3):
            api.warm("burst")
            _wait_idle(api, "burst")
            rounds.append(trio.run(_burst, server.host, server.port, n))
        api.close()
    return {"params": {"concurrent": n, "handler": "sleep 100 ms",
                       "before_each": "one warm instance reaped; the zygote and its spare up"},
            "rounds": rounds,
            "targets": {"no_errors": all(not r["errors"] for r in rounds)}}


def _wait_idle(api: Api, name: str, timeout_s: float = 60) -> None:
    """Until the function has no warm or busy instance and its spare is up: the
    burst then starts from idle (a remote server's state is polled, bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = api.client.get(f"/v1/functions/{name}").json()["state"]["instances"]
        if state["warm"] == 0 and state["busy"] == 0 and state["spare"] >= 1:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{name} did not go idle in {timeout_s} s")


def density_scenario(quick: bool) -> dict[str, Any]:
    n = 200 if quick else 1000
    script = ROOT / "bench" / "density_probe.py"
    import subprocess

    out = subprocess.run([sys.executable, str(script), str(n)], capture_output=True,
                         text=True, check=True, timeout=900).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["targets"] = {"within_2gb": result["cgroup_bytes"] <= 2 << 30
                         and result["pss_bytes"] <= 2 << 30 and result["instances"] >= n}
    return result


def zipf_128_scenario(quick: bool) -> dict[str, Any]:
    """The same at 128 MB: each instance gets 7% of a CPU (CFS quota 7.2 ms per
    100 ms), and the busiest instances are throttled mid-call."""
    return zipf_scenario(quick, memory_mb=128)


SCENARIOS = {"zipf": zipf_scenario, "zipf128": zipf_128_scenario, "rising": rising_scenario,
             "burst": burst_scenario, "density": density_scenario}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller, shorter; smoke only")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="one more `fastfaas serve` option for every scenario's server,"
                             " repeatable (e.g. --server-arg=--function-sched=batch)")
    args = parser.parse_args()
    SERVER_ARGS.extend(args.server_arg)
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": report.git_commit(ROOT), "machine": report.machine(), "quick": args.quick,
        "server_args": SERVER_ARGS,
    }
    for name in args.only.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        before = _common.cpu_times()
        results[name] = SCENARIOS[name](args.quick)
        # The share of CPU time the hypervisor gave other guests meanwhile: on a
        # shared host, what the figures ran under.
        results[name]["steal_share"] = _common.steal_share(before, _common.cpu_times())
        shown = {k: v for k, v in results[name].items() if k not in ("raw", "server_counts")}
        print(json.dumps(shown, indent=1, default=str)[:3000])
    out = args.out or (ROOT / "bench" / "results" /
                       f"capacity-{datetime.date.today()}-{results['commit']}.json")
    if args.quick and args.out is None:
        return
    report.write_json(results, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
