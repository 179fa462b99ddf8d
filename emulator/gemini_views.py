"""Gemini records as the wire shows them: a batch is a long-running Operation whose
`metadata` is the batch resource (the SDK reads only that) and whose `response` repeats the
output once it is done; int64 counts are strings."""

from __future__ import annotations

from typing import Any

from batchrelay.emulator.lifecycle import phase, processed_by, terminal_time
from batchrelay.emulator.store import BatchRecord, FileRecord
from batchrelay.emulator.views import rfc3339

TYPE_PREFIX = "type.googleapis.com/google.ai.generativelanguage.v1main."
RESOURCE = {"generateContent": "GenerateContentBatch", "embedContent": "EmbedContentBatch"}
STATES = {
    "completed": "BATCH_STATE_SUCCEEDED",
    "expired": "BATCH_STATE_EXPIRED",
    "cancelled": "BATCH_STATE_CANCELLED",
    "failed": "BATCH_STATE_FAILED",
}
DONE = frozenset(STATES.values())


def gemini_state(batch: BatchRecord, now: float) -> str:
    """BATCH_STATE_*: PENDING until processing starts, RUNNING until the results exist."""
    status = phase(batch, now)
    if status in STATES:
        return STATES[status]
    if batch.in_progress_at is not None and now < batch.in_progress_at:
        return "BATCH_STATE_PENDING"
    return "BATCH_STATE_RUNNING"


def batch_stats(batch: BatchRecord, state: str, now: float) -> dict[str, str]:
    if state in DONE and batch.counts:
        return {k: str(v) for k, v in batch.counts.items()}
    ran = processed_by(batch, now)
    return {
        "requestCount": str(batch.total),
        "successfulRequestCount": str(ran),
        "pendingRequestCount": str(batch.total - ran),
    }


def gemini_operation(batch: BatchRecord, now: float, inlined: list[dict] | None) -> dict:
    """The Operation for a batch; `inlined` holds the inline results (None: leave them out,
    as the list call does)."""
    state = gemini_state(batch, now)
    resource = RESOURCE[batch.endpoint]
    input_config: dict[str, Any] = (
        {"requests": {}} if batch.inline else {"fileName": f"files/{batch.input_file_id}"}
    )
    meta: dict[str, Any] = {
        "@type": TYPE_PREFIX + resource,
        "model": f"models/{batch.model}",
        "displayName": batch.display_name,
        "inputConfig": input_config,
        "createTime": rfc3339(batch.created_at),
        "updateTime": rfc3339(now if state not in DONE else terminal_time(batch)),
        "batchStats": batch_stats(batch, state, now),
        "state": state,
        "name": f"batches/{batch.id}",
    }
    operation: dict[str, Any] = {"name": f"batches/{batch.id}", "metadata": meta}
    if state not in DONE:
        return operation
    meta["endTime"] = rfc3339(terminal_time(batch))
    operation["done"] = True
    output: dict[str, Any] | None = None
    if batch.output_file_id and not batch.inline:
        output = {"responsesFile": f"files/{batch.output_file_id}"}
    elif batch.output_file_id and inlined is not None:
        output = {"inlinedResponses": {"inlinedResponses": inlined}}
    if output is not None:
        meta["output"] = output
        operation["response"] = {"@type": TYPE_PREFIX + resource + "Output", **output}
    elif state == "BATCH_STATE_FAILED":
        operation["error"] = {"code": 3, "message": "The batch failed."}
    return operation


def gemini_file(record: FileRecord, base_url: str, version: str) -> dict:
    """A File resource; `uri` is where its metadata lives."""
    name = f"files/{record.id}"
    return {
        "name": name,
        "displayName": record.filename,
        "mimeType": record.extra_fields.get("mime_type", "application/octet-stream"),
        "sizeBytes": str(record.bytes),
        "createTime": rfc3339(record.created_at),
        "updateTime": rfc3339(record.created_at),
        "expirationTime": rfc3339(record.expires_at),
        "sha256Hash": record.extra_fields.get("sha256_b64", ""),
        "uri": f"{base_url}/{version}/{name}",
        "state": "ACTIVE",
        "source": "UPLOADED",
    }
