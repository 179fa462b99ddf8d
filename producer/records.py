"""The request record in Redis, and the one JSON shape a result takes everywhere.

The same `result_payload` is the body of a webhook, the argument of a Celery-task callback and
what `result()` returns, so an app can switch callback kinds without changing its parser.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

PENDING = "pending"
IN_BATCH = "in_batch"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"
FINAL_STATES = frozenset({SUCCEEDED, FAILED, CANCELLED})

RequestState = Literal["pending", "in_batch", "succeeded", "failed", "cancelled"]

# Fields a status() call reads: everything but the (possibly large) body and result. The
# profile, endpoint and model are the group's (`{p}:groups`), not repeated in every record.
STATUS_FIELDS = (
    "state",
    "attempt",
    "created",
    "finished",
    "batch",
    "pbatch",
    "status_code",
    "error",
    "last_error",
    "callback",
    "dstate",
    "dattempts",
    "dlast",
    "idem",
    "served_by",
    "tenant",
)
RESULT_FIELDS = (*STATUS_FIELDS, "result", "metadata")


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _s(value: bytes | None) -> str | None:
    return None if value is None or value == b"" else value.decode()


def _i(value: bytes | None) -> int | None:
    return None if value is None or value == b"" else int(value)


def _j(value: bytes | None) -> Any:
    return None if value is None or value == b"" else orjson.loads(value)


@dataclass(frozen=True)
class RequestStatus:
    """Where one request is now; `state` is one of pending, in_batch, succeeded, failed,
    cancelled."""

    id: str
    state: RequestState
    profile: str
    endpoint: str
    model: str
    attempt: int
    created_at: str | None
    finished_at: str | None
    batch_id: str | None
    provider_batch_id: str | None
    status_code: int | None
    error: Any
    last_error: Any
    delivery: str | None
    delivery_attempts: int
    last_delivery_error: str | None
    tenant: str | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class StateCounts:
    """How many of the requests a `wait` follows are in each state; `missing` ones have no
    record (never stored, or expired after retention)."""

    pending: int = 0
    in_batch: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    missing: int = 0

    @property
    def open(self) -> int:
        return self.pending + self.in_batch


def status_from_fields(
    rid: str, group: dict[str, str], values: list[bytes | None]
) -> RequestStatus:
    f = dict(zip(STATUS_FIELDS, values, strict=True))
    return RequestStatus(
        id=rid,
        state=_s(f["state"]) or PENDING,  # type: ignore[arg-type]
        profile=_s(f["served_by"]) or group["profile"],
        endpoint=group["endpoint"],
        model=group["model"],
        attempt=_i(f["attempt"]) or 0,
        created_at=iso(_i(f["created"])),
        finished_at=iso(_i(f["finished"])),
        batch_id=_s(f["batch"]),
        provider_batch_id=_s(f["pbatch"]),
        status_code=_i(f["status_code"]),
        error=_j(f["error"]),
        last_error=_j(f["last_error"]),
        delivery=_s(f["dstate"]),
        delivery_attempts=_i(f["dattempts"]) or 0,
        last_delivery_error=_s(f["dlast"]),
        tenant=_s(f["tenant"]),
    )


def response_usage(body: Any) -> dict[str, Any] | None:
    """A response's `usage`; Gemini's `usageMetadata` in the same words (input_tokens,
    output_tokens, total_tokens; thinking tokens count as output, as Google bills them)."""
    if not isinstance(body, dict):
        return None
    meta = body.get("usageMetadata")
    if "usage" in body or not isinstance(meta, dict):
        return body.get("usage")
    output = sum(int(meta.get(k) or 0) for k in ("candidatesTokenCount", "thoughtsTokenCount"))
    prompt = int(meta.get("promptTokenCount") or 0)
    return {
        "input_tokens": prompt,
        "output_tokens": output,
        "total_tokens": int(meta.get("totalTokenCount") or prompt + output),
    }


def result_payload(rid: str, group: dict[str, str], values: list[bytes | None]) -> dict[str, Any]:
    """The JSON a callback receives for a final request (values in RESULT_FIELDS order)."""
    f = dict(zip(RESULT_FIELDS, values, strict=True))
    state = _s(f["state"])
    body = _j(f["result"])
    status_code = _i(f["status_code"])
    usage = response_usage(body)
    return {
        "type": f"request.{state}",
        "id": rid,
        "status": state,
        "endpoint": group["endpoint"],
        "model": group["model"],
        "provider": _s(f["served_by"]) or group["profile"],
        "response": None if body is None else {"status_code": status_code, "body": body},
        "error": _j(f["error"]),
        "usage": usage,
        "metadata": _j(f["metadata"]),
        "idempotency_key": _s(f["idem"]),
        "tenant": _s(f["tenant"]),
        "attempts": _i(f["attempt"]) or 0,
        "batch": {"id": _s(f["batch"]), "provider_batch_id": _s(f["pbatch"])},
        "created_at": iso(_i(f["created"])),
        "finished_at": iso(_i(f["finished"])),
    }
