"""Emulator fixtures: one fast server per session, reset before each test, plus a factory.

`emulator` is function-scoped and cheap: it reuses the session server after wiping its data
and putting faults, timings and counters back. Tests that need other start-up settings
(limits, paths, a data directory) start their own with `emulator_factory(**overrides)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import anthropic
import openai
import pytest

from batchrelay.emulator import EmulatorConfig, EmulatorHandle, start_emulator

FAST = {
    "validating_delay_s": 0.0,
    "processing_rate_rps": 5000.0,
    "finalizing_delay_s": 0.0,
    "embedding_dim": 8,
}


def fast_config(**overrides: object) -> EmulatorConfig:
    """Fast timings on a free port; `overrides` are EmulatorConfig fields."""
    return EmulatorConfig(**{"port": 0, **FAST, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[EmulatorHandle]:
    with start_emulator(fast_config()) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_session: EmulatorHandle) -> EmulatorHandle:
    emulator_session.reset(data=True)
    return emulator_session


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., EmulatorHandle]]:
    started: list[EmulatorHandle] = []

    def make(**overrides: object) -> EmulatorHandle:
        emu = start_emulator(fast_config(**overrides))
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


def openai_client(emu: EmulatorHandle, **kwargs: object) -> openai.OpenAI:
    options = {"max_retries": 0, "timeout": 30.0, **kwargs}
    return openai.OpenAI(
        base_url=emu.openai_base_url,
        api_key=emu.api_key,
        _strict_response_validation=True,
        **options,  # type: ignore[arg-type]
    )


def anthropic_client(emu: EmulatorHandle, **kwargs: object) -> anthropic.Anthropic:
    options = {"max_retries": 0, "timeout": 30.0, **kwargs}
    return anthropic.Anthropic(
        base_url=emu.anthropic_base_url,
        api_key=emu.api_key,
        _strict_response_validation=True,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def emulator_openai(emulator: EmulatorHandle) -> Iterator[openai.OpenAI]:
    client = openai_client(emulator)
    yield client
    client.close()


@pytest.fixture
def emulator_anthropic(emulator: EmulatorHandle) -> Iterator[anthropic.Anthropic]:
    client = anthropic_client(emulator)
    yield client
    client.close()
