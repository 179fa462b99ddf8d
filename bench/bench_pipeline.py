"""Packing, uploading and collecting one 50,000-request batch, against baselines of the same run.

    python -m bench.bench_pipeline

The emulator runs as its own process (`batchrelay emulator`), so the RSS measured is the
worker's alone. Figures printed:

* pack + upload + create of the batch (target <= 5 s) and the worker's peak RSS growth
  during it (target < 100 MB); baseline: the same JSONL written from memory and uploaded raw;
* collection: results parsed and stored per second (target >= 20,000/s); baseline: the same
  output file downloaded and parsed with orjson, storing nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
from batchrelay.config import load_settings
from batchrelay.worker.collection import collect_batch
from batchrelay.worker.context import Relay
from batchrelay.worker.packing import aggregate
from batchrelay.worker.submission import submit_batch

from batchrelay import BatchRelay
from bench._redis import private_redis
from bench._rss import PeakRss
from tests._redis import free_port

N = int(os.environ.get("BENCH_N", "50000"))
CHAT = "/v1/chat/completions"
KEY = "sk-bench"


def body(i: int) -> dict:
    text = f"Ticket {i}: " + "the quarterly report is late because the printer is on fire. " * 25
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}


def start_emulator_process(port: int, data_dir: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BATCHRELAY_EMULATOR_API_KEYS": f'["{KEY}"]',
        "BATCHRELAY_EMULATOR_VALIDATING_DELAY_S": "0",
        "BATCHRELAY_EMULATOR_PROCESSING_RATE_RPS": "1000000",
        "BATCHRELAY_EMULATOR_FINALIZING_DELAY_S": "0",
        "BATCHRELAY_EMULATOR_DATA_DIR": data_dir,
    }
    cmd = [sys.executable, "-m", "batchrelay", "emulator", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/batches", headers={"x-api-key": KEY})
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start")


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as data_dir, private_redis() as redis_server:
        emu = start_emulator_process(port, data_dir)
        try:
            run(redis_server.url, base)
        finally:
            emu.terminate()
            emu.wait(10)


def run(redis_url: str, base: str) -> None:
    settings = load_settings(
        redis_url=redis_url,
        providers=[{"name": "emu", "base_url": base, "api_key": KEY}],
        delete_provider_files=False,
        poll_interval_s=0.2,
    )
    producer, worker = BatchRelay(settings), Relay(settings)
    ids = producer.submit_many({"endpoint": CHAT, "body": body(i)} for i in range(N))
    assert len(ids) == N

    # Baseline: the same lines, already in memory, written to a file and uploaded raw.
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "raw.jsonl"
        lines = [
            orjson.dumps({"custom_id": rid, "method": "POST", "url": CHAT, "body": body(i)})
            for i, rid in enumerate(ids)
        ]
        t = time.perf_counter()
        with path.open("wb") as f:
            for line in lines:
                f.write(line + b"\n")
        with path.open("rb") as f:
            client.post("/files", data={"purpose": "batch"}, files={"file": (path.name, f)})
        raw_s = time.perf_counter() - t
        size_mb = path.stat().st_size / 1e6
        del lines

    with PeakRss() as rss:
        t = time.perf_counter()
        [bid] = aggregate(worker, now=worker.now() + 3_600_000)
        assert submit_batch(worker, bid) == "submitted"
        pack_s = time.perf_counter() - t
    print(
        f"pack+upload+create of {N:,} requests ({size_mb:.0f} MB): {pack_s:.2f} s "
        f"(target <= 5 s); raw write+upload {raw_s:.2f} s; ratio {raw_s / pack_s:.2f}; "
        f"worker peak RSS growth {rss.growth_mb:.0f} MB (target < 100 MB)"
    )

    pbatch = worker.batch(bid)["pbatch"]
    while True:
        status = client.get(f"/batches/{pbatch}").json()
        if status["status"] == "completed":
            break
        time.sleep(0.2)
    worker.set_batch(bid, state="collecting")

    t = time.perf_counter()
    with client.stream("GET", f"/files/{status['output_file_id']}/content") as response:
        parsed = sum(1 for line in response.iter_lines() if orjson.loads(line)["custom_id"])
    base_s = time.perf_counter() - t
    with PeakRss() as rss:
        t = time.perf_counter()
        counts = collect_batch(worker, bid)
        collect_s = time.perf_counter() - t
    assert counts["ok"] == N == parsed, counts
    print(
        f"collection: {N / collect_s:,.0f} results/s parsed and stored (target >= 20,000/s); "
        f"download+parse only {N / base_s:,.0f} lines/s; ratio {base_s / collect_s:.2f}; "
        f"peak RSS growth {rss.growth_mb:.0f} MB"
    )
    client.close()
    producer.close()
    worker.close()


if __name__ == "__main__":
    main()
