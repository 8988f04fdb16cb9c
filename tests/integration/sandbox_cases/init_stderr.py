"""An import that writes a line to every descriptor it inherited that is not
its own (its captured output, /dev/null, its channel): the server's stderr,
were it among them, would carry the line."""

import os
import stat

from common import MARK

WROTE = []
for fd in range(64):
    try:
        mode = os.fstat(fd).st_mode
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if stat.S_ISSOCK(mode) or target == "/dev/null" or target.startswith("/memfd:"):
        continue
    try:
        os.write(fd, f"{MARK}import-wrote-here fd {fd}\n".encode())
    except OSError:
        continue
    WROTE.append([fd, target])


def handler(event, context):
    return {"wrote": WROTE}
