"""The forkserver baseline's per-invocation work, preloaded by the forkserver.

bench/starts.py starts one multiprocessing Process per invocation through the
forkserver context with `run` as its target: the child imports the handler
(already imported by the forkserver: it is preloaded), runs it on the event
and sends the JSON result over a Pipe.
"""

from __future__ import annotations

import importlib
import json
import sys
from multiprocessing.connection import Connection


def run(conn: Connection, module: str, event: bytes) -> None:
    preloaded = module in sys.modules
    handler = importlib.import_module(module).handler
    result = handler(json.loads(event), None)
    conn.send_bytes(json.dumps({"result": result, "preloaded": preloaded}).encode())
    conn.close()
