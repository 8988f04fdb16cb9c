"""The stall diagnostic (FASTFAAS_LOG_STALLS_MS) on a step that holds the loop."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
import trio

from fastfaas.http import stalls


def hold_the_loop(instrument: stalls.StallLog, at_least_s: float) -> None:
    """Busy for at least `at_least_s`, and until the watcher caught this frame."""
    began = time.perf_counter()
    while time.perf_counter() - began < at_least_s or not instrument.caught:
        if time.perf_counter() - began > 30:
            raise AssertionError("the watcher never caught the step")


def test_a_long_step_is_reported_with_where_it_was(capsys: Any) -> None:
    instrument = stalls.StallLog(5.0)

    async def main() -> None:
        async def quick() -> None:
            await trio.sleep(0)

        async def slow() -> None:
            hold_the_loop(instrument, 0.03)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(quick)
            nursery.start_soon(slow, name="the-slow-one")

    trio.run(main, instruments=[instrument])
    err = capsys.readouterr().err
    assert instrument.stalls == 1, err  # the quick task's steps are under 5 ms
    assert "ms CPU) at" in err and "in task the-slow-one" in err
    assert "hold_the_loop (test_stalls.py:" in instrument.caught[0]
    assert "stall: in the act at" in err
    assert not instrument._watcher.is_alive()  # stopped with the run


def test_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FASTFAAS_LOG_STALLS_MS", raising=False)
    assert stalls.from_environment() == []


def test_without_the_watcher_steps_are_still_timed(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FASTFAAS_LOG_STALLS_MS", "5")
    monkeypatch.setenv("FASTFAAS_LOG_STALLS_WATCH", "0")
    callbacks = list(gc.callbacks)
    try:
        [instrument] = stalls.from_environment()
    finally:
        gc.callbacks[:] = callbacks  # its garbage collection log: not for this process
    assert isinstance(instrument, stalls.StallLog)

    async def slow() -> None:
        began = time.perf_counter()
        while time.perf_counter() - began < 0.03:
            pass

    trio.run(slow, instruments=[instrument])
    err = capsys.readouterr().err
    assert instrument.stalls == 1 and "in task" in err
    assert not instrument._watcher.is_alive() and not instrument.caught
    assert "in the act" not in err


def test_a_bad_watch_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTFAAS_LOG_STALLS_MS", "5")
    monkeypatch.setenv("FASTFAAS_LOG_STALLS_WATCH", "no")
    with pytest.raises(ValueError, match="FASTFAAS_LOG_STALLS_WATCH"):
        stalls.from_environment()
