"""An import that never returns."""

import select

from common import name_process

name_process("stuck")
select.select([], [], [])


def handler(event, context):
    return "unreachable"
