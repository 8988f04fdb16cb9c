#!/usr/bin/env python3
"""The cost of the strict isolation level over standard, per start kind.

    .venv/bin/python bench/isolation.py [--quick] [--out PATH]

Two Runtimes in one process, one at `standard` and one at `strict`, the same
trivial function deployed in each; samples of the two are taken alternately
(round robin, one invocation each in turn), so that both see the same
machine. Start kinds are forced as bench/starts.py forces them (its Series,
settle and drain steps): warm (back to back), forked (every idle instance
retired before each sample), claimed (a redeploy, then the warming pool
refilled). Prints one JSON document: p50/p99 per level and kind, the p50
difference strict - standard, and the issue's target (forked: <= +0.2 ms at
p50) as a boolean.

Needs root (strict is unavailable otherwise).
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path
from typing import Any

import _common
import starts
from _common import log

from fastfaas.runtime.runtime import Runtime

LEVELS = ("standard", "strict")
KINDS = ("warm", "forked", "claimed")
FULL = {"warm": 2000, "forked": 1000, "claimed": 100, "warmup": 20, "warmup_slow": 3}
QUICK = {"warm": 100, "forked": 30, "claimed": 5, "warmup": 5, "warmup_slow": 1}
FORKED_EXTRA_MAX_MS = 0.2


async def run(counts: dict[str, int], data_dir: Path) -> dict[str, Any]:
    cfg = {"warm_pool_size": 2, "spares": 1, "cgroups": "require"}
    name = "bench-isolation"
    async with (
        Runtime(data_dir / "standard", isolation="standard", **cfg) as std,  # type: ignore[arg-type]
        Runtime(data_dir / "strict", isolation="strict", **cfg) as strict,  # type: ignore[arg-type]
    ):
        rts = {"standard": std, "strict": strict}
        for rt in rts.values():
            await starts.deploy(rt, name, "trivial")
            await rt.invoke(name, starts.EVENT)  # the claim, outside the figures
            await starts.settle(rt)
        out: dict[str, Any] = {}

        def forked_prep(rt: Runtime) -> Any:
            async def prep() -> None:
                await starts.settle(rt)
                rt._drain_idle(rt._functions[name])
                await starts.settle(rt)
            return prep

        def claimed_prep(rt: Runtime) -> Any:
            async def prep() -> None:
                await starts.deploy(rt, name, "trivial")
                await starts.settle(rt)
            return prep

        preps = {"warm": lambda rt: None, "forked": forked_prep, "claimed": claimed_prep}
        for kind in KINDS:
            warmup = counts["warmup_slow"] if kind == "claimed" else counts["warmup"]
            series = [starts.Series(rt, name, kind, counts[kind], warmup, preps[kind](rt))
                      for rt in rts.values()]
            results = await starts.measure(*series)
            out[kind] = dict(zip(LEVELS, results, strict=True))
            for level in LEVELS:
                log(f"{kind} {level}: {starts._brief(out[kind][level])}")
        out["isolation"] = {level: rt.statistics()["isolation"] for level, rt in rts.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    args = _common.quick_out_args(__doc__, argv)
    counts = QUICK if args.quick else FULL
    began = datetime.datetime.now(datetime.UTC)
    figures = _common.run_in_tempdir("bench/isolation.py", run, counts)
    if figures is None:
        return 1
    p50 = {kind: (figures[kind]["standard"]["p50_ms"], figures[kind]["strict"]["p50_ms"])
           for kind in KINDS}
    extra = {kind: round(b - a, 4) for kind, (a, b) in p50.items()}
    ratio = {kind: round(b / a, 3) for kind, (a, b) in p50.items()}
    report = {
        "benchmark": "bench/isolation.py",
        "date_utc": began.isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _common.machine_info(),
        "config": {"memory_mb": starts.MEMORY_MB, "handler": "trivial_fn.handler",
                   "samples": counts, "order": "standard and strict alternate, one call each",
                   "percentiles": "nearest rank"},
        "starts": {kind: {level: figures[kind][level] for level in LEVELS} for kind in KINDS},
        "strict_minus_standard_p50_ms": extra,
        "strict_over_standard_p50": ratio,
        "targets": {"forked_strict_extra_p50_ms": {
            "value": extra["forked"], "limit": FORKED_EXTRA_MAX_MS,
            "met": extra["forked"] <= FORKED_EXTRA_MAX_MS}},
        "isolation": figures["isolation"],
        "elapsed_s": _common.elapsed_s(),
    }
    return _common.emit(report, args.out)


if __name__ == "__main__":
    sys.exit(main())
