"""`batchrelay metrics` as a real process, and Prometheus text read back as numbers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests._redis import free_port
from tests._stack import ROOT, settings_env


class Exporter:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        """{(sample name, labels): value} of one scrape."""
        reply = httpx.get(self.url + "/metrics", timeout=10)
        reply.raise_for_status()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.text)
            for s in family.samples
        }

    def hook_url(self, profile: str) -> str:
        return f"{self.url}/v1/provider-webhooks/{profile}"


def value(scrape: dict, name: str, **labels: str) -> float:
    """The sum of a sample over series whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= ls)


@contextmanager
def exporter(settings: Any, logdir: Path) -> Iterator[Exporter]:
    port = free_port()
    log = (logdir / "metrics.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrelay", "metrics", "--port", str(port)],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Exporter(port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                running.scrape()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((logdir / "metrics.log").read_text()) from None
                time.sleep(0.1)
        yield running
    finally:
        proc.terminate()
        proc.wait(10)
