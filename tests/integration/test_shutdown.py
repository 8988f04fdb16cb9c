"""Ctrl-C on a program embedding the Runtime stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import json, sys, trio, fastfaas

async def main():
    async with fastfaas.Runtime(data_dir=sys.argv[1], cgroups=sys.argv[3]) as rt:
        await rt.deploy("f", source=sys.argv[2], handler="app.handler")
        await rt.invoke("f", {})
        print(json.dumps({"pids": rt.pids(),
                          "roots": [str(r) for r in rt.cgroups.roots.values()]}), flush=True)
        await trio.sleep_forever()

try:
    trio.run(main)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


def test_ctrl_c_stops_every_process_and_removes_every_cgroup(
    tmp_path: Path, make_function, cgroups_mode: str
) -> None:
    code = make_function(app="import os\ndef handler(e, c):\n    return os.getpid()\n")
    script = tmp_path / "embed.py"
    script.write_text(textwrap.dedent(SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "data"), str(code), cgroups_mode],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        state = json.loads(proc.stdout.readline())
        assert len(state["pids"]) >= 4
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in rest
    for pid in state["pids"]:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        os.close(fd)
        # The pid may have been reused by now only if it exited; a zombie counts as gone.
        stat = Path(f"/proc/{pid}/stat").read_text()
        assert stat.rsplit(")", 1)[1].split()[0] == "Z" or not stat.startswith(f"{pid} (python"), (
            f"fastfaas process {pid} is still running")
    assert not [r for r in state["roots"] if Path(r).exists()]
