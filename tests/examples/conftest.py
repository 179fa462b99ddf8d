"""One embedded stack (private Redis, emulator, real worker and beat processes) shared by the
example tests, with timings fast enough to keep each test to a few seconds."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchrelay.emulator import EmulatorConfig
from batchrelay.stack import EmbeddedStack

FAST_EMULATOR = {
    "port": 0,
    "validating_delay_s": 0.1,
    "processing_rate_rps": 5000.0,
    "finalizing_delay_s": 0.1,
    "embedding_dim": 8,
}
FAST_RELAY = {"flush_max_wait_s": 0.3, "tick_s": 0.25, "poll_interval_s": 0.25}


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    with EmbeddedStack(
        emulator=EmulatorConfig(**FAST_EMULATOR),  # type: ignore[arg-type]
        settings=FAST_RELAY,
        workdir=tmp_path_factory.mktemp("stack"),
    ) as s:
        yield s
