"""An import that crashes its own zygote (a fault: delivered even to PID 1)."""

import ctypes

ctypes.string_at(0)


def handler(event, context):
    return "unreachable"
