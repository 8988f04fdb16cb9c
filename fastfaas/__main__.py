"""fastfaas's command line.

    fastfaas serve [--host H] [--port P] [--data-dir D] [--examples [DIR]] ...
    fastfaas deploy NAME DIR|ZIP --handler mod.fn [--memory-mb MB] [--timeout-s S] [--env K=V]
    fastfaas invoke NAME [JSON | -] [--async]
    fastfaas list | get NAME | delete NAME | logs NAME
    fastfaas bench run|cold|compare|validate ...   (the load-test harness)

Client commands speak to a server with httpx: `--url` (or FASTFAAS_URL,
default http://127.0.0.1:8080) and `--token` (or FASTFAAS_TOKEN).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_URL = "http://127.0.0.1:8080"

# Configuration flags of `deploy` (DESIGN.md's names in kebab-case) and their types.
_DEPLOY_FLAGS: dict[str, type] = {
    "memory_mb": int, "timeout_s": float, "description": str, "prewarm": int,
    "idle_timeout_s": float, "zygote_idle_timeout_s": float, "init_timeout_s": float,
    "reserved_concurrency": int, "max_concurrency": int, "isolation": str, "tmp_mb": int,
}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)
    elif args.command == "bench":
        from fastfaas.loadgen import cli as bench_cli

        args.url_given = getattr(args, "url", None) is not None
        bench_cli.main(args)
    else:
        try:
            args.run(args)
        except _CliError as exc:
            print(f"fastfaas: {exc}", file=sys.stderr)
            sys.exit(exc.status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastfaas", description="Run Python functions on demand, each call in a process"
        " forked from a zygote that already imported the code.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", help="run the server (HTTP API, registry, workers)",
                       description="Run the fastfaas server in the foreground; SIGTERM or"
                       " Ctrl-C stops it gracefully.")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others need --token)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    s.add_argument("--data-dir", type=Path, default=Path(".fastfaas"),
                   help="registry, queue and code (default ./.fastfaas)")
    s.add_argument("--examples", nargs="?", type=Path, const=EXAMPLES, default=None,
                   metavar="DIR", help=f"deploy the examples at start (default {EXAMPLES})")
    s.add_argument("--token", default=os.environ.get("FASTFAAS_TOKEN"),
                   help="require `Authorization: Bearer TOKEN` (or set FASTFAAS_TOKEN)")
    s.add_argument("--max-body-mb", type=float, default=6.0,
                   help="largest invocation body (default 6)")
    s.add_argument("--graceful-timeout-s", type=float, default=30.0,
                   help="how long in-flight work may finish at a stop (default 30)")
    s.add_argument("--header-timeout-s", type=float, default=10.0,
                   help="a request's headers must arrive within this time (default 10)")
    s.add_argument("--keepalive-timeout-s", type=float, default=60.0,
                   help="idle connections close after this time (default 60)")
    s.add_argument("--cgroups", choices=("auto", "require", "off"), default="auto",
                   help="cgroups where writable (auto), or fail without (require), or rlimits")
    s.add_argument("--isolation", choices=("none", "standard", "strict"), default=None,
                   help="the functions' default isolation level (default: the strongest"
                        " this machine allows: strict as root)")
    s.add_argument("--aws-credentials", action="append", metavar="KEY_ID:SECRET",
                   default=[c for c in os.environ.get("FASTFAAS_AWS_CREDENTIALS", "").split(",")
                            if c],
                   help="keys the Lambda API verifies SigV4 signatures with (repeatable, or"
                        " FASTFAAS_AWS_CREDENTIALS, comma-separated); without, it accepts"
                        " any on loopback and is shut with --token or off loopback")
    s.add_argument("--allow-weaker-isolation", action="store_true",
                   help="let a function ask for a level below --isolation (by default the"
                        " server's level is also the least a function gets)")
    s.add_argument("--sandbox-uid", type=int, default=65534,
                   help="strict: the unprivileged uid and gid function code runs as, seen"
                        " from the host (default 65534)")
    s.add_argument("--sandbox-expose", action="append", default=[], metavar="PATH",
                   help="strict: a host path functions see read-only, even under a directory"
                        " strict hides (/tmp, /run, /home...); repeatable")
    s.add_argument("--warm-pool-size", type=int, default=2,
                   help="generic zygotes forked ahead of need, at least (default 2)")
    s.add_argument("--warm-pool-max", type=int, default=8,
                   help="the most the warming pool grows to under a high rate of claims"
                        " (default 8)")
    s.add_argument("--concurrency-limit", type=int, default=1000,
                   help="executions at once, all functions (default 1000); a function's"
                        " reserved_concurrency holds part of it")
    s.add_argument("--memory-budget-mb", type=int, default=None,
                   help="the most memory zygotes and instances may use, measured"
                        " (default: 80%% of the machine's)")
    s.add_argument("--auto-size-after", type=int, default=50, metavar="N",
                   help="a function with auto_size gets a new size after N invocations at"
                        " its current size, if its usage asks for one (default 50)")
    s.add_argument("--affinity-wait-s", type=float, default=1.0,
                   help="how long a call with X-Fastfaas-Route-Key waits for its busy"
                        " instance before another serves it (default 1)")
    s.add_argument("--async-concurrency", type=int, default=32,
                   help="queued (Event) invocations run at once (default 32)")
    s.add_argument("--server-cpus", default=None, metavar="LIST",
                   help="run the server on these CPUs (e.g. 0, or 0-1,4) and every function"
                        " process on the others, so that an instance it wakes never takes"
                        " its CPU (default: everything anywhere)")
    s.add_argument("--function-sched", choices=("batch", "normal"), default="batch",
                   help="the scheduling policy of function processes: batch (the default;"
                        " SCHED_BATCH: an instance the server wakes never preempts it, for"
                        " more warm calls per second at saturation) or normal (a handler"
                        " woken from a sleep on a busy machine preempts at once: a slightly"
                        " shorter tail for handlers that sleep)")
    s.add_argument("--allow-source-builds", action="store_true",
                   help="let pip build requirements from source (runs their build code)")
    s.add_argument("--pip-arg", action="append", default=[], metavar="ARG",
                   help="extra pip option for requirements, repeatable (e.g. --pip-arg=--no-index)")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("FASTFAAS_URL", DEFAULT_URL),
                        help=f"the server (or FASTFAAS_URL; default {DEFAULT_URL})")
    common.add_argument("--token", default=os.environ.get("FASTFAAS_TOKEN"),
                        help="bearer token (or FASTFAAS_TOKEN)")

    d = sub.add_parser("deploy", parents=[common], help="create or replace a function",
                       description="Upload a directory or zip as function NAME, then warm it"
                       " so that an import error shows at once.")
    d.add_argument("name")
    d.add_argument("source", type=Path, help="a directory or a .zip file")
    d.add_argument("--handler", required=True, help="module.function, e.g. app.handler")
    d.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment variable, repeatable")
    for field, kind in _DEPLOY_FLAGS.items():
        d.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None)
    d.add_argument("--network", action="store_true", default=None,
                   help="strict isolation: use the host's network (default: none)")
    d.add_argument("--no-warm", action="store_true", help="do not warm after deploying")
    d.set_defaults(run=_deploy)

    i = sub.add_parser("invoke", parents=[common], help="invoke a function, print its result",
                       description="Invoke NAME with a JSON event (an argument, or - for"
                       " standard input; default {}). A function error exits with status 1.")
    i.add_argument("name")
    i.add_argument("event", nargs="?", default=None, help="JSON, or - to read standard input")
    i.add_argument("--async", dest="is_async", action="store_true",
                   help="queue it (202) and print the request id")
    i.add_argument("--verbose", "-v", action="store_true",
                   help="also print start kind, durations and instance on stderr")
    i.set_defaults(run=_invoke)

    ls = sub.add_parser("list", parents=[common], help="list functions")
    ls.set_defaults(run=_list)
    g = sub.add_parser("get", parents=[common], help="a function's configuration and state")
    g.add_argument("name")
    g.set_defaults(run=_get)
    rm = sub.add_parser("delete", parents=[common], help="delete a function")
    rm.add_argument("name")
    rm.set_defaults(run=_delete)
    lg = sub.add_parser("logs", parents=[common], help="a function's recent invocations")
    lg.add_argument("name")
    lg.add_argument("--limit", type=int, default=20)
    lg.set_defaults(run=_logs)
    sz = sub.add_parser("sizing", parents=[common],
                        help="a function's memory size from its observed usage, and why")
    sz.add_argument("name")
    sz.add_argument("--version", default="$LATEST")
    sz.set_defaults(run=_sizing)
    tn = sub.add_parser("tune", parents=[common],
                        help="trial runs of an event at several memory sizes: duration and"
                             " cost per size, and the best size per strategy",
                        description="Power-Tuning-style trials: the event runs --runs times"
                        " at each size (its side effects happen that many times), in"
                        " instances forked for the trial; the function's own size and"
                        " instances are untouched. The fastest and slowest 20%% of each"
                        " size's runs are dropped; cost is duration x memory.")
    tn.add_argument("name")
    tn.add_argument("--event", required=True, metavar="FILE",
                    help="a JSON file holding the event (- for standard input)")
    tn.add_argument("--sizes", default=",".join(map(str, _TUNE_SIZES)),
                    help="memory sizes in MB, comma-separated (default %(default)s)")
    tn.add_argument("--runs", type=int, default=5, help="runs per size, >= 5 (default 5)")
    tn.add_argument("--version", default="$LATEST")
    tn.add_argument("--png", metavar="FILE",
                    help="also draw duration and cost per size (needs the bench extra:"
                         " matplotlib)")
    tn.add_argument("--json", action="store_true", help="print the whole report as JSON")
    tn.set_defaults(run=_tune)
    st = sub.add_parser("status", parents=[common], help="the server's health (GET /healthz)")
    st.set_defaults(run=_status)

    from fastfaas.loadgen import cli as bench_cli

    bench_common = argparse.ArgumentParser(add_help=False)
    bench_common.add_argument("--url", default=None,
                              help="a running server (default: start one for the run)")
    bench_common.add_argument("--token", default=os.environ.get("FASTFAAS_TOKEN"))
    bench_cli.add_parser(sub, bench_common)
    return parser


# --- serve -----------------------------------------------------------------------


def _credentials(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key_id, sep, secret = item.partition(":")
        if not sep or not key_id or not secret:
            print(f"fastfaas: --aws-credentials {item.split(':')[0]!r}...: must look like"
                  " KEY_ID:SECRET", file=sys.stderr)
            sys.exit(2)
        out.append((key_id, secret))
    return out


def parse_cpus(text: str) -> frozenset[int]:
    """A CPU list as taskset and /sys write it: "0", "0-2,5"."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"{text!r} is not a CPU list (like 0 or 0-1,4)")
        lo, hi = int(first), int(last) if dash else int(first)
        if hi < lo:
            raise ValueError(f"{part!r}: a range goes up (like 0-1)")
        cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def _pin_server(text: str) -> frozenset[int]:
    """Keep this process (and the threads it starts) to the CPUs of `text`; the CPUs
    left for the function processes. Exits with status 2 on a list that cannot be."""
    usable = os.sched_getaffinity(0)
    try:
        server = parse_cpus(text)
    except ValueError as exc:
        print(f"fastfaas: --server-cpus {exc}", file=sys.stderr)
        sys.exit(2)
    rest = usable - server
    if not server <= usable or not rest:
        print(f"fastfaas: --server-cpus {text}: must be some of the CPUs this process may"
              f" run on ({_cpu_list(usable)}), leaving at least one for the functions",
              file=sys.stderr)
        sys.exit(2)
    os.sched_setaffinity(0, server)  # before any thread: they inherit it
    return frozenset(rest)


def _cpu_list(cpus: set[int] | frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def _serve(args: argparse.Namespace) -> None:
    import trio

    from fastfaas.http.app import ConfigurationError, ServeOptions, serve
    from fastfaas.http.server import Limits

    if min(args.header_timeout_s, args.keepalive_timeout_s, args.graceful_timeout_s) <= 0:
        print("fastfaas: timeouts must be > 0", file=sys.stderr)
        sys.exit(2)
    if (args.async_concurrency < 1 or args.warm_pool_size < 0 or args.concurrency_limit < 1
            or args.warm_pool_max < args.warm_pool_size or args.auto_size_after < 5):
        print("fastfaas: --async-concurrency and --concurrency-limit must be >= 1,"
              " 0 <= --warm-pool-size <= --warm-pool-max, and --auto-size-after >= 5",
              file=sys.stderr)
        sys.exit(2)

    function_cpus = None
    if args.server_cpus is not None:
        function_cpus = _pin_server(args.server_cpus)
    opts = ServeOptions(
        host=args.host, port=args.port, data_dir=args.data_dir, examples=args.examples,
        token=args.token, max_body_mb=args.max_body_mb,
        graceful_timeout_s=args.graceful_timeout_s, cgroups=args.cgroups,
        warm_pool_size=args.warm_pool_size, async_concurrency=args.async_concurrency,
        concurrency_limit=args.concurrency_limit, warm_pool_max=args.warm_pool_max,
        affinity_wait_s=args.affinity_wait_s, memory_budget_mb=args.memory_budget_mb,
        auto_size_after=args.auto_size_after,
        isolation=args.isolation, sandbox_uid=args.sandbox_uid,
        sandbox_expose=tuple(args.sandbox_expose),
        allow_weaker_isolation=args.allow_weaker_isolation,
        aws_credentials=tuple(_credentials(args.aws_credentials)),
        allow_source_builds=args.allow_source_builds,
        pip_args=tuple(args.pip_arg),
        limits=Limits(header_timeout_s=args.header_timeout_s,
                      keepalive_timeout_s=args.keepalive_timeout_s),
        function_cpus=function_cpus, function_sched=args.function_sched)
    try:
        from fastfaas.http.stalls import from_environment

        trio.run(serve, opts, instruments=from_environment())
    except ConfigurationError as exc:
        print(f"fastfaas: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"fastfaas: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        sys.exit(2)


# --- client commands -------------------------------------------------------------


class _CliError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    headers = kwargs.pop("headers", {})
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    try:
        with httpx.Client(base_url=args.url, timeout=None) as client:
            return client.request(method, path, headers=headers, **kwargs)
    except httpx.TransportError as exc:
        raise _CliError(f"cannot reach the server at {args.url} ({exc}): is `fastfaas serve`"
                        " running? (--url or FASTFAAS_URL)", status=2) from None


def _check(response: Any) -> Any:
    if response.status_code < 400:
        return response.json()
    try:
        body = response.json()
        message, code = body["message"], body["error"]
    except (ValueError, KeyError, TypeError):
        message, code = response.text, "?"
    raise _CliError(f"{message} (HTTP {response.status_code} {code})")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _deploy(args: argparse.Namespace) -> None:
    from fastfaas.errors import FastfaasError
    from fastfaas.runtime.code import code_bytes

    params: dict[str, str] = {"handler": args.handler}
    env: dict[str, str] = {}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            raise _CliError(f"--env {item!r} must look like KEY=VALUE")
        env[key] = value
    if env:
        params["env"] = json.dumps(env)
    for field in _DEPLOY_FLAGS:
        value = getattr(args, field)
        if value is not None:
            params[field] = str(value)
    if args.network:
        params["network"] = "true"
    try:
        data = code_bytes(args.source)
    except FastfaasError as exc:
        raise _CliError(str(exc)) from None
    info = _check(_request(args, "PUT", f"/v1/functions/{args.name}", params=params,
                           content=data, headers={"content-type": "application/zip"}))
    print(f"deployed {info['name']} (code {info['code_sha256'][:12]},"
          f" {info['config']['memory_mb']} MB, timeout {info['config']['timeout_s']:g} s)")
    if args.no_warm:
        return
    warm = _check(_request(args, "POST", f"/v1/functions/{args.name}/warm"))
    if not warm["ready"]:
        err = warm["error"]
        trace = "".join(err.get("stackTrace") or [])
        raise _CliError(f"{args.name} does not import: {err['errorType']}:"
                        f" {err['errorMessage']}\n{trace}".rstrip())
    print(f"{args.name} is ready: its code is imported")


def _invoke(args: argparse.Namespace) -> None:
    if args.event == "-":
        body = sys.stdin.buffer.read()
    elif args.event is None:
        body = b"{}"
    else:
        body = args.event.encode()
    try:
        json.loads(body)
    except ValueError as exc:
        raise _CliError(f"the event is not valid JSON: {exc}") from None
    headers = {"content-type": "application/json"}
    if args.is_async:
        headers["x-fastfaas-invocation-type"] = "Event"
    r = _request(args, "POST", f"/v1/functions/{args.name}/invoke", content=body,
                 headers=headers)
    if r.status_code >= 400:
        _check(r)
    if args.is_async:
        print(r.json()["request_id"])
        return
    if args.verbose:
        h = r.headers
        print(f"request {h.get('x-fastfaas-request-id')} start={h.get('x-fastfaas-start')}"
              f" handler={h.get('x-fastfaas-duration-us')}us"
              f" server={h.get('x-fastfaas-server-us')}us instance={h.get('x-fastfaas-instance')}",
              file=sys.stderr)
    kind = r.headers.get("x-fastfaas-function-error")
    if kind:
        err = r.json()
        trace = "".join(err.get("stackTrace") or [])
        raise _CliError(f"{args.name} failed ({kind}): {err.get('errorType')}:"
                        f" {err.get('errorMessage')}\n{trace}".rstrip())
    print(r.text)


def _list(args: argparse.Namespace) -> None:
    functions = _check(_request(args, "GET", "/v1/functions"))["functions"]
    if not functions:
        print("no functions deployed")
        return
    print(f"{'NAME':24} {'HANDLER':24} {'MEMORY':>7} {'TIMEOUT':>8}  ZYGOTE  INSTANCES")
    for f in functions:
        cfg, state = f["config"], f["state"]
        live = " ".join(f"{k}={v}" for k, v in state["instances"].items() if v)
        zygote = "up" if state["zygote"] and state["zygote"]["alive"] else "-"
        print(f"{f['name']:24} {cfg['handler']:24} {cfg['memory_mb']:>5}MB"
              f" {cfg['timeout_s']:>7g}s  {zygote:6}  {live or '-'}")


def _get(args: argparse.Namespace) -> None:
    _print_json(_check(_request(args, "GET", f"/v1/functions/{args.name}")))


def _delete(args: argparse.Namespace) -> None:
    _check(_request(args, "DELETE", f"/v1/functions/{args.name}"))
    print(f"deleted {args.name}")


def _logs(args: argparse.Namespace) -> None:
    import time

    body = _check(_request(args, "GET", f"/v1/functions/{args.name}/logs",
                           params={"limit": str(args.limit)}))
    for e in body["entries"]:
        when = time.strftime("%H:%M:%S", time.localtime(e["time"]))
        outcome = e["error"] or "ok"
        print(f"{when} {e['request_id']} {e['start']:9} {e['duration_us']:>8}us {outcome}")
        for line in e["log"].splitlines():
            print(f"    {line}")


def _sizing(args: argparse.Namespace) -> None:
    rec = _check(_request(args, "GET", f"/v1/functions/{args.name}/sizing",
                          params={"version": args.version}))
    print(f"{args.name}: {rec['change']}: {rec['current_mb']} MB -> {rec['memory_mb']} MB")
    print(f"  {rec['reason']}")
    if rec.get("faster_by", 1.0) > 1.0:
        print(f"  expected speed-up: {rec['faster_by']}x")
    print("  evidence: " + ", ".join(f"{k} {v:g}" for k, v in rec["evidence"].items()))


_TUNE_SIZES = (128, 256, 512, 1024, 1769, 3008)


def _tune(args: argparse.Namespace) -> None:
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        raise _CliError(f"--sizes {args.sizes!r}: memory sizes in MB, comma-separated"
                        ) from None
    try:
        raw = sys.stdin.buffer.read() if args.event == "-" else Path(args.event).read_bytes()
        event = json.loads(raw)
    except OSError as exc:
        raise _CliError(f"--event: {exc}") from None
    except ValueError as exc:
        raise _CliError(f"--event {args.event}: not valid JSON: {exc}") from None
    if args.png:
        _plotting()  # before the trials: a missing extra should not cost a run
    body = {"event": event, "sizes": sizes, "runs": args.runs, "version": args.version}
    report = _check(_request(args, "POST", f"/v1/functions/{args.name}/tune", json=body,
                             timeout=None))
    if args.json:
        _print_json(report)
    else:
        print(format_tune(args.name, report))
    if args.png:
        draw_tune(args.name, report, args.png)
        print(f"wrote {args.png}")


def format_tune(name: str, report: dict[str, Any]) -> str:
    """The tuning report as a table."""
    best = report["best"]
    lines = [f"{name}: {report['sizes'][0]['runs'] if report['sizes'] else 0} runs per size;"
             f" the fastest and slowest {report['trim']:.0%} dropped",
             f"{'MEMORY':>8} {'DURATION':>12} {'COST (MB-s)':>12}  ERRORS  BEST FOR"]
    for s in report["sizes"]:
        errs = ",".join(f"{k}:{v}" for k, v in s["errors"].items()) or "-"
        tags = ",".join(k for k, mb in best.items() if mb == s["memory_mb"]) or ""
        lines.append(f"{s['memory_mb']:>6}MB {s['duration_ms']:>10.3f}ms"
                     f" {s['cost_mb_s']:>12.4f}  {errs:6}  {tags}")
    if report.get("stopped"):
        lines.append(f"stopped: {report['stopped']}")
    if not best:
        lines.append("no size ran without errors: no best size")
    else:
        lines.append("best: " + ", ".join(f"{k} {mb} MB" for k, mb in best.items()))
    return "\n".join(lines)


def _plotting() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise _CliError("--png needs matplotlib: pip install 'fastfaas[bench]'") from None
    return plt


def draw_tune(name: str, report: dict[str, Any], path: str) -> None:
    """Duration and cost per size, Power Tuning's picture: two lines, two axes."""
    plt = _plotting()
    mbs = [s["memory_mb"] for s in report["sizes"]]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(mbs, [s["duration_ms"] for s in report["sizes"]], "o-", color="tab:blue")
    left.set_xlabel("memory (MB)")
    left.set_ylabel("duration (ms, trimmed mean)", color="tab:blue")
    left.set_xscale("log", base=2)
    left.set_xticks(mbs, [str(m) for m in mbs])
    right = left.twinx()
    right.plot(mbs, [s["cost_mb_s"] for s in report["sizes"]], "s--", color="tab:red")
    right.set_ylabel("cost (MB-s per invocation)", color="tab:red")
    best = ", ".join(f"{k} {mb} MB" for k, mb in report["best"].items())
    left.set_title(f"fastfaas tune {name}" + (f" (best: {best})" if best else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _status(args: argparse.Namespace) -> None:
    _print_json(_check(_request(args, "GET", "/healthz")))


if __name__ == "__main__":
    main()
