"""bench/starts.py's trivial handler: echo the event, no imports."""


def handler(event, context=None):
    return {"echo": event}
