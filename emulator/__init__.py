"""A local, faithful Batch API server (OpenAI, Azure OpenAI and Anthropic shapes) with faults.

`start_emulator(EmulatorConfig(port=0))` runs one in a background thread; see README.md.
"""

from batchrelay.emulator.config import EmulatorConfig, Faults, Timings
from batchrelay.emulator.server import EmulatorHandle, serve, start_emulator

__all__ = ["EmulatorConfig", "EmulatorHandle", "Faults", "Timings", "serve", "start_emulator"]
