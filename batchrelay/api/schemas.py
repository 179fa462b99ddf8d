"""The JSON the HTTP API takes and returns, as pydantic models (they make /openapi.json)."""

from __future__ import annotations

from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from batchrelay.producer.records import RequestStatus

MAX_BULK = 1000  # items per POST /v1/requests/bulk: one intake round trip
MAX_WAIT_S = 60.0  # longest long-poll of GET /v1/requests/{id}/result


class WebhookCallback(BaseModel):
    """POST the result to this URL, signed as a Standard Webhook."""

    model_config = ConfigDict(extra="forbid")
    url: str


class CeleryTaskCallback(BaseModel):
    """Send the result as the argument of this Celery task (on `queue`, if given)."""

    model_config = ConfigDict(extra="forbid")
    celery_task: str
    queue: str | None = None


class SubmitRequest(BaseModel):
    """One request for a provider's Batch API, as `BatchRelay.submit` takes it."""

    model_config = ConfigDict(extra="forbid")
    endpoint: str = Field(examples=["/v1/chat/completions"])
    body: dict[str, Any]
    callback: WebhookCallback | CeleryTaskCallback | None = None
    idempotency_key: str | None = None
    metadata: dict[str, Any] | None = None


class Submitted(BaseModel):
    id: str
    status: Literal["pending"] = "pending"


class SubmittedMany(BaseModel):
    ids: list[str]


# The producer's RequestStatus, field for field (every field required in an answer).
Status = create_model(
    "Status",
    __doc__="Where a request is now (`BatchRelay.status`).",
    **{name: (kind, ...) for name, kind in get_type_hints(RequestStatus).items()},
)


class BatchRef(BaseModel):
    id: str | None
    provider_batch_id: str | None


class Response(BaseModel):
    status_code: int | None
    body: Any


class Result(BaseModel):
    """The JSON a webhook receives once the request is final."""

    type: str
    id: str
    status: Literal["succeeded", "failed", "cancelled"]
    endpoint: str
    model: str
    provider: str
    response: Response | None
    error: Any
    usage: dict[str, Any] | None
    metadata: dict[str, Any] | None
    idempotency_key: str | None
    tenant: str | None
    attempts: int
    batch: BatchRef
    created_at: str | None
    finished_at: str | None


class Cancelled(BaseModel):
    id: str
    status: Literal["cancelled"] = "cancelled"


class UsageRow(BaseModel):
    date: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    batch_usd: float
    sync_usd: float
    priced: bool


class Usage(BaseModel):
    tenant: str
    since: str | None
    rows: list[UsageRow]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Problem(BaseModel):
    """RFC 9457 problem details; `detail` is the Python exception's message."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    quota: str | None = None
