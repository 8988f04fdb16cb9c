from __future__ import annotations

import fastfaas


async def test_invoke_returns_handler_result(runtime: fastfaas.Runtime, make_function) -> None:
    code = make_function(app="def handler(event, context):\n    return {'echo': event}\n")
    await runtime.deploy("echo", source=code, handler="app.handler")
    result = await runtime.invoke("echo", {"x": 1})
    assert result.error is None
    assert result.value() == {"echo": {"x": 1}}
    assert result.start in ("claimed", "cold")
