"""`batchrelay run` of a 50,000-line chat file, against the official `openai` SDK in the same run.

    python -m bench.bench_run

Both drive the same emulator (its own process, full speed) with the same poll interval
(0.5 s). Baseline: the SDK uploads the file, creates the batch, polls it, downloads the
output and parses every line, timed two ways: as a command of its own (`bench/_sdk_flow.py`,
interpreter start-up and `import openai` included) and in this process (imports done before
the clock starts). Ours: `batchrelay run FILE -o OUT` as a command (start-up included), in
direct file mode: no worker or beat runs; and the same `run` called in this process (its
modules imported before the clock starts, as the SDK's are). Two like-for-like ratios (both as
commands; both in-process) and the mixed one (our command to the in-process SDK) are printed.
`BENCH_RUN_ROUNDS` (default 1) repeats all four, alternating, and prints each round's figures
and the medians.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai
import orjson

from batchrelay.config import Settings, load_settings
from bench._redis import private_redis
from bench.bench_pipeline import KEY, start_emulator_process
from tests._redis import free_port
from tests._stack import ROOT, settings_env

N = int(os.environ.get("BENCH_N_RUN", "50000"))
ROUNDS = int(os.environ.get("BENCH_RUN_ROUNDS", "1"))
CHAT = "/v1/chat/completions"
POLL_S = 0.5


def write_file(path: Path, salt: int) -> None:
    """N chat lines; `salt` makes each round's file (and so its run) a new one."""
    with path.open("wb") as f:
        for i in range(N):
            content = f"q {i} {salt}"
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
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
    assert batch.output_file_id is not None
    content = client.files.content(batch.output_file_id).content
    parsed = [orjson.loads(line) for line in content.splitlines()]
    took = time.perf_counter() - t
    assert len(parsed) == N
    client.close()
    return took


def sdk_command(base: str, path: Path) -> float:
    """Seconds for the same SDK flow as a command of its own, start-up included."""
    cmd = [sys.executable, str(ROOT / "bench" / "_sdk_flow.py"), base, KEY, str(path), str(POLL_S)]
    t = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True)
    took = time.perf_counter() - t
    assert done.returncode == 0 and done.stdout.strip() == str(N).encode(), done.stderr[-2000:]
    return took


def run_settings(redis_url: str, base: str) -> Settings:
    return load_settings(
        redis_url=redis_url,
        providers=[{"name": "emu", "base_url": base, "api_key": KEY}],
        poll_interval_s=POLL_S,
    )


def relay_in_process(redis_url: str, base: str, path: Path) -> float:
    """Seconds for the same `run`, called in this process (no interpreter start-up)."""
    from batchrelay import run as run_command

    settings = run_settings(redis_url, base)
    out = path.with_suffix(".in.jsonl")
    saved = dict(os.environ)
    os.environ.update(settings_env(settings))
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            t = time.perf_counter()
            run_command.run(file=path, output=out, no_wait=False)
            took = time.perf_counter() - t
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with out.open("rb") as f:
        assert sum(1 for _ in f) == N
    return took


def relay_flow(redis_url: str, base: str, path: Path) -> float:
    """Seconds for `batchrelay run FILE -o OUT`, process start-up included."""
    settings = run_settings(redis_url, base)
    out = path.with_suffix(".out.jsonl")
    cmd = [sys.executable, "-m", "batchrelay", "run", str(path), "-o", str(out)]
    t = time.perf_counter()
    done = subprocess.run(cmd, env=settings_env(settings), cwd=ROOT, capture_output=True)
    took = time.perf_counter() - t
    assert done.returncode == 0, done.stdout.decode()[-2000:] + done.stderr.decode()[-2000:]
    with out.open("rb") as f:
        assert sum(1 for _ in f) == N
    return took


def main() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryDirectory() as tmp, private_redis() as redis_server:
        emu = start_emulator_process(port, tmp)
        commands: list[float] = []
        in_process: list[float] = []
        mixed: list[float] = []
        try:
            for round_ in range(1, ROUNDS + 1):
                paths = [Path(tmp) / f"{name}{round_}.jsonl" for name in ("sdk", "cmd", "in")]
                for i, path in enumerate(paths):
                    write_file(path, round_ * 10 + i)  # a new file (a new run) each time
                sdk_s = sdk_flow(base, paths[0])
                cmd_s = sdk_command(base, paths[0])
                ours_s = relay_flow(redis_server.url, base, paths[1])
                ours_in_s = relay_in_process(redis_server.url, base, paths[2])
                commands.append(ours_s / cmd_s)
                in_process.append(ours_in_s / sdk_s)
                mixed.append(ours_s / sdk_s)
                print(
                    f"{N:,} chat lines, upload -> create -> poll -> download -> parse; "
                    f"as commands: batchrelay run {ours_s:.2f} s, openai SDK {cmd_s:.2f} s, ratio "
                    f"{commands[-1]:.2f}; in-process: run {ours_in_s:.2f} s, SDK {sdk_s:.2f} s, "
                    f"ratio {in_process[-1]:.2f}; our command to the in-process SDK "
                    f"{mixed[-1]:.2f} (target <= 1.5)"
                )
        finally:
            emu.terminate()
            emu.wait(10)
    if len(commands) > 1:
        median = statistics.median
        print(
            f"median of {len(commands)} rounds: as commands {median(commands):.2f}, in-process "
            f"{median(in_process):.2f}, command to in-process {median(mixed):.2f} (target <= 1.5)"
        )


if __name__ == "__main__":
    main()
