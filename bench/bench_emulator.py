"""Emulator throughput on a 50,000-line (~100 MB) chat batch, against a baseline in the same run.

    python -m bench.bench_emulator

* core: the emulator's validate pass + process-and-write pass (the code its jobs run), in
  lines/s; target >= 20,000 lines/s
* baseline: orjson parse + re-serialise + write of every line of the same file (the floor
  any streaming JSONL rewrite pays); the ratio core/baseline is printed
* end to end: upload -> validating -> completed -> download through a running server (HTTP)
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from batchrelay.emulator import EmulatorConfig, start_emulator
from batchrelay.emulator.config import DEFAULT_MODELS
from batchrelay.emulator.results import write_openai_results
from batchrelay.emulator.store import BatchRecord
from batchrelay.emulator.validation import ModelMatcher, validate_input

LINES = int(os.environ.get("BENCH_EMULATOR_LINES", "50000"))
RUNS = int(os.environ.get("BENCH_EMULATOR_RUNS", "3"))
TARGET_LINES_PER_S = 20_000
ENDPOINT = "/v1/chat/completions"
PAD = "lorem ipsum dolor sit amet " * 70


def make_input(path: Path) -> int:
    with path.open("wb") as out:
        for i in range(LINES):
            body = {
                "model": "gpt-4o-mini",
                "max_tokens": 200,
                "messages": [
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"ticket {i}: {PAD}"},
                ],
            }
            line = {"custom_id": f"req-{i}", "method": "POST", "url": ENDPOINT, "body": body}
            out.write(orjson.dumps(line) + b"\n")
    return path.stat().st_size


def run_core(source: Path, work: Path) -> float:
    start = time.perf_counter()
    checked = validate_input(
        source,
        endpoint=ENDPOINT,
        batch_id="batch_bench",
        error_fraction=0.02,
        known_model=ModelMatcher(DEFAULT_MODELS),
        max_requests=LINES,
    )
    assert not checked.errors, checked.errors[:3]
    now = time.time()
    batch = BatchRecord(
        id="batch_bench",
        shape="openai",
        flavor="openai",
        endpoint=ENDPOINT,
        input_file_id="file-bench",
        created_at=now,
        in_progress_at=now,
        rate_rps=1000.0,
        total=checked.total,
        processed=checked.total,
        run_end_kind="done",
        fault_error_fraction=0.02,
    )
    outcome = write_openai_results(
        batch, source, work / "out.jsonl", work / "err.jsonl", embedding_dim=8
    )
    assert outcome.output_lines + outcome.error_lines == LINES
    return time.perf_counter() - start


def run_baseline(source: Path, work: Path) -> float:
    start = time.perf_counter()
    loads, dumps = orjson.loads, orjson.dumps
    with source.open("rb") as src, (work / "baseline.jsonl").open("wb") as out:
        for raw in src:
            out.write(dumps(loads(raw)) + b"\n")
    return time.perf_counter() - start


def run_end_to_end(source: Path) -> float:
    config = EmulatorConfig(
        port=0, validating_delay_s=0, finalizing_delay_s=0, processing_rate_rps=1e9
    )
    with (
        start_emulator(config) as emu,
        httpx.Client(
            base_url=emu.openai_base_url,
            headers={"Authorization": f"Bearer {emu.api_key}"},
            timeout=300,
        ) as http,
    ):
        start = time.perf_counter()
        with source.open("rb") as fh:
            files = {"file": ("bench.jsonl", fh, "application/jsonl")}
            uploaded = http.post("/files", data={"purpose": "batch"}, files=files).json()
        batch = http.post(
            "/batches",
            json={
                "input_file_id": uploaded["id"],
                "endpoint": ENDPOINT,
                "completion_window": "24h",
            },
        ).json()
        while batch["status"] not in ("completed", "failed"):
            time.sleep(0.02)
            batch = http.get(f"/batches/{batch['id']}").json()
        assert batch["status"] == "completed", batch["errors"]
        lines = 0
        with http.stream("GET", f"/files/{batch['output_file_id']}/content") as response:
            for _ in response.iter_lines():
                lines += 1
        assert lines == batch["request_counts"]["completed"]
        return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        work = Path(tmp)
        source = work / "input.jsonl"
        size = make_input(source)
        core = min(run_core(source, work) for _ in range(RUNS))
        baseline = min(run_baseline(source, work) for _ in range(RUNS))
        end_to_end = run_end_to_end(source)
    core_rate, base_rate = LINES / core, LINES / baseline
    verdict = "ok" if core_rate >= TARGET_LINES_PER_S else "BELOW TARGET"
    print(f"input: {LINES:,} lines, {size / 1e6:.0f} MB (best of {RUNS})")
    print(
        f"emulator validate+process+write: {core_rate:>9,.0f} lines/s  ({core:.2f}s)  "
        f"target >= {TARGET_LINES_PER_S:,}: {verdict}"
    )
    print(f"baseline orjson parse+write:     {base_rate:>9,.0f} lines/s  ({baseline:.2f}s)")
    print(f"ratio emulator/baseline:         {core_rate / base_rate:9.2f}")
    print(
        f"end to end over HTTP (upload, validate, process, write, download): "
        f"{LINES / end_to_end:,.0f} lines/s ({end_to_end:.2f}s)"
    )


if __name__ == "__main__":
    main()
