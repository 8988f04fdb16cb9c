"""The innocent bystander: answers, and says what it can see of its world."""

import os
import socket

from common import MARK


def handler(event, context):
    comms = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comms[pid] = f.read().strip()
            except OSError:
                pass
    return {
        "nonce": event.get("nonce"),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "hostname": socket.gethostname(),
        "tmpdir": os.environ.get("TMPDIR"),
        "tmp": sorted(os.listdir("/tmp")),
        "shm": sorted(os.listdir("/dev/shm")),
        "marked": [c for c in comms.values() if c.startswith(MARK)],
        "processes": len(comms),
        "seen": [path for path in event.get("look", []) if os.path.lexists(path)],
    }
