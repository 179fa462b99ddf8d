"""Fixtures every folder may use, and how the suite is split between pytest-xdist workers.

`make test` runs two workers (`-n 2` in pyproject.toml): most tests wait on real processes,
ticks and provider timings rather than on a CPU, so two share two cores well. Each worker is
its own pytest session with its own private Redis, emulator and ports. A module's tests stay
together on one worker (module fixtures, and tests/packaging's order), and so do the folders
whose one expensive stack is shared by all their modules. The longest of these units start
first, so no long one is left running alone at the end.
"""

from __future__ import annotations

import pytest
from xdist.scheduler import LoadScopeScheduling

from tests._redis import redis_server, redis_url  # noqa: F401

# Folders with one stack (worker and beat, a Redis Cluster, compose's services) for all modules.
SHARED_BY_FOLDER = ("tests/api/", "tests/cluster/", "tests/deploy/", "tests/examples/")
# Units measured longest (`--durations`, about 40 to 160 s each on 2 cores), longest first.
LONGEST_FIRST = (
    "tests/relay/test_stack.py",
    "tests/cluster",
    "tests/ops/test_quiet.py",
    "tests/chaos/test_chaos.py",
    "tests/packaging/test_wheel.py",
    "tests/api",
    "tests/examples",
    "tests/deploy",
)


def work_unit(nodeid: str) -> str:
    """The unit a test runs in: its shared folder, or its module."""
    path = nodeid.split("::", 1)[0]
    for folder in SHARED_BY_FOLDER:
        if path.startswith(folder):
            return folder.rstrip("/")
    return path


class ByUnit(LoadScopeScheduling):
    """xdist's per-scope scheduling with `work_unit` as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return work_unit(nodeid)


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> ByUnit:
    return ByUnit(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest units first; every module keeps its own order."""

    def rank(item: pytest.Item) -> int:
        unit = work_unit(item.nodeid)
        return LONGEST_FIRST.index(unit) if unit in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)
