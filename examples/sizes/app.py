"""A function with a dependency: `humanize` comes from requirements.txt, installed at deploy."""

import humanize


def handler(event, context):
    size = int((event or {}).get("bytes", 123456789))
    return {"bytes": size, "natural": humanize.naturalsize(size),
            "binary": humanize.naturalsize(size, binary=True)}
