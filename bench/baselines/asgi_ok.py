"""bench/http_warm.py's uvicorn baseline: the same handler as a raw ASGI app.

What a user would run instead of fastfaas, with no isolation: read the body,
decode the JSON event, call `app.handler` (bench/functions/ok/app.py, on
PYTHONPATH) in the server process, answer with its result as JSON.
"""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from app import handler

Message = dict[str, Any]
_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Message, receive: Callable[[], Awaitable[Message]],
              send: Callable[[Message], Awaitable[None]]) -> None:
    if scope["type"] != "http":  # run with --lifespan off: only HTTP scopes arrive
        raise RuntimeError(f"unsupported ASGI scope {scope['type']!r}")
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    payload = json.dumps(handler(json.loads(body) if body else {}, None)).encode()
    headers = [*_HEADERS, (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
