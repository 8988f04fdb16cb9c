"""Invocation metrics, rendered in the Prometheus text format (version 0.0.4)."""

from __future__ import annotations

import bisect
import collections
from typing import Any, Final

# Seconds: from a warm start's ~0.1 ms to a long handler.
BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds


class Metrics:
    """Counters and histograms by function; gauges come from the runtime when rendered."""

    def __init__(self) -> None:
        self.invocations: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.latency: dict[str, Histogram] = {}
        self.http_errors: collections.Counter[int] = collections.Counter()

    def record(self, function: str, start: str, outcome: str, seconds: float) -> None:
        """One invocation: start kind, outcome ("success", a function error kind, or a
        platform error code) and the server's whole time for it."""
        self.invocations[function, start, outcome] += 1
        hist = self.latency.get(function)
        if hist is None:
            hist = self.latency[function] = Histogram()
        hist.observe(seconds)

    def render(self, stats: dict[str, Any], queued: int,
               sizes: dict[str, Any] | None = None) -> bytes:
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")

        family("fastfaas_invocations_total", "counter",
               "Invocations by function, start kind and outcome.")
        for (fn, start, outcome), n in sorted(self.invocations.items()):
            out.append(f'fastfaas_invocations_total{{function="{_esc(fn)}",start="{start}",'
                       f'outcome="{_esc(outcome)}"}} {n}')
        family("fastfaas_invocation_duration_seconds", "histogram",
               "The server's whole time per invocation, by function.")
        for fn, hist in sorted(self.latency.items()):
            label = f'function="{_esc(fn)}"'
            cumulative = 0
            for bound, count in zip(BUCKETS, hist.counts, strict=False):
                cumulative += count
                out.append(f'fastfaas_invocation_duration_seconds_bucket{{{label},'
                           f'le="{bound:g}"}} {cumulative}')
            cumulative += hist.counts[-1]
            out.append(f'fastfaas_invocation_duration_seconds_bucket{{{label},le="+Inf"}} '
                       f"{cumulative}")
            out.append(f"fastfaas_invocation_duration_seconds_sum{{{label}}} {hist.sum:.6f}")
            out.append(f"fastfaas_invocation_duration_seconds_count{{{label}}} {cumulative}")
        family("fastfaas_instances", "gauge", "Instances by function and state.")
        for fn, state in sorted(stats["functions"].items()):
            for kind, n in sorted(state["instances"].items()):
                out.append(f'fastfaas_instances{{function="{_esc(fn)}",state="{kind}"}} {n}')
        family("fastfaas_zygotes", "gauge",
               "Zygotes by state: function (claimed), generic (warming pool), draining.")
        functions = sum(1 for s in stats["functions"].values()
                        if s["zygote"] is not None and s["zygote"]["alive"])
        draining = sum(1 for s in stats["draining"]
                       if s["zygote"] is not None and s["zygote"]["alive"])
        out.append(f'fastfaas_zygotes{{state="function"}} {functions}')
        out.append(f'fastfaas_zygotes{{state="generic"}} {stats["warming_pool"]["ready"]}')
        out.append(f'fastfaas_zygotes{{state="draining"}} {draining}')
        family("fastfaas_function_frequent", "gauge",
               "1 if the function is routed as frequent, 0 if infrequent.")
        for fn, state in sorted(stats["functions"].items()):
            out.append(f'fastfaas_function_frequent{{function="{_esc(fn)}"}} '
                       f'{int(state.get("class") == "frequent")}')
        family("fastfaas_spare_target", "gauge", "Spares each function keeps, now.")
        for fn, state in sorted(stats["functions"].items()):
            out.append(f'fastfaas_spare_target{{function="{_esc(fn)}"}} '
                       f'{state.get("spare_target", 0)}')
        family("fastfaas_warming_pool_target", "gauge", "The warming pool's target size.")
        out.append(f'fastfaas_warming_pool_target {stats["warming_pool"]["target"]}')
        memory = stats.get("memory", {})
        family("fastfaas_memory_bytes", "gauge",
               "Memory of zygotes and instances, measured, and the budget.")
        out.append(f'fastfaas_memory_bytes{{kind="used"}} {memory.get("used_bytes", 0)}')
        out.append(f'fastfaas_memory_bytes{{kind="budget"}} {memory.get("budget_bytes", 0)}')
        family("fastfaas_capacity_events_total", "counter",
               "Capacity decisions: evictions, refusals, throttles, queued starts, affinity.")
        for key in ("evicted_instances", "evicted_spares", "memory_refusals", "throttled",
                    "queued_starts", "affinity_hits", "affinity_fallbacks",
                    "generic_zygotes_stopped", "spares_skipped_for_memory"):
            out.append(f'fastfaas_capacity_events_total{{event="{key}"}} '
                       f'{stats.get("counters", {}).get(key, 0)}')
        family("fastfaas_nowait_calls_total", "counter",
               "Invocations handed to an idle instance and answered without a task"
               " (the HTTP front end's fast path).")
        nowait = stats.get("counters", {}).get("nowait_calls", 0)
        out.append(f"fastfaas_nowait_calls_total {nowait}")
        family("fastfaas_lane_calls_total", "counter",
               "Warm invocations the compiled lane (fastfaas._lane) started, by how they"
               " ended: finished there, or left for the Python path (an error, a timeout...).")
        for end in ("finished", "left"):
            out.append(f'fastfaas_lane_calls_total{{end="{end}"}} '
                       f'{stats.get("counters", {}).get("lane_" + end, 0)}')
        family("fastfaas_async_queued", "gauge", "Asynchronous invocations waiting to run.")
        out.append(f"fastfaas_async_queued {queued}")
        family("fastfaas_http_errors_total", "counter", "Platform error responses by status.")
        for status, n in sorted(self.http_errors.items()):
            out.append(f'fastfaas_http_errors_total{{status="{status}"}} {n}')
        family("fastfaas_sizing_events_total", "counter",
               "Sizing: sizes auto_size applied, same-request escalations, tuning runs.")
        for key in ("size_changes", "escalations", "tune_runs"):
            out.append(f'fastfaas_sizing_events_total{{event="{key}"}} '
                       f'{stats.get("counters", {}).get(key, 0)}')
        if sizes:
            family("fastfaas_recommended_memory_mb", "gauge",
                   "The memory size observed usage recommends, by function"
                   " (GET /v1/functions/NAME/sizing says why).")
            for fn, rec in sorted(sizes.items()):
                out.append(f'fastfaas_recommended_memory_mb{{function="{_esc(fn)}",'
                           f'change="{_esc(rec.change)}"}} {rec.memory_mb}')
        return ("\n".join(out) + "\n").encode()


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
