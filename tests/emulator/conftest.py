from tests._emulator import (  # noqa: F401
    emulator,
    emulator_anthropic,
    emulator_factory,
    emulator_openai,
    emulator_session,
)
