"""Mistral batch jobs on the emulator's one batch engine: the wire objects, and the job's
requests (input files or inline) rewritten as OpenAI lines so validation and result files
are shared with the OpenAI routes.

A job's states map onto the engine's phases: validating is QUEUED; in_progress and
finalizing are RUNNING; expired is TIMEOUT_EXCEEDED; a request that never ran gets no result
line (Mistral reports counts, not per-request expiry).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from batchrelay.emulator.lifecycle import phase, terminal_time
from batchrelay.emulator.store import BatchRecord, FileRecord
from batchrelay.emulator.views import openai_counts

# Every endpoint Mistral's batch API names (mistralai 3.7.0, `APIEndpoint`).
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/fim/completions",
    "/v1/moderations",
    "/v1/chat/moderations",
    "/v1/ocr",
    "/v1/classifications",
    "/v1/chat/classifications",
    "/v1/conversations",
    "/v1/audio/transcriptions",
)
# The ones the emulator can answer.
SERVED = ("/v1/chat/completions", "/v1/embeddings", "/v1/fim/completions", "/v1/moderations")
PURPOSES = ("fine-tune", "batch", "ocr", "agentic_safety")
STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}
ENDED = ("completed", "expired", "cancelled")


def sample_type(record: FileRecord) -> str:
    if record.purpose == "batch_output":
        return "batch_error" if record.filename.endswith("_error.jsonl") else "batch_result"
    return "batch_request" if record.purpose == "batch" else "instruct"


def file_object(record: FileRecord, **extra: object) -> dict:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        # Result files are batch files too, told apart by their sample_type.
        "purpose": "batch" if record.purpose == "batch_output" else record.purpose,
        "sample_type": sample_type(record),
        "source": "mistral" if record.purpose == "batch_output" else "upload",
        "num_lines": None,
        "mimetype": "application/jsonl",
        "signature": None,
        "expires_at": record.expires_at,
        "visibility": "workspace",
        **extra,
    }


def job_object(batch: BatchRecord, now: float, outputs: list[dict] | None = None) -> dict:
    status = phase(batch, now)
    ended = status in ENDED
    counts = openai_counts(batch, status, now)
    errors = [{"message": _error_text(e), "count": 1} for e in batch.errors or []]
    done_at = terminal_time(batch) if ended or status == "failed" else None
    return {
        "id": batch.id,
        "object": "batch",
        "input_files": batch.input_files,
        "metadata": batch.metadata,
        "endpoint": batch.endpoint,
        "model": batch.model,
        "agent_id": None,
        "output_file": batch.output_file_id if ended else None,
        "error_file": batch.error_file_id if ended else None,
        "errors": errors,
        "outputs": outputs,
        "status": STATUS[status],
        "created_at": int(batch.created_at),
        "total_requests": counts["total"],
        "completed_requests": counts["completed"] + counts["failed"],
        "succeeded_requests": counts["completed"],
        "failed_requests": counts["failed"],
        "started_at": None if batch.in_progress_at is None else int(batch.in_progress_at),
        "completed_at": int(done_at or batch.failed_at or 0) or None,
    }


def _error_text(error: dict) -> str:
    return f"line {error['line']}: {error['message']}" if error.get("line") else error["message"]


def write_requests(
    out_path: Path, sources: Iterable[bytes], *, endpoint: str, model: str | None
) -> int:
    """Write a job's requests (`{custom_id?, body}` lines or inline items, as JSON bytes) as
    OpenAI lines; the job's `model` fills in a body without one, and a missing custom_id
    becomes the request's index. A line without an object body is passed on as it is, so
    validation fails the job naming it. Returns the number of requests."""
    url = orjson.dumps(endpoint)
    n = 0
    with open(out_path, "wb") as out:
        for raw in sources:
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                out.write(raw.rstrip(b"\n") + b"\n")
                n += 1
                continue
            if not isinstance(obj.get("body"), dict):
                out.write(orjson.dumps({**obj, "method": "POST", "url": endpoint}) + b"\n")
                n += 1
                continue
            body = obj["body"]
            if model and "model" not in body:
                body = {"model": model, **body}
            custom_id = obj.get("custom_id")
            out.write(
                b'{"custom_id":'
                + orjson.dumps(str(n) if custom_id is None else custom_id)
                + b',"method":"POST","url":'
                + url
                + b',"body":'
                + orjson.dumps(body)
                + b"}\n"
            )
            n += 1
    return n


def file_lines(paths: Iterable[Path]) -> Iterator[bytes]:
    """The non-blank lines of the job's input files, in order, streamed."""
    for path in paths:
        with open(path, "rb") as src:
            yield from (raw for raw in src if raw.strip())


def result_lines(paths: Iterable[Path]) -> list[dict]:
    """An inline job's results, read back for its `outputs`."""
    return [orjson.loads(raw) for raw in file_lines(paths)]
