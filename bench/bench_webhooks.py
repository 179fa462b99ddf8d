"""Webhook fan-out through the whole pipeline, against a plain HTTP client in the same run.

    python -m bench.bench_webhooks

20,000 requests with a `Webhook` callback go submit -> packed -> emulator -> collected ->
signed webhook, through one real worker (`-c 2`) with beat, to a minimal asyncio HTTP/1.1
receiver in its own process (bench/_receiver.py). Printed: the delivery rate (first to last
webhook received; target >= 0.5 x the baseline), the end-to-end rate (first submit to last
webhook), and the baseline: aiohttp with 16 keep-alive connections posting as many bodies
of the same size to the same receiver, timed the same way (first to last received).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
from batchrelay.config import load_settings

from batchrelay import BatchRelay, Webhook
from bench._redis import private_redis
from bench.bench_pipeline import KEY, start_emulator_process
from tests._redis import free_port
from tests._stack import Stack

N = int(os.environ.get("BENCH_N_WEBHOOKS", "20000"))
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes; bench only
CHAT = "/v1/chat/completions"
CONNECTIONS = 16


def start_receiver(port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_WEBHOOK_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "bench._receiver", str(port)], env=env)
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/stats")
            return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("receiver did not start")


def stats(port: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{port}/stats", timeout=60).json()


async def post_all(url: str, body: bytes) -> None:
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    headers = {"content-type": "application/json", "webhook-id": "baseline"}
    async with aiohttp.ClientSession(connector=connector) as session:
        queue = iter(range(N))

        async def poster() -> None:
            for _ in queue:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()

        await asyncio.gather(*(poster() for _ in range(CONNECTIONS)))


def pipeline(redis_url: str, base: str, hook: str, port: int, logdir: Path) -> tuple[float, float]:
    """(deliveries per second first to last webhook, requests per second submit to last)."""
    settings = load_settings(
        redis_url=redis_url,
        providers=[{"name": "emu", "base_url": base, "api_key": KEY}],
        flush_max_wait_s=0.5,
        poll_interval_s=0.5,
        tick_s=0.2,
        webhook_secrets=[SECRET],
        webhook_allow_hosts=["127.0.0.1"],
        delete_provider_files=False,
    )
    stack = Stack(settings, logdir)
    stack.log_level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    stack.start_worker("w1", 2)
    stack.start_beat()
    try:
        time.sleep(3)  # let both processes start before the clock runs
        started = time.time()
        with BatchRelay(settings) as producer:
            producer.submit_many(
                {"endpoint": CHAT, "body": body(i), "callback": Webhook(hook)} for i in range(N)
            )
        deadline = time.monotonic() + 600
        while (got := stats(port))["unique"] < N:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got['unique']} of {N} webhooks arrived")
            time.sleep(0.5)
    finally:
        stack.stop()
    assert got["valid"] == N, got
    return N / (got["last"] - got["first"]), N / (got["last"] - started)


def body(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"Ticket {i}"}]}


def main() -> None:
    port, emu_port = free_port(), free_port()
    hook = f"http://127.0.0.1:{port}/hook"
    with (
        tempfile.TemporaryDirectory() as tmp,
        private_redis() as redis_server,
    ):
        emu = start_emulator_process(emu_port, tmp)
        receiver = start_receiver(port)
        try:
            logdir = Path(os.environ.get("BENCH_LOG_DIR", tmp))
            rate, end_to_end = pipeline(
                redis_server.url, f"http://127.0.0.1:{emu_port}/v1", hook, port, logdir
            )
            size = stats(port)["body_bytes"]
            httpx.post(f"http://127.0.0.1:{port}/reset")
            asyncio.run(post_all(hook, b"x" * size))
            got = stats(port)
            baseline = N / (got["last"] - got["first"])
        finally:
            receiver.terminate()
            emu.terminate()
            receiver.wait(10)
            emu.wait(10)
    print(
        f"webhook delivery of {N:,}: {rate:,.0f} webhooks/s first to last "
        f"(end to end, first submit to last webhook: {end_to_end:,.0f} req/s); "
        f"aiohttp, {CONNECTIONS} keep-alive connections, {size}-byte bodies: "
        f"{baseline:,.0f} posts/s; ratio {rate / baseline:.2f} (target >= 0.50)"
    )


if __name__ == "__main__":
    main()
