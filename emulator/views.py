"""Records rendered as the providers' wire objects, with every field present (null if empty)."""

from __future__ import annotations

from datetime import UTC, datetime

from batchrelay.emulator.lifecycle import phase, processed_by, terminal_time
from batchrelay.emulator.store import BatchRecord, FileRecord

DEFAULT_WINDOW_S = 86400


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def rfc3339(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def file_object(record: FileRecord) -> dict:
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "status_details": None,
    }


def openai_counts(batch: BatchRecord, status: str, now: float) -> dict[str, int]:
    if status in ("completed", "expired", "cancelled") and batch.counts:
        return {k: batch.counts[k] for k in ("total", "completed", "failed")}
    done = processed_by(batch, now)
    failed = batch.planned_failures * done // batch.total if batch.total else 0
    return {"total": batch.total, "completed": done - failed, "failed": failed}


def _usage(batch: BatchRecord, ended: bool) -> dict:
    usage = batch.usage if ended and batch.usage else {}
    input_tokens = usage.get("input_tokens", 0)
    output_tokens = usage.get("output_tokens", 0)
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def openai_batch(batch: BatchRecord, now: float) -> dict:
    status = phase(batch, now)
    ended = status in ("completed", "expired", "cancelled")
    done_at = _int(terminal_time(batch)) if ended else None
    finalizing_at = (
        batch.finalizing_at if batch.finalizing_at and now >= batch.finalizing_at else None
    )
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "model": batch.model,
        "errors": {"object": "list", "data": batch.errors} if batch.errors else None,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id if ended else None,
        "error_file_id": batch.error_file_id if ended else None,
        "created_at": int(batch.created_at),
        "in_progress_at": _int(batch.in_progress_at),
        "expires_at": int(batch.created_at + (batch.window_s or DEFAULT_WINDOW_S)),
        "finalizing_at": _int(finalizing_at),
        "completed_at": done_at if status == "completed" else None,
        "failed_at": _int(batch.failed_at),
        "expired_at": done_at if status == "expired" else None,
        "cancelling_at": _int(batch.cancelling_at),
        "cancelled_at": done_at if status == "cancelled" else None,
        "request_counts": openai_counts(batch, status, now),
        "usage": _usage(batch, ended),
        "metadata": batch.metadata,
    }


TOGETHER_STATUS = {"finalizing": "IN_PROGRESS", "cancelling": "IN_PROGRESS"}


def together_batch(batch: BatchRecord, now: float) -> dict:
    """Together's batch job: upper-case status, ISO times, `progress` instead of counts."""
    status = phase(batch, now)
    ended = status in ("completed", "expired", "cancelled")
    counts = openai_counts(batch, status, now)
    done = counts["completed"] + counts["failed"]
    errors = batch.errors or []
    return {
        "id": batch.id,
        "user_id": "user-emulator",
        "input_file_id": batch.input_file_id,
        "file_size_bytes": None,
        "status": TOGETHER_STATUS.get(status, status.upper()),
        "job_deadline": rfc3339(batch.created_at + (batch.window_s or DEFAULT_WINDOW_S)),
        "created_at": rfc3339(batch.created_at),
        "endpoint": batch.endpoint,
        "progress": 100.0 * done / batch.total if batch.total else 0.0,
        "model_id": batch.model,
        "output_file_id": batch.output_file_id if ended else None,
        "error_file_id": batch.error_file_id if ended else None,
        "error": errors[0]["message"] if errors else None,
        "completed_at": rfc3339(terminal_time(batch)) if ended else None,
    }


def anthropic_status(batch: BatchRecord, now: float) -> str:
    status = phase(batch, now)
    if status in ("completed", "expired", "cancelled"):
        return "ended"
    return "canceling" if status == "cancelling" else "in_progress"


def anthropic_batch(batch: BatchRecord, now: float, results_base: str) -> dict:
    status = anthropic_status(batch, now)
    ended = status == "ended"
    counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if ended:
        counts.update(batch.counts)
    else:
        counts["processing"] = batch.total
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": counts,
        "ended_at": rfc3339(terminal_time(batch)) if ended else None,
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.created_at + (batch.window_s or DEFAULT_WINDOW_S)),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(batch.cancelling_at),
        "results_url": f"{results_base}/{batch.id}/results" if ended else None,
    }
