"""Prometheus metrics (fastfaas/http/metrics.py), read back with a line-by-line parser."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from fastfaas.http.metrics import BUCKETS, Metrics

WEIRD = 'we"ird\\fn\nname'  # a quote, a backslash and a newline to escape

# --- a small parser for the text format (version 0.0.4) ------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclasses.dataclass
class Family:
    kind: str = ""
    help: str = ""
    samples: list[tuple[str, dict[str, str], float]] = dataclasses.field(default_factory=list)


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad labels at {text[pos:]!r}"
        name, value = m[1], re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e[0]], m[2])
        assert name not in out, f"label {name} repeated"
        out[name] = value
        pos = m.end()
    return out


def _family_of(sample: str, families: dict[str, Family]) -> str:
    if sample in families:
        return sample
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample.removesuffix(suffix)
        if base != sample and families.get(base, Family()).kind == "histogram":
            return base
    raise AssertionError(f"sample {sample} has no # TYPE before it")


def parse(text: bytes) -> dict[str, Family]:
    """Families by name; asserts the format's rules as it goes."""
    decoded = text.decode("utf-8")
    assert decoded.endswith("\n")
    families: dict[str, Family] = {}
    done: set[str] = set()  # a family's lines are contiguous
    current = ""
    for line in decoded.splitlines():
        assert line, "empty line"
        if line.startswith("#"):
            _, keyword, name, rest = line.split(" ", 3)
            assert re.fullmatch(_NAME, name)
            if name != current:
                assert name not in done, f"{name} appears twice"
                done.add(current)
                current = name
            family = families.setdefault(name, Family())
            if keyword == "HELP":
                assert not family.help and not family.samples
                family.help = rest
            else:
                assert keyword == "TYPE"
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped")
                assert not family.kind and not family.samples, f"{name} TYPE after samples"
                family.kind = rest
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name = _family_of(m[1], families)
        assert name == current, f"{m[1]} outside its family's block"
        families[name].samples.append((m[1], _labels(m[2] or ""), float(m[3])))
    for name, family in families.items():
        assert family.help and family.kind, f"{name} lacks HELP or TYPE"
    return families


def value(families: dict[str, Family], sample: str, **labels: str) -> float:
    base = _family_of(sample, families)
    found = [v for s, ls, v in families[base].samples if s == sample and ls == labels]
    assert len(found) == 1, f"{sample}{labels}: {len(found)} samples"
    return found[0]


def histogram(families: dict[str, Family], function: str) -> list[tuple[float, float]]:
    """(le, cumulative count) in the order rendered, +Inf as math.inf."""
    return [(float(ls["le"]), v)
            for s, ls, v in families["fastfaas_invocation_duration_seconds"].samples
            if s.endswith("_bucket") and ls["function"] == function]


# --- stats shaped like Runtime.statistics() ------------------------------------


def fv_state(zygote_alive: bool | None = True, **instances: int) -> dict[str, Any]:
    """Like Runtime._fv_state: zygote None when there is no zygote process."""
    return {
        "generation": 1,
        "zygote": None if zygote_alive is None else {
            "id": "z1", "pid": 4242, "alive": zygote_alive},
        "instances": {"spawning": 0, "busy": 0, "draining": 0, "warm": 0, "spare": 0}
        | instances,
        "in_flight": instances.get("busy", 0),
        "retired": 0,
    }


def statistics(functions: dict[str, dict[str, Any]] | None = None,
               draining: list[dict[str, Any]] | None = None,
               ready: int = 0) -> dict[str, Any]:
    return {
        "cgroups": {"enabled": False, "mode": "auto", "reason": "not writable",
                    "subtree": None, "pool": 0},
        "template": {"pid": 100, "running": True},
        "warming_pool": {"ready": ready, "forking": 1, "target": 2},
        "zygotes": 3,
        "functions": functions or {},
        "draining": draining or [],
        "counters": {"cold_starts": 5, "escalations": 2},
    }


# --- tests -----------------------------------------------------------------------


def test_empty_render_is_valid_and_has_every_family() -> None:
    families = parse(Metrics().render(statistics(), queued=0))
    assert {name: f.kind for name, f in families.items()} == {
        "fastfaas_invocations_total": "counter",
        "fastfaas_invocation_duration_seconds": "histogram",
        "fastfaas_instances": "gauge",
        "fastfaas_zygotes": "gauge",
        "fastfaas_async_queued": "gauge",
        "fastfaas_http_errors_total": "counter",
        "fastfaas_function_frequent": "gauge",
        "fastfaas_spare_target": "gauge",
        "fastfaas_warming_pool_target": "gauge",
        "fastfaas_memory_bytes": "gauge",
        "fastfaas_capacity_events_total": "counter",
        "fastfaas_sizing_events_total": "counter",
        "fastfaas_nowait_calls_total": "counter",
        "fastfaas_lane_calls_total": "counter",
    }
    assert value(families, "fastfaas_async_queued") == 0
    assert value(families, "fastfaas_nowait_calls_total") == 0
    assert value(families, "fastfaas_lane_calls_total", end="finished") == 0
    assert value(families, "fastfaas_lane_calls_total", end="left") == 0
    assert value(families, "fastfaas_sizing_events_total", event="size_changes") == 0
    assert value(families, "fastfaas_sizing_events_total", event="escalations") == 2
    assert value(families, "fastfaas_capacity_events_total", event="evicted_instances") == 0
    for state in ("function", "generic", "draining"):
        assert value(families, "fastfaas_zygotes", state=state) == 0


def test_invocations_are_counted_by_function_start_and_outcome() -> None:
    metrics = Metrics()
    for start, outcome in [("warm", "success"), ("warm", "success"), ("cold", "success"),
                           ("warm", "Unhandled"), ("none", "FunctionNotFound")]:
        metrics.record("f", start, outcome, 0.001)
    metrics.record(WEIRD, "cold", 'odd "kind"', 0.5)
    families = parse(metrics.render(statistics(), queued=0))
    total = "fastfaas_invocations_total"
    assert value(families, total, function="f", start="warm", outcome="success") == 2
    assert value(families, total, function="f", start="cold", outcome="success") == 1
    assert value(families, total, function="f", start="warm", outcome="Unhandled") == 1
    assert value(families, total, function="f", start="none", outcome="FunctionNotFound") == 1
    assert value(families, total, function=WEIRD, start="cold", outcome='odd "kind"') == 1
    assert len(families[total].samples) == 5


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.record(WEIRD, "warm", "success", 0.01)
    text = metrics.render(statistics(functions={WEIRD: fv_state(busy=1)}), queued=0)
    assert b'function="we\\"ird\\\\fn\\nname"' in text
    families = parse(text)  # one line per sample: the newline did not split one
    assert value(families, "fastfaas_invocation_duration_seconds_count", function=WEIRD) == 1
    assert value(families, "fastfaas_instances", function=WEIRD, state="busy") == 1


def test_histogram_buckets_are_cumulative_and_end_at_the_count() -> None:
    metrics = Metrics()
    observed = [0.00005, 0.0001, 0.0003, 0.004, 0.004, 0.2, 1.0, 7.5, 299.0, 1000.0]
    for seconds in observed:
        metrics.record("f", "warm", "success", seconds)
    metrics.record("g", "cold", "success", 0.02)
    families = parse(metrics.render(statistics(), queued=0))
    buckets = histogram(families, "f")
    bounds = [le for le, _ in buckets]
    assert bounds == [*BUCKETS, math.inf]
    assert bounds == sorted(bounds)
    counts = [n for _, n in buckets]
    assert counts == sorted(counts)  # non-decreasing
    for le, n in buckets:  # `le` means less than or equal
        assert n == sum(1 for s in observed if s <= le), le
    count = value(families, "fastfaas_invocation_duration_seconds_count", function="f")
    assert counts[-1] == count == len(observed)
    total = value(families, "fastfaas_invocation_duration_seconds_sum", function="f")
    assert total == pytest.approx(sum(observed), abs=1e-5)
    # Another function has its own histogram.
    assert histogram(families, "g")[-1] == (math.inf, 1)
    assert value(families, "fastfaas_invocation_duration_seconds_count", function="g") == 1


def test_gauges_come_from_the_runtime_statistics() -> None:
    stats = statistics(
        functions={
            "a": fv_state(True, busy=2, warm=3, spare=1),
            "b": fv_state(False, spawning=1),  # its zygote died
            "c": fv_state(None),  # no zygote yet
        },
        draining=[fv_state(True, draining=2) | {"name": "a"},
                  fv_state(False) | {"name": "b"},
                  fv_state(None) | {"name": "c"}],
        ready=4,
    )
    metrics = Metrics()
    metrics.http_errors[404] += 3
    metrics.http_errors[400] += 1
    families = parse(metrics.render(stats, queued=7))
    instances = {(ls["function"], ls["state"]): v
                 for _, ls, v in families["fastfaas_instances"].samples}
    assert instances == {
        (fn, state): stats["functions"][fn]["instances"][state]
        for fn in ("a", "b", "c") for state in ("spawning", "busy", "draining", "warm", "spare")
    }
    assert instances["a", "warm"] == 3
    assert value(families, "fastfaas_zygotes", state="function") == 1  # only a's is alive
    assert value(families, "fastfaas_zygotes", state="generic") == 4
    assert value(families, "fastfaas_zygotes", state="draining") == 1
    assert value(families, "fastfaas_async_queued") == 7
    assert value(families, "fastfaas_http_errors_total", status="404") == 3
    assert value(families, "fastfaas_http_errors_total", status="400") == 1


def test_the_parser_rejects_what_prometheus_would() -> None:
    # The checks above are only as good as this parser: it must catch these.
    good = b"# HELP m h\n# TYPE m gauge\nm{a=\"x\"} 1\n"
    parse(good)
    for bad in [
        b"# HELP m h\n# TYPE m gauge\nm{a=\"x\"y\"} 1\n",  # unescaped quote
        b"# HELP m h\n# TYPE m gauge\nm{a=\"x\n\"} 1\n",  # raw newline
        b"m 1\n",  # no TYPE
        b"# HELP m h\n# TYPE m gauge\nm 1\n# HELP n h\n# TYPE n gauge\nn 1\nm 2\n",  # split
        b"# HELP m h\n# TYPE m gauge\nm 1",  # no final newline
    ]:
        with pytest.raises(AssertionError):
            parse(bad)
