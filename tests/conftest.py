"""Fixtures every folder may use, and how the suite is split between pytest-xdist workers.

`make test` runs two workers (`-n 2 --dist loadgroup` in pyproject.toml): most tests wait on
real processes, ticks and provider timings rather than on a CPU, so two share two cores well.
Each worker is its own pytest session with its own private Redis, emulator and ports. A
module's tests stay together on one worker (module fixtures, and tests/packaging's order),
and so do the folders whose expensive fixture is shared by every module in them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._redis import redis_server, redis_url  # noqa: F401

TESTS = Path(__file__).resolve().parent
# Folders with one stack (worker, beat, Redis Cluster, compose services...) for all modules.
SHARED_BY_FOLDER = {"api", "cluster", "deploy", "examples"}


def xdist_group(path: Path) -> str:
    """The group a test file's tests run in: its folder's, or its own."""
    relative = path.resolve().relative_to(TESTS)
    if relative.parts[0] in SHARED_BY_FOLDER:
        return relative.parts[0]
    return relative.as_posix()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(pytest.mark.xdist_group(xdist_group(item.path)))
