"""Shared fixtures: a real Runtime over real processes and (where writable) real cgroups."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import fastfaas
from fastfaas.runtime.cgroups import Cgroups

REQUIRE_CGROUPS = os.environ.get("FASTFAAS_REQUIRE_CGROUPS") == "1"


def _cgroups_writable() -> bool:
    probe = Cgroups("auto")
    probe.start()
    ok = probe.enabled
    probe.close()
    return ok


CGROUPS_WRITABLE = _cgroups_writable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CGROUPS_WRITABLE or REQUIRE_CGROUPS:
        return  # with FASTFAAS_REQUIRE_CGROUPS=1 such tests run, and fail, instead of skipping
    skip = pytest.mark.skip(reason="needs writable cgroups (run as root)")
    for item in items:
        if "cgroups" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cgroups_mode() -> str:
    return "require" if REQUIRE_CGROUPS else "auto"


@pytest.fixture
def make_function(tmp_path: Path) -> Callable[..., Path]:
    """make_function(app="def handler(e, c): ...", **other_files) -> a code directory."""
    counter = iter(range(1_000_000))

    def make(**files: str) -> Path:
        d = tmp_path / f"fn{next(counter)}"
        d.mkdir()
        for name, source in files.items():
            path = d / (name if "." in name else f"{name}.py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        return d

    return make


@pytest.fixture
async def runtime(tmp_path: Path, cgroups_mode: str) -> AsyncIterator[fastfaas.Runtime]:
    async with fastfaas.Runtime(data_dir=tmp_path / "data", cgroups=cgroups_mode) as rt:
        yield rt
