"""Short, bounded atheris runs of the fuzz harnesses, each in a fresh interpreter.

A crash (an exception out of the checks, or the interpreter dying), a run over
-rss_limit_mb (libFuzzer's memory bound) or an input over -timeout fails the
test, with libFuzzer's output and the input it wrote. `make fuzz` runs the same
harnesses for longer, on a corpus kept in build/fuzz/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN_S = 12  # each run stops at this or at its number of runs, whichever comes first
RSS_LIMIT_MB = 1024


@pytest.mark.parametrize(("harness", "runs"), [("fuzz_protocol", 30_000), ("fuzz_api", 4_000)])
def test_a_short_fuzz_run_ends_without_a_crash_within_its_memory(
        harness: str, runs: int, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    module = f"tests.fuzz.{harness}"
    subprocess.run([sys.executable, "-m", module, "--write-seeds", str(corpus)], cwd=ROOT,
                   check=True, timeout=60)
    log_path = tmp_path / "libfuzzer.log"
    cmd = [sys.executable, "-m", module, "-seed=1", f"-runs={runs}", f"-max_total_time={RUN_S}",
           f"-rss_limit_mb={RSS_LIMIT_MB}", "-max_len=4096", "-timeout=30",
           "-print_final_stats=1", f"-artifact_prefix={tmp_path}/", str(corpus)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "FASTFAAS_FUZZ_DATA_DIR": str(tmp_path)})
        try:
            code = proc.wait(timeout=RUN_S + 60)
        finally:
            if proc.returncode is None:  # stuck: fail with what it said
                proc.kill()
                proc.wait()
    output = log_path.read_text(errors="replace")
    found = sorted(p.name for p in tmp_path.iterdir()
                   if p.name.startswith(("crash-", "oom-", "timeout-", "leak-")))
    assert code == 0 and not found, f"exit status {code}, inputs {found}:\n{output[-8000:]}"
    assert re.search(r"^Done \d+ runs in \d+ second", output, re.M), output[-4000:]
    peak = re.search(r"stat::peak_rss_mb:\s+(\d+)", output)
    assert peak is not None and int(peak.group(1)) < RSS_LIMIT_MB, output[-4000:]
