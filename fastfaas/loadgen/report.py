"""What a load run reports: a summary table, a JSON file with raw histograms, a PNG."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import msgspec

from fastfaas.loadgen.engine import BACKLOG_PER_CONNECTION, Plan
from fastfaas.loadgen.hist import Histogram
from fastfaas.loadgen.stats import Stats

PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)
START_ORDER: Final = ("warm", "prewarmed", "forked", "claimed", "cold", "-")


# Above this send-lag p99 the generator, not the server, is what the latencies show.
LAG_WARNING_MS: Final = 1.0


def summary(stats: Stats) -> dict[str, Any]:
    """Throughput, percentiles per start kind (ms), errors, client vs server time.

    Throughput is answers per second over the real span (first measured send
    to last completion); None when nothing was sent (e.g. the cold scenario,
    one call at a time). The open loop also reports its offered rate
    (arrivals in the window / its length).
    """
    kinds = sorted(stats.latency, key=lambda k: (START_ORDER.index(k)
                                                  if k in START_ORDER else 99, k))
    throughput = stats.throughput
    span = stats.span_s
    out: dict[str, Any] = {
        "requests": stats.completed,
        "sent": stats.sent,
        "answered": stats.answered,
        "ok": stats.ok,
        "failed": stats.failed,
        "span_s": round(span, 3),
        "throughput_rps": None if throughput is None else round(throughput, 1),
        "ok_rps": round(stats.ok / span, 1) if throughput is not None else None,
        "errors": dict(stats.errors),
        "connect_errors": stats.connect_errors,
        "reconnects": stats.reconnects,
        "latency_ms": {},
    }
    if stats.mode == "open":
        out["offered_rps"] = round(stats.sent / stats.window_s, 1) if stats.window_s else None
        out["backlog_limit"] = stats.backlog_limit
    for kind in [*kinds, "all"]:
        hist = stats.all_latency() if kind == "all" else stats.latency[kind]
        if hist.total == 0:
            continue
        pcts = hist.percentiles(PERCENTILES)
        out["latency_ms"][kind] = {
            "count": hist.total,
            **{f"p{p:g}": pcts[p] / 1000 for p in PERCENTILES},
            "max": hist.max / 1000,
            "mean": round(hist.mean / 1000, 4),
        }
    for name, hist in (("handler_ms", stats.duration), ("server_ms", stats.server),
                       ("failed_latency_ms", stats.failed_latency),
                       ("send_lag_ms", stats.send_lag)):
        if hist.total:
            pcts = hist.percentiles((50.0, 99.0))
            out[name] = {"p50": pcts[50.0] / 1000, "p99": pcts[99.0] / 1000,
                         "max": hist.max / 1000, "count": hist.total}
    if "send_lag_ms" in out:
        out["generator_behind"] = out["send_lag_ms"]["p99"] > LAG_WARNING_MS
    return out


def table(summ: dict[str, Any], title: str = "") -> str:
    """The summary as an aligned text table, with its warnings."""
    lines = [title] if title else []
    head = f"requests {summ['requests']:,}  ok {summ['ok']:,}"
    if summ["failed"]:
        head += f"  failed {summ['failed']:,}"
    if summ["throughput_rps"] is not None:
        head += (f"  throughput {summ['throughput_rps']:,.1f}/s"
                 f" (answers over {summ['span_s']:.2f} s)")
    lines.append(head)
    if summ.get("offered_rps") is not None:
        achieved = summ["throughput_rps"] or 0.0
        lines.append(f"open loop: offered {summ['offered_rps']:,.1f}/s"
                     f" ({summ['sent']:,} arrivals), achieved {achieved:,.1f}/s")
    head = f"{'start':10} {'count':>9} " + " ".join(
        f"{f'p{p:g}':>9}" for p in PERCENTILES) + f" {'max':>9}   (ms)"
    lines.append(head)
    for kind, row in summ["latency_ms"].items():
        lines.append(f"{kind:10} {row['count']:>9,} " + " ".join(
            f"{row[f'p{p:g}']:>9.3f}" for p in PERCENTILES) + f" {row['max']:>9.3f}")
    if "server_ms" in summ:
        client = summ["latency_ms"].get("all", {})
        lines.append(
            f"client p50 {client.get('p50', 0):.3f} ms; server p50 {summ['server_ms']['p50']:.3f}"
            f" ms" + (f", handler p50 {summ['handler_ms']['p50']:.3f} ms"
                      if "handler_ms" in summ else ""))
    elif "handler_ms" in summ:
        lines.append(f"handler p50 {summ['handler_ms']['p50']:.3f} ms")
    if "send_lag_ms" in summ:
        lag = summ["send_lag_ms"]
        lines.append(f"send lag (the generator's own delay) p50 {lag['p50']:.3f} ms,"
                     f" p99 {lag['p99']:.3f} ms")
        if summ["generator_behind"]:
            lines.append(
                f"WARNING: the generator fell behind: its send lag p99 is {lag['p99']:.2f} ms"
                f" (> {LAG_WARNING_MS:g} ms), and the latencies include that delay; lower"
                " --rate, or add --workers")
    if summ["errors"]:
        line = "errors: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summ["errors"].items()))
        if "failed_latency_ms" in summ:
            failed = summ["failed_latency_ms"]
            line += (f" (unanswered after p50 {failed['p50']:.1f} ms, max {failed['max']:.1f} ms:"
                     " lower bounds)")
        lines.append(line)
    overload = summ["errors"].get("overload", 0)
    if overload:
        lines.append(
            f"overload: {overload:,} arrivals found {summ['backlog_limit']:,} already waiting"
            f" for a connection ({BACKLOG_PER_CONNECTION} per connection) and were counted as"
            " errors, not queued;"
            " raise --connections or lower --rate")
    if summ["connect_errors"]:
        lines.append(f"connect errors: {summ['connect_errors']:,} (failed connects, not"
                     " requests)")
    if summ["reconnects"]:
        lines.append(f"reconnects: {summ['reconnects']:,} (requests sent again on a new"
                     " connection: the server had closed the kept-alive one)")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=cwd, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def document(name: str, runs: dict[str, tuple[Plan | None, Stats]],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: plan, machine, summary and raw histograms of each run."""
    return {
        "scenario": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "runs": {
            label: {
                "plan": None if plan is None else msgspec.to_builtins(plan),
                "summary": summary(stats),
                "raw": stats.to_dict(),
            } for label, (plan, stats) in runs.items()
        },
        **(extra or {}),
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Compact JSON: the raw histograms of a long run make an indented file several
    MB (`python -m json.tool FILE` reads it indented)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(doc) + b"\n")


def plot(runs: dict[str, Stats], path: Path) -> bool:
    """A PNG: latency CDF per start kind (per run), throughput and p50/p99 over time.

    Returns False (and says why on stderr) when matplotlib is not installed:
    plotting is the optional extra `fastfaas[bench]`.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("fastfaas bench: no plot (pip install 'fastfaas[bench]' for matplotlib)",
              file=sys.stderr)
        return False
    fig, (ax_cdf, ax_rate) = plt.subplots(1, 2, figsize=(13, 5))
    for label, stats in runs.items():
        for kind, hist in stats.latency.items():
            points = hist.cdf()
            if not points:
                continue
            xs = [max(v, 1) / 1000 for v, _ in points]
            ys = [f for _, f in points]
            name = f"{label}: {kind}" if len(runs) > 1 else kind
            ax_cdf.step(xs, ys, where="post", label=f"{name} (n={hist.total:,})")
    ax_cdf.set_xscale("log")
    ax_cdf.set_xlabel("latency (ms, log)")
    ax_cdf.set_ylabel("fraction of requests")
    ax_cdf.set_title("latency CDF by start kind")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=7)
    ax_lat = ax_rate.twinx()
    for label, stats in runs.items():
        if not stats.timeline_count:
            continue
        # Bucket k holds what completed in [k, k+1): drawn as a step over it.
        edges = list(range(len(stats.timeline_count) + 1))

        def steps(values: list[Any]) -> list[Any]:
            return [*values, values[-1]]

        ax_rate.step(edges, steps(stats.timeline_count), where="post",
                     label=f"{label} answers/s")
        if any(stats.timeline_failed):
            ax_rate.step(edges, steps(stats.timeline_failed), where="post",
                         label=f"{label} failed/s")
        p50 = [_pct(h, 50) for h in stats.timeline_latency]
        p99 = [_pct(h, 99) for h in stats.timeline_latency]
        ax_lat.step(edges, steps(p50), where="post", linestyle="--", label=f"{label} p50 ms")
        ax_lat.step(edges, steps(p99), where="post", linestyle=":", label=f"{label} p99 ms")
    ax_rate.set_xlabel("second of the measurement, by completion time")
    ax_rate.set_ylabel("requests completed per second")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_yscale("log")
    ax_rate.set_title("throughput and latency over time")
    lines = ax_rate.get_legend_handles_labels()
    more = ax_lat.get_legend_handles_labels()
    if lines[0] or more[0]:
        ax_rate.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
    else:  # e.g. the cold scenario: calls one at a time, no load to follow over time
        ax_rate.text(0.5, 0.5, "no load run: no timeline", ha="center", va="center",
                     transform=ax_rate.transAxes)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pct(hist: Histogram, p: float) -> float:
    return max(hist.percentile(p), 1) / 1000 if hist.total else float("nan")
