"""The emulator as a user runs it (`batchrelay emulator --port`), in a subprocess whose memory
a test can watch from outside."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0


class PeakRss(threading.Thread):
    """Samples a process's RSS every 20 ms; `peak` is the highest seen (a body read whole
    and freed again shows up here, not in the RSS afterwards)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.running = True

    def run(self) -> None:
        while self.running:
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        """Stop sampling; the peak RSS in bytes."""
        self.running = False
        self.join()
        return self.peak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def cli_emulator(env: Mapping[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`batchrelay emulator --port <free>` with `env` added; yields the process and base URL
    once it answers its health check, and stops it at exit."""
    port = free_port()
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    args = [sys.executable, "-m", "batchrelay", "emulator", "--port", str(port)]
    proc = subprocess.Popen(args, env=full_env, cwd=ROOT, stdout=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, "the emulator exited at start"
            try:
                if httpx.get(base_url + "/_emulator/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.05)
        yield proc, base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
