"""bench/http_warm.py's trivial handler, served by fastfaas and by uvicorn alike."""


def handler(event, context):
    return {"ok": True}
