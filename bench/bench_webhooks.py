"""Webhook fan-out through the whole pipeline, against a plain HTTP client in the same run.

    python -m bench.bench_webhooks

20,000 requests with a `Webhook` callback go submit -> packed -> emulator -> collected ->
signed webhook, through one real worker (`-c 2`) with beat, to a minimal asyncio HTTP/1.1
receiver in its own process (bench/_receiver.py). Printed: the delivery rate (first to last
webhook received; target >= 0.5 x the baseline), the end-to-end rate (first submit to last
webhook), and the baseline: aiohttp with 16 keep-alive connections posting as many bodies
of the same size to the same receiver, timed the same way (first to last received). The
baseline is the fastest of aiohttp with 16, 32 and 64 keep-alive connections and httpx's
async client with 16 and 64; every one is printed. Also printed: the worker processes' CPU
per request beside each plain client's CPU per post, a figure the machine's other load
disturbs less than a rate.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import psutil

from batchrelay import BatchRelay, Webhook
from batchrelay.config import load_settings
from bench._redis import private_redis
from bench.bench_pipeline import KEY, start_emulator_process
from tests._redis import free_port
from tests._stack import Stack

N = int(os.environ.get("BENCH_N_WEBHOOKS", "20000"))
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes; bench only
CHAT = "/v1/chat/completions"


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


def stats(port: int, *, verify: bool = False) -> dict:
    query = "?verify=1" if verify else ""
    return httpx.get(f"http://127.0.0.1:{port}/stats{query}", timeout=60).json()


async def post_aiohttp(url: str, body: bytes, connections: int) -> None:
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        await _posters(connections, lambda: _aiohttp_post(session, url, body))


async def _aiohttp_post(session: aiohttp.ClientSession, url: str, body: bytes) -> None:
    async with session.post(url, data=body, headers=HEADERS) as response:
        await response.read()


async def post_httpx(url: str, body: bytes, connections: int) -> None:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits) as client:
        await _posters(connections, lambda: client.post(url, content=body, headers=HEADERS))


async def _posters(connections: int, post: Callable[[], Awaitable[object]]) -> None:
    """N posts by `connections` coroutines, each posting one after another."""
    todo = iter(range(N))

    async def poster() -> None:
        for _ in todo:
            await post()

    await asyncio.gather(*(poster() for _ in range(connections)))


HEADERS = {"content-type": "application/json", "webhook-id": "baseline"}
BASELINES: dict[str, Callable[[str, bytes], Awaitable[None]]] = {
    "aiohttp, 16 connections": lambda u, b: post_aiohttp(u, b, 16),
    "aiohttp, 32 connections": lambda u, b: post_aiohttp(u, b, 32),
    "aiohttp, 64 connections": lambda u, b: post_aiohttp(u, b, 64),
    "httpx async, 16 connections": lambda u, b: post_httpx(u, b, 16),
    "httpx async, 64 connections": lambda u, b: post_httpx(u, b, 64),
}


def baselines(hook: str, port: int, size: int) -> dict[str, tuple[float, float]]:
    """Each plain client's posts per second (first to last received) and CPU microseconds
    per post, same bodies."""
    rates = {}
    for name, post in BASELINES.items():
        httpx.post(f"http://127.0.0.1:{port}/reset")
        cpu = time.process_time()
        asyncio.run(post(hook, b"x" * size))
        cpu = time.process_time() - cpu
        got = stats(port)
        rates[name] = (N / (got["last"] - got["first"]), cpu / N * 1e6)
    return rates


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (a worker's pool processes)."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def pipeline(
    redis_url: str, base: str, hook: str, port: int, logdir: Path
) -> tuple[float, float, float]:
    """(deliveries per second first to last webhook, requests per second submit to last, the
    worker's CPU microseconds per request: packing, collection and delivery)."""
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
    worker = stack.start_worker("w1", 2)
    stack.start_beat()
    try:
        time.sleep(3)  # let both processes start before the clock runs
        started, cpu = time.time(), cpu_seconds(worker.pid)
        with BatchRelay(settings) as producer:
            producer.submit_many(
                {"endpoint": CHAT, "body": body(i), "callback": Webhook(hook)} for i in range(N)
            )
        deadline = time.monotonic() + 600
        while (got := stats(port))["unique"] < N:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got['unique']} of {N} webhooks arrived")
            time.sleep(0.5)
        cpu = cpu_seconds(worker.pid) - cpu
    finally:
        stack.stop()
    got = stats(port, verify=True)
    assert got["valid"] == N, got
    return N / (got["last"] - got["first"]), N / (got["last"] - started), cpu / N * 1e6


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
            rate, end_to_end, cpu_us = pipeline(
                redis_server.url, f"http://127.0.0.1:{emu_port}/v1", hook, port, logdir
            )
            size = stats(port)["body_bytes"]
            rates = baselines(hook, port, size)
        finally:
            receiver.terminate()
            emu.terminate()
            receiver.wait(10)
            emu.wait(10)
    for name, (value, cpu) in rates.items():
        print(f"  baseline {name}: {value:,.0f} posts/s, {cpu:.0f} us CPU per post")
    best = max(rates, key=lambda name: rates[name][0])
    best_rate, best_cpu = rates[best]
    print(
        f"  worker CPU per request (packing, collection, delivery; 2 processes): {cpu_us:.0f} us, "
        f"{cpu_us / best_cpu:.1f} x the fastest plain client's per post"
    )
    print(
        f"webhook delivery of {N:,}: {rate:,.0f} webhooks/s first to last "
        f"(end to end, first submit to last webhook: {end_to_end:,.0f} req/s); "
        f"fastest plain client ({best}, {size}-byte bodies): {best_rate:,.0f} posts/s; "
        f"ratio {rate / best_rate:.2f} (target >= 0.50)"
    )


if __name__ == "__main__":
    main()
