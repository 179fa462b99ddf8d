"""One run of docker-compose.yml's services as local processes, shared by tests/deploy."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from batchrelay import BatchRelay
from batchrelay.config import Settings, load_settings
from tests.deploy._compose import ComposeRun

# Only for speed: a request is flushed, submitted, polled and collected within seconds
# instead of the production defaults' minute. Everything else is .env.example's.
FAST = {
    "BATCHRELAY_FLUSH_MAX_WAIT_S": "0.5",
    "BATCHRELAY_POLL_INTERVAL_S": "0.25",
    "BATCHRELAY_POLL_MAX_INTERVAL_S": "1",
    "BATCHRELAY_EMULATOR_VALIDATING_DELAY_S": "0.1",
    "BATCHRELAY_EMULATOR_FINALIZING_DELAY_S": "0.1",
}


@pytest.fixture(scope="package")
def compose_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeRun]:
    run = ComposeRun(tmp_path_factory.mktemp("compose"), overrides=FAST)
    try:
        run.start_redis()
        for name in ("emulator", "worker", "beat", "flower", "metrics"):
            run.start(name)
        run.start("beat-standby", "beat")  # `docker compose up --scale beat=2`
        run.wait_until(
            lambda: run.http_ok(run.url("emulator", "/_emulator/health")), 60, "emulator"
        )
        run.wait_until(lambda: run.http_ok(run.url("flower", "/healthcheck")), 60, "flower")
        run.wait_until(lambda: run.http_ok(run.url("metrics", "/metrics")), 60, "metrics")
        run.wait_until(lambda: "ready." in run.log("worker"), 60, "the worker to be ready")
        yield run
    finally:
        run.stop()


def settings_for(run: ComposeRun, service: str = "worker") -> Settings:
    """The settings a process with that service's environment loads (a web app sharing it)."""
    env = run.env(service)
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith("BATCHRELAY_"):
                mp.delenv(key)
        for key, value in env.items():
            if key.startswith("BATCHRELAY_"):
                mp.setenv(key, value)
        mp.chdir(run.home)
        return load_settings()


@pytest.fixture(scope="package")
def compose_producer(compose_run: ComposeRun) -> Iterator[BatchRelay]:
    with BatchRelay(settings_for(compose_run)) as producer:
        yield producer
