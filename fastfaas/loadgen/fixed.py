"""A server that returns a fixed response: the target for validating the generator.

    python -m fastfaas.loadgen.fixed [--port 0]

It is fastfaas's own HTTP front end (`fastfaas.http.server`) with an app that
answers `{"ok":true}` to anything, so what is measured is the generator and
the HTTP path, not a function. Prints `listening on http://127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import signal

import trio

from fastfaas.http.protocol import Request
from fastfaas.http.server import HttpServer, Response

BODY = b'{"ok":true}'


async def _app(request: Request) -> Response:
    return Response(200, BODY)


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    server = HttpServer(_app, lambda method, path: 1 << 20)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            bound = listeners[0].socket.getsockname()[1]
            print(f"listening on http://127.0.0.1:{bound}", flush=True)
            async for _ in signals:
                server.close()
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    trio.run(main, parser.parse_args().port)
