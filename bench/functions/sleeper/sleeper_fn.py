"""bench/starts.py's timeout probe: a handler that never returns."""

import time


def handler(event, context=None):
    while True:
        time.sleep(3600)
