"""`fastfaas bench`: run a scenario, print a summary, write JSON (and a PNG).

    fastfaas bench run      [--url URL] [--functions M] [--zipf S] [--mode closed|open] ...
    fastfaas bench cold     [--url URL] [--rounds N]
    fastfaas bench compare  [--targets fastfaas,prefork,spawn,uvicorn] [--connections C] ...
    fastfaas bench validate [--rounds N] [--duration S]

Without --url, `run` and `cold` start their own `fastfaas serve` on a fresh
data directory and stop it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import shutil
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import trio

from fastfaas.loadgen import report
from fastfaas.loadgen.cold import cold_starts
from fastfaas.loadgen.engine import Plan, Stats, Target, run
from fastfaas.loadgen.scenarios import (
    Api,
    ServerProcess,
    deploy_population,
    fastfaas_server,
    payload_of,
    plan_for,
    population_names,
    stats_ratio,
    wrk,
)

ROOT = Path(__file__).resolve().parent.parent.parent
BASELINES = ROOT / "bench" / "baselines"
OK_FUNCTION = ROOT / "bench" / "functions" / "ok"


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    b = sub.add_parser("bench", help="load-test a server; baselines in the same run",
                       description=__doc__.split("\n\n")[0])
    bsub = b.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")

    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", type=Path, default=None,
                     help="JSON report path (default bench/results/<scenario>-<date>-<commit>"
                          ".json); a PNG is written beside it when matplotlib is installed")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")

    load = argparse.ArgumentParser(add_help=False)
    load.add_argument("--mode", choices=("closed", "open"), default="closed")
    load.add_argument("--connections", type=int, default=32)
    load.add_argument("--rate", type=float, default=1000.0, help="open loop: requests/s")
    load.add_argument("--rate-end", type=float, default=None,
                      help="open loop: ramp the rate linearly from --rate to this")
    load.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    load.add_argument("--warmup", type=float, default=2.0, help="seconds sent, not measured")
    load.add_argument("--workers", type=int, default=1, help="generator processes")
    load.add_argument("--seed", type=int, default=1)
    load.add_argument("--request-timeout", type=float, default=60.0,
                      help="seconds without an answer before a request is a timeout; the run"
                           " ends at the latest this long after the measurement")
    load.add_argument("--payload-bytes", type=int, default=2, help="event size")

    r = bsub.add_parser("run", parents=[common, out, load],
                        help="a Zipf population of functions, closed or open loop")
    r.add_argument("--functions", type=int, default=20, help="functions deployed (M)")
    r.add_argument("--zipf", type=float, default=1.0, help="popularity exponent (0: uniform)")
    r.add_argument("--handler-ms", type=float, default=0.0, help="handler duration")
    r.add_argument("--handler-mode", choices=("sleep", "cpu"), default="sleep")
    r.add_argument("--result-bytes", type=int, default=0, help="padding in each result")
    r.add_argument("--memory-mb", type=int, default=128)
    r.set_defaults(run=_run_population)

    c = bsub.add_parser("cold", parents=[common, out],
                        help="force each start kind and report each")
    c.add_argument("--rounds", type=int, default=20,
                   help="samples wanted per start kind and phase (each phase tries at most"
                        " 3 x rounds + 5 times)")
    c.add_argument("--memory-mb", type=int, default=128)
    c.set_defaults(run=_run_cold)

    cmp_ = bsub.add_parser("compare", parents=[out, load],
                           help="fastfaas against the baselines, same handler, same run")
    cmp_.add_argument("--targets", default="fastfaas,prefork,spawn,uvicorn",
                      help="comma-separated: fastfaas, prefork, spawn, uvicorn")
    cmp_.add_argument("--memory-mb", type=int, default=1769)
    cmp_.set_defaults(run=_run_compare, connections=8)

    v = bsub.add_parser("validate", parents=[out],
                        help="the generator against wrk on a fixed-response server")
    v.add_argument("--rounds", type=int, default=3)
    v.add_argument("--duration", type=float, default=5.0)
    v.set_defaults(run=_run_validate)


# What the command line calls each Plan field, for Plan.check's messages.
FLAGS = {"mode": "--mode", "functions": "--functions", "connections": "--connections",
         "workers": "--workers", "duration_s": "--duration", "warmup_s": "--warmup",
         "request_timeout_s": "--request-timeout", "rate": "--rate", "rate_end": "--rate-end",
         "zipf_s": "--zipf"}


def main(args: argparse.Namespace) -> None:
    import httpx

    try:
        args.run(args)
    except BaseException as exc:  # sorted out below; the rest is re-raised
        cause = _cause(exc)
        if isinstance(cause, KeyboardInterrupt):
            print("fastfaas bench: interrupted; what it deployed and started was removed",
                  file=sys.stderr)
            sys.exit(130)
        if isinstance(cause, httpx.TransportError):
            url = getattr(args, "url", None)
            print(f"fastfaas bench: cannot reach the server at {url} ({cause}): is `fastfaas"
                  " serve` running? (or leave out --url to start one)", file=sys.stderr)
            sys.exit(2)
        if isinstance(cause, (RuntimeError, ValueError, OSError)):
            print(f"fastfaas bench: {cause}", file=sys.stderr)
            sys.exit(1)
        raise


def _cause(exc: BaseException) -> BaseException:
    """The exception a trio nursery may have wrapped: a KeyboardInterrupt if there
    is one in the group, else the only exception of a group of one."""
    while isinstance(exc, BaseExceptionGroup):
        interrupted = exc.subgroup(KeyboardInterrupt)
        if interrupted is not None:
            return KeyboardInterrupt()
        if len(exc.exceptions) != 1:
            return exc
        exc = exc.exceptions[0]
    return exc


# --- helpers ---------------------------------------------------------------------------


def _out_path(args: argparse.Namespace, scenario: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    date = datetime.date.today().isoformat()
    return ROOT / "bench" / "results" / f"{scenario}-{date}-{report.git_commit(ROOT)}.json"


def _finish(args: argparse.Namespace, scenario: str,
            runs: dict[str, tuple[Plan | None, Stats]],
            extra: dict[str, Any] | None = None) -> None:
    path = _out_path(args, scenario)
    report.write_json(report.document(scenario, runs, extra), path)
    png = path.with_suffix(".png")
    if report.plot({k: s for k, (_, s) in runs.items()}, png):
        print(f"wrote {path} and {png.name}")
    else:
        print(f"wrote {path}")


def _progress(args: argparse.Namespace, total_s: float, label: str) -> Any:
    if getattr(args, "no_progress", False):
        return None, contextlib.nullcontext()
    from tqdm import tqdm

    bar = tqdm(total=round(total_s, 1), desc=label, unit="s", leave=False,
               bar_format="{desc} {bar} {n:.1f}/{total:.1f} s {postfix}", file=sys.stderr)

    def update(done: int, elapsed: float) -> None:
        bar.n = min(round(elapsed, 1), bar.total)
        bar.set_postfix_str(f"{done:,} requests", refresh=True)

    return update, bar


def _plan(args: argparse.Namespace, target: Target, functions: list[str]) -> Plan:
    """The load plan of the command line, checked (errors name the flags)."""
    return plan_for(target, functions, FLAGS, payload=payload_of(args.payload_bytes),
                    zipf_s=getattr(args, "zipf", 1.0), mode=args.mode,
                    connections=args.connections, rate=args.rate, rate_end=args.rate_end,
                    duration_s=args.duration, warmup_s=args.warmup, seed=args.seed,
                    workers=args.workers, request_timeout_s=args.request_timeout)


def _load(args: argparse.Namespace, plan: Plan, label: str) -> Stats:
    update, bar = _progress(args, plan.warmup_s + plan.duration_s, label)
    with bar:
        return run(plan, update)


def _at_least(args: argparse.Namespace, minimum: float, *flags: str) -> None:
    for flag in flags:
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value < minimum:
            raise ValueError(f"{flag} must be >= {minimum:g}, got {value:g}")


@contextlib.contextmanager
def _server_or_url(args: argparse.Namespace) -> Iterator[tuple[str, str | None]]:
    if args.url_given:
        yield args.url, args.token
        return
    with fastfaas_server() as server:
        yield server.url, None


# --- scenarios ---------------------------------------------------------------------------


def _run_population(args: argparse.Namespace) -> None:
    _at_least(args, 1, "--functions")
    _at_least(args, 0, "--payload-bytes", "--handler-ms", "--result-bytes")
    names = population_names("bench", args.functions)
    plan = _plan(args, Target(port=1), names)  # refused here, before anything is deployed
    with _server_or_url(args) as (url, token):
        api = Api(url, token)
        deployed: list[str] = []
        try:
            deploy_population(api, "bench", args.functions, memory_mb=args.memory_mb,
                              mode=args.handler_mode, ms=args.handler_ms,
                              result_bytes=args.result_bytes, deployed=deployed)
            plan = msgspec.structs.replace(plan, target=_target(url, token))
            stats = _load(args, plan, "run")
        finally:
            try:
                for name in deployed:
                    api.delete(name)
            finally:
                api.close()
    summ = report.summary(stats)
    print(report.table(summ, f"population: {args.functions} functions, zipf {args.zipf},"
                             f" {args.mode} loop"))
    _finish(args, "population", {"fastfaas": (plan, stats)})


def _run_cold(args: argparse.Namespace) -> None:
    _at_least(args, 1, "--rounds")
    with _server_or_url(args) as (url, token):
        api = Api(url, token)
        try:
            cold = trio.run(functools.partial(cold_starts, memory_mb=args.memory_mb),
                            api, _target(url, token), args.rounds)
        finally:
            api.close()
    summ = report.summary(cold.stats)
    print(report.table(summ, "cold starts, each kind forced (client latency minus the"
                             " handler's time, a new connection per call)"))
    counts = cold.wanted_vs_got()
    print("samples, got/wanted: " + ", ".join(
        f"{kind} {c['got']}/{c['wanted']}" for kind, c in sorted(
            counts.items(), key=lambda kv: report.START_ORDER.index(kv[0])
            if kv[0] in report.START_ORDER else 99)))
    _finish(args, "cold", {"fastfaas": (None, cold.stats)},
            {"rounds": args.rounds, "wanted_vs_got": counts,
             "phases": [msgspec.to_builtins(p) for p in cold.phases]})


def _run_compare(args: argparse.Namespace) -> None:
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(wanted) - {"fastfaas", "prefork", "spawn", "uvicorn"}
    if unknown:
        raise ValueError(f"unknown targets {sorted(unknown)}")
    _plan(args, Target(port=1), ["ok"])  # refused here, before any server starts
    runs: dict[str, tuple[Plan | None, Stats]] = {}
    for name in wanted:
        with _start_target(name, args) as (target, functions):
            plan = _plan(args, target, functions)
            runs[name] = (plan, _load(args, plan, name))
        print(report.table(report.summary(runs[name][1]), f"== {name}"))
        print()
    ratios = {}
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ratios[f"{a}/{b}"] = stats_ratio(runs[b][1], runs[a][1])
            r = ratios[f"{a}/{b}"]
            print(f"{a} vs {b}: throughput {r['throughput']}x, p50 {r['p50']}x")
    _finish(args, "compare", runs, {"ratios": ratios})


@contextlib.contextmanager
def _start_target(name: str, args: argparse.Namespace) -> Iterator[tuple[Target, list[str]]]:
    if name == "fastfaas":
        with fastfaas_server() as server:
            api = Api(server.url)
            try:
                api.deploy("ok", memory_mb=args.memory_mb)
                api.warm("ok")
            finally:
                api.close()
            yield Target(host=server.host, port=server.port), ["ok"]
        return
    script = BASELINES / f"{name}_server.py"
    if not script.exists():
        raise RuntimeError(f"baseline {name}: {script} is missing")
    server = ServerProcess([sys.executable, str(script), "--port", "0", "--code-dir",
                            str(OK_FUNCTION), "--handler", "app.handler"])
    try:
        yield Target(host=server.host, port=server.port, kind="plain"), ["ok"]
    finally:
        server.stop()


def _run_validate(args: argparse.Namespace) -> None:
    if shutil.which("wrk") is None:
        raise RuntimeError("validate needs wrk: apt-get install -y wrk")
    _at_least(args, 1, "--rounds")
    common = {"payload": b"{}", "duration_s": args.duration, "warmup_s": 1.0}
    # Both plans are checked before the server starts, then pointed at it.
    plan64 = plan_for(Target(port=1), ["fixed"], FLAGS, connections=64, workers=2, **common)
    plan32 = plan_for(Target(port=1), ["fixed"], FLAGS, connections=32, workers=1, **common)
    server = ServerProcess([sys.executable, "-m", "fastfaas.loadgen.fixed", "--port", "0"])
    rows: list[dict[str, Any]] = []
    runs: dict[str, tuple[Plan | None, Stats]] = {}
    try:
        target = Target(host=server.host, port=server.port, kind="plain")
        plan64 = msgspec.structs.replace(plan64, target=target)
        plan32 = msgspec.structs.replace(plan32, target=target)
        for round_ in range(args.rounds):
            row: dict[str, Any] = {"round": round_ + 1}
            plan = plan64
            update, bar = _progress(args, plan.warmup_s + plan.duration_s, "2 workers")
            with bar:
                stats = run(plan, update)
            row["two_workers_rps"] = round(stats.throughput or 0.0, 1)
            runs[f"two-workers-{round_ + 1}"] = (plan, stats)
            # One worker at 32 connections: two processes contending for two cores
            # with the server make a bimodal latency (one starved, one not).
            update, bar = _progress(args, plan32.warmup_s + plan32.duration_s, "32 conns")
            with bar:
                stats32 = run(plan32, update)
            runs[f"c32-{round_ + 1}"] = (plan32, stats32)
            row["c32_rps"] = round(stats32.throughput or 0.0, 1)
            row["c32_p50_ms"] = stats32.all_latency().percentile(50) / 1000
            w = wrk(f"{server.url}/invoke", 32, args.duration)
            row["wrk_rps"] = round(w["rps"], 1)
            row["wrk_p50_ms"] = w["p50_ms"]
            row["rps_ratio"] = round(row["c32_rps"] / w["rps"], 3)
            row["p50_ratio"] = round(row["c32_p50_ms"] / w["p50_ms"], 3) if w["p50_ms"] else 0
            rows.append(row)
            print(row)
    finally:
        server.stop()
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("two_workers_rps", "rps_ratio", "p50_ratio")}
    verdict = {
        "two_workers_ge_20000_rps": med["two_workers_rps"] >= 20000,
        "c32_rps_within_15pct_of_wrk": abs(med["rps_ratio"] - 1) <= 0.15,
        "c32_p50_within_15pct_of_wrk": abs(med["p50_ratio"] - 1) <= 0.15,
    }
    print(f"medians: {med}")
    print(f"targets: {verdict}")
    _finish(args, "validate", runs, {"rounds": rows, "medians": med, "targets": verdict})


def _target(url: str, token: str | None) -> Target:
    hostport = url.split("//", 1)[-1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    return Target(host=host, port=int(port), token=token)
