"""Module state lives as long as the instance: a warm instance keeps counting."""

import os

COUNT = 0


def handler(event, context):
    global COUNT
    COUNT += 1
    return {"count": COUNT, "pid": os.getpid()}
