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

from fastfaas.loadgen.engine import Plan, Stats
from fastfaas.loadgen.hist import Histogram

PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)
START_ORDER: Final = ("warm", "prewarmed", "forked", "claimed", "cold", "-")


def summary(stats: Stats) -> dict[str, Any]:
    """Throughput, percentiles per start kind (ms), errors, client vs server time."""
    elapsed = stats.elapsed_s or 1.0
    kinds = sorted(stats.latency, key=lambda k: (START_ORDER.index(k)
                                                  if k in START_ORDER else 99, k))
    out: dict[str, Any] = {
        "requests": stats.completed,
        "ok": stats.ok,
        "throughput_rps": round(stats.completed / elapsed, 1),
        "ok_rps": round(stats.ok / elapsed, 1),
        "errors": dict(stats.errors),
        "latency_ms": {},
    }
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
    for name, hist in (("handler_ms", stats.duration), ("server_ms", stats.server)):
        if hist.total:
            pcts = hist.percentiles((50.0, 99.0))
            out[name] = {"p50": pcts[50.0] / 1000, "p99": pcts[99.0] / 1000,
                         "count": hist.total}
    return out


def table(summ: dict[str, Any], title: str = "") -> str:
    """The summary as an aligned text table."""
    lines = [title] if title else []
    lines.append(f"requests {summ['requests']:,}  ok {summ['ok']:,}  "
                 f"throughput {summ['throughput_rps']:,.1f}/s")
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
    if summ["errors"]:
        lines.append("errors: " + ", ".join(f"{k} {v:,}" for k, v in sorted(
            summ["errors"].items())))
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


def document(name: str, runs: dict[str, tuple[Plan, Stats]],
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON report: plan, machine, summary and raw histograms of each run."""
    return {
        "scenario": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "runs": {
            label: {
                "plan": msgspec.to_builtins(plan),
                "summary": summary(stats),
                "raw": stats.to_dict(),
            } for label, (plan, stats) in runs.items()
        },
        **(extra or {}),
    }


def write_json(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.format(msgspec.json.encode(doc), indent=1))


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
        seconds = list(range(len(stats.timeline_count)))
        ax_rate.plot(seconds, stats.timeline_count, label=f"{label} req/s")
        p50 = [_pct(h, 50) for h in stats.timeline_latency]
        p99 = [_pct(h, 99) for h in stats.timeline_latency]
        ax_lat.plot(seconds, p50, linestyle="--", label=f"{label} p50 ms")
        ax_lat.plot(seconds, p99, linestyle=":", label=f"{label} p99 ms")
    ax_rate.set_xlabel("second of the run")
    ax_rate.set_ylabel("requests completed per second")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.set_yscale("log")
    ax_rate.set_title("throughput and latency over time")
    lines = ax_rate.get_legend_handles_labels()
    more = ax_lat.get_legend_handles_labels()
    ax_rate.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pct(hist: Histogram, p: float) -> float:
    return max(hist.percentile(p), 1) / 1000 if hist.total else float("nan")
