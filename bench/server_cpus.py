#!/usr/bin/env python3
"""The server on its own CPU (`--server-cpus`), toggled on one running server.

    .venv/bin/python bench/server_cpus.py [--pairs 10] [--seconds 3]
                                          [--out bench/results/server-cpus-<date>-<commit>.json]

One `fastfaas serve`, a trivial handler (memory 1769 MB: a whole CPU of
quota) warmed up, then wrk (32 connections, POST {}) in pairs of rounds: in
one, the server and every process below it may run on any CPU; in the other,
the server is kept to the first CPU and its descendants (template, zygotes,
instances) to the rest, as `--server-cpus` would. The order alternates per
pair, so that a noisy spell of the machine hits both alike. Prints and
records the medians and the ratio of each pair (pinned / anywhere).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _common  # noqa: E402  (bench/, first on sys.path)

from fastfaas.loadgen import report  # noqa: E402
from fastfaas.loadgen.scenarios import Api, fastfaas_server, function_env, wrk  # noqa: E402


def place(pid: int, cpus: set[int]) -> None:
    """`pid`'s threads on `cpus` (a process gone meanwhile is skipped)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread gone meanwhile
            os.sched_setaffinity(tid, cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("server_cpus: needs two CPUs")
    anywhere, server_cpu, rest = set(cpus), {cpus[0]}, set(cpus[1:])
    before = _common.cpu_times()
    rounds: dict[str, list[float]] = {"anywhere": [], "pinned": []}
    with fastfaas_server() as server:
        api = Api(server.url)
        api.deploy("ok", memory_mb=1769, env=function_env("sleep", 0, 0))
        api.warm("ok")
        url = f"{server.url}/v1/functions/ok/invoke"
        wrk(url, 32, args.seconds)  # warm-up: instances forked, caches hot
        for i in range(args.pairs):
            for side in ("anywhere", "pinned") if i % 2 == 0 else ("pinned", "anywhere"):
                place(server.proc.pid, server_cpu if side == "pinned" else anywhere)
                for pid in _common.descendants(server.proc.pid):
                    place(pid, rest if side == "pinned" else anywhere)
                rps = wrk(url, 32, args.seconds)["rps"]
                rounds[side].append(rps)
                print(f"pair {i + 1}: {side} {rps:,.0f} req/s", file=sys.stderr, flush=True)
        api.close()
    ratios = [p / a for p, a in zip(rounds["pinned"], rounds["anywhere"], strict=True)]
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": report.git_commit(ROOT), "machine": report.machine(),
        "params": {"pairs": args.pairs, "seconds": args.seconds, "connections": 32,
                   "server_cpus": sorted(server_cpu), "function_cpus": sorted(rest)},
        "rps": rounds,
        "median_rps": {k: statistics.median(v) for k, v in rounds.items()},
        "pair_ratios": [round(r, 3) for r in ratios],
        "median_pair_ratio": round(statistics.median(ratios), 3),
        "steal_share": _common.steal_share(before, _common.cpu_times()),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "rps"}, indent=1))
    out = args.out or (ROOT / "bench" / "results" /
                       f"server-cpus-{datetime.date.today()}-{result['commit']}.json")
    report.write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
