"""`batchrelay run` of a 50,000-line chat file, against the official `openai` SDK in the same run.

    python -m bench.bench_run

Both drive the same emulator (its own process, full speed) with the same poll interval
(0.5 s). Baseline: the SDK uploads the file, creates the batch, polls it, downloads the
output and parses every line. Ours: `batchrelay run FILE -o OUT` as a subprocess, with a
real worker (`-c 2`) and beat already running (target <= 1.5 x the baseline).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import orjson
from batchrelay.config import load_settings

from bench._redis import private_redis
from bench.bench_pipeline import KEY, start_emulator_process
from tests._redis import free_port
from tests._stack import ROOT, Stack, settings_env

N = int(os.environ.get("BENCH_N_RUN", "50000"))
CHAT = "/v1/chat/completions"
POLL_S = 0.5


def write_file(path: Path) -> None:
    with path.open("wb") as f:
        for i in range(N):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q {i}"}]}
            line = {"custom_id": f"c{i}", "method": "POST", "url": CHAT, "body": body}
            f.write(orjson.dumps(line) + b"\n")


def sdk_flow(base: str, path: Path) -> float:
    """Seconds for upload -> create -> poll -> download -> parse with the openai SDK."""
    client = openai.OpenAI(base_url=base, api_key=KEY)
    t = time.perf_counter()
    with path.open("rb") as f:
        uploaded = client.files.create(file=f, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h")
    while batch.status != "completed":
        time.sleep(POLL_S)
        batch = client.batches.retrieve(batch.id)
    content = client.files.content(batch.output_file_id).content
    parsed = [orjson.loads(line) for line in content.splitlines()]
    took = time.perf_counter() - t
    assert len(parsed) == N
    client.close()
    return took


def relay_flow(redis_url: str, base: str, path: Path, logdir: Path) -> float:
    settings = load_settings(
        redis_url=redis_url,
        providers=[{"name": "emu", "base_url": base, "api_key": KEY}],
        flush_max_wait_s=POLL_S,
        poll_interval_s=POLL_S,
        tick_s=0.2,
        delete_provider_files=False,
    )
    stack = Stack(settings, logdir)
    stack.log_level = "WARNING"
    stack.start_worker("w1", 2)
    stack.start_beat()
    out = logdir / "out.jsonl"
    try:
        time.sleep(3)  # both processes up before the clock runs
        cmd = [sys.executable, "-m", "batchrelay", "run", str(path), "-o", str(out)]
        t = time.perf_counter()
        done = subprocess.run(cmd, env=settings_env(settings), cwd=ROOT, capture_output=True)
        took = time.perf_counter() - t
    finally:
        stack.stop()
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    with out.open("rb") as f:
        assert sum(1 for _ in f) == N
    return took


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp, private_redis() as redis_server:
        path = Path(tmp) / "requests.jsonl"
        write_file(path)
        emu = start_emulator_process(port, tmp)
        try:
            sdk_s = sdk_flow(base, path)
            ours_s = relay_flow(redis_server.url, base, path, Path(tmp))
        finally:
            emu.terminate()
            emu.wait(10)
    print(
        f"batchrelay run of {N:,} chat lines: {ours_s:.1f} s; openai SDK upload -> create -> "
        f"poll -> download -> parse {sdk_s:.1f} s; ratio {ours_s / sdk_s:.2f} (target <= 1.5)"
    )


if __name__ == "__main__":
    main()
