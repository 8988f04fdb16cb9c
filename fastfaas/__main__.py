"""fastfaas's command line.

    python -m fastfaas demo [--examples DIR]   deploy the examples, invoke them, show start kinds

The HTTP server (`fastfaas serve`) is issue #3; until it lands, `make serve`
runs this demo of the embedded Runtime.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def demo(examples: Path, data_dir: Path) -> None:
    from fastfaas.runtime.runtime import Runtime

    async with Runtime(data_dir=data_dir) as rt:
        print(f"fastfaas: {rt.statistics()['cgroups']['reason']}")
        names = sorted(p.name for p in examples.iterdir() if (p / "app.py").exists())
        for name in names:
            await rt.deploy(name, source=examples / name, handler="app.handler")
            print(f"deployed {name}")
        for name in names:
            for i in range(3):
                t0 = time.perf_counter()
                r = await rt.invoke(name, {"name": f"call {i}"})
                ms = (time.perf_counter() - t0) * 1e3
                print(f"  {name:8} {r.start:9} {ms:7.3f} ms  {r.payload.decode()}")
        stats = rt.statistics()
        print("functions:", {n: s["instances"] for n, s in stats["functions"].items()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fastfaas")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="deploy the examples and invoke them (embedded Runtime)")
    d.add_argument("--examples", type=Path, default=EXAMPLES)
    d.add_argument("--data-dir", type=Path, default=Path(".fastfaas"))
    args = parser.parse_args(argv)
    if args.command == "demo":
        if not args.examples.is_dir():
            sys.exit(f"fastfaas: no examples directory at {args.examples}")
        trio.run(demo, args.examples, args.data_dir)


if __name__ == "__main__":
    main()
