"""A 50,000-request, ~100 MB batch end to end, with the emulator's memory watched from outside."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson
import psutil

from tests.emulator.process import PeakRss, cli_emulator

LINES = 50_000
PAD = "lorem ipsum dolor sit amet " * 70  # ~1.9 KB per line, ~100 MB in all


def _write_input(path: Path) -> int:
    with path.open("wb") as out:
        for i in range(LINES):
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": f"id-{i:05d} {PAD}"}],
            }
            line = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": body,
            }
            out.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def test_fifty_thousand_requests_stream_through(tmp_path):
    source = tmp_path / "big.jsonl"
    size = _write_input(source)
    assert size > 95_000_000
    env = {
        "BATCHRELAY_EMULATOR_VALIDATING_DELAY_S": "0",
        "BATCHRELAY_EMULATOR_FINALIZING_DELAY_S": "0",
        "BATCHRELAY_EMULATOR_PROCESSING_RATE_RPS": "1000000",
    }
    headers = {"Authorization": "Bearer sk-emulator"}
    with cli_emulator(env) as (proc, base):
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            idle_rss = psutil.Process(proc.pid).memory_info().rss
            watcher = PeakRss(proc.pid)
            watcher.start()
            start = time.monotonic()
            with source.open("rb") as fh:
                uploaded = http.post(
                    "/v1/files",
                    data={"purpose": "batch"},
                    files={"file": ("big.jsonl", fh, "application/jsonl")},
                ).json()
            assert uploaded["bytes"] == size
            batch = http.post(
                "/v1/batches",
                json={
                    "input_file_id": uploaded["id"],
                    "endpoint": "/v1/chat/completions",
                    "completion_window": "24h",
                },
            ).json()
            while batch["status"] not in ("completed", "failed"):
                assert time.monotonic() - start < 60
                time.sleep(0.1)
                batch = http.get(f"/v1/batches/{batch['id']}").json()
            assert batch["status"] == "completed", batch["errors"]
            assert batch["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
            seen = 0
            url = f"/v1/files/{batch['output_file_id']}/content"
            with http.stream("GET", url) as response:
                for raw in response.iter_lines():
                    line = orjson.loads(raw)
                    reply = line["response"]["body"]["choices"][0]["message"]["content"]
                    assert reply.startswith(f"echo: id-{int(line['custom_id'][1:]):05d} ")
                    seen += 1
            elapsed = time.monotonic() - start
            peak = watcher.stop()
        assert seen == LINES
        growth_mb = (peak - idle_rss) / 2**20
        print(
            f"\n50k lines / {size / 1e6:.0f} MB: {elapsed:.1f}s end to end, RSS +{growth_mb:.0f} MB"
        )
        assert growth_mb < 100, f"emulator memory grew by {growth_mb:.0f} MB"
