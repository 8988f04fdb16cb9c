"""Where and how processes run: `Runtime(function_cpus=...)`, `fastfaas serve
--server-cpus`, and the function processes' scheduling policy (`function_sched`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import fastfaas
from fastfaas.__main__ import parse_cpus
from tests.conftest import ServerProcess, invoke, zip_of

USABLE = sorted(os.sched_getaffinity(0))
needs_two = pytest.mark.skipif(len(USABLE) < 2, reason="needs two CPUs to split")

PID = """
import os
def handler(event, context):
    return {"pid": os.getpid(), "policy": os.sched_getscheduler(0)}
"""


def cpus_of(pid: int) -> set[int]:
    return set(os.sched_getaffinity(pid))


def test_cpu_lists_are_read_as_taskset_writes_them() -> None:
    assert parse_cpus("0") == {0}
    assert parse_cpus("0-2,5") == {0, 1, 2, 5}
    assert parse_cpus(" 3 , 1") == {1, 3}
    for bad in ("", "a", "1-", "-1", "2-1", "0,,1", "1.5"):
        with pytest.raises(ValueError):
            parse_cpus(bad)


@needs_two
async def test_function_processes_run_on_the_cpus_given(
    tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path]
) -> None:
    mine = cpus_of(0)
    last = USABLE[-1]
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode,
                                function_cpus={last}) as rt:
        await rt.deploy("where", source=make_function(app=PID), handler="app.handler")
        first = await rt.invoke("where")
        assert first.ok, first
        instance = first.value()["pid"]
        assert cpus_of(instance) == {last}
        assert cpus_of(rt.describe("where")["state"]["zygote"]["pid"]) == {last}
        assert cpus_of(rt.template.pid) == {last}
        assert rt.statistics()["function_cpus"] == [last]
    assert cpus_of(0) == mine  # the embedding process itself stays where it was


async def test_cpus_outside_this_process_are_refused(tmp_path: Path) -> None:
    for bad in (set(), {max(USABLE) + 1000}):
        with pytest.raises(ValueError, match="function_cpus"):
            fastfaas.Runtime(data_dir=tmp_path / "data", function_cpus=bad)


@needs_two
def test_serve_keeps_itself_and_its_functions_apart(
    start_server: Callable[..., ServerProcess]
) -> None:
    first, rest = USABLE[0], set(USABLE[1:])
    server = start_server("--server-cpus", str(first))
    assert cpus_of(server.pid) == {first}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.put("/v1/functions/where", params={"handler": "app.handler"},
                  content=zip_of(app=PID), headers={"content-type": "application/zip"})
        assert r.status_code == 201, r.text
        r = invoke(c, "where")
        assert r.status_code == 200, r.text
        assert cpus_of(r.json()["pid"]) == rest
        health = c.get("/healthz").json()
    assert health["cpus"] == {"server": [first], "functions": sorted(rest)}
    assert health["function_sched"] == "batch"  # the default
    assert r.json()["policy"] == os.SCHED_BATCH
    # The server's threads (trio's worker threads among them) stay on its CPU.
    for tid in os.listdir(f"/proc/{server.pid}/task"):
        assert cpus_of(int(tid)) == {first}


@pytest.mark.parametrize("cpus", ["all", "x", "99999"])
def test_serve_refuses_a_cpu_list_that_cannot_be(tmp_path: Path, cpus: str) -> None:
    text = ",".join(map(str, USABLE)) if cpus == "all" else cpus
    data_dir = tmp_path / "never"
    proc = subprocess.run(
        [sys.executable, "-m", "fastfaas", "serve", "--port", "0", "--data-dir",
         str(data_dir), "--server-cpus", text],
        capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "--server-cpus" in proc.stderr
    assert "listening" not in proc.stdout
    assert not data_dir.exists()


@pytest.mark.parametrize(("sched", "policy"), [("batch", os.SCHED_BATCH),
                                               ("normal", os.SCHED_OTHER)])
async def test_function_processes_run_under_the_policy_given(
    tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path], sched: str,
    policy: int,
) -> None:
    mine = os.sched_getscheduler(0)
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode,
                                function_sched=sched) as rt:
        await rt.deploy("how", source=make_function(app=PID), handler="app.handler")
        first = await rt.invoke("how")
        assert first.ok, first
        assert first.value()["policy"] == policy  # as the instance sees itself
        assert os.sched_getscheduler(first.value()["pid"]) == policy
        assert os.sched_getscheduler(rt.describe("how")["state"]["zygote"]["pid"]) == policy
        assert os.sched_getscheduler(rt.template.pid) == policy
        assert rt.statistics()["function_sched"] == sched
    assert os.sched_getscheduler(0) == mine  # the embedding process keeps its own


async def test_function_processes_run_batch_by_default(
    tmp_path: Path, cgroups_mode: str, make_function: Callable[..., Path]
) -> None:
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        await rt.deploy("how", source=make_function(app=PID), handler="app.handler")
        first = await rt.invoke("how")
        assert first.ok, first
        assert first.value()["policy"] == os.SCHED_BATCH
        assert os.sched_getscheduler(rt.template.pid) == os.SCHED_BATCH
        assert rt.statistics()["function_sched"] == "batch"


def test_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="function_sched must be one of normal, batch"):
        fastfaas.Runtime(data_dir=tmp_path / "data", function_sched="fifo")
