"""Mistral batch jobs over httpx: `/v1/files` (purpose `batch`) and `/v1/batch/jobs`.

A batch whose JSONL is at most the profile's `inline_max_bytes` travels inline in the create
call (`requests`), streamed from the spool file; a larger one is uploaded and named in
`input_files`. Lines are `{custom_id, body}`; the job names the endpoint and the model, and
`completion_window` becomes its `timeout_hours`.

Reconciling (docs/architecture.md, promise 4): the job carries our batch id in `metadata`,
and the job list filters on it (the SDK sends each metadata key as a query parameter of its
own); the answer is checked again here, so a server that ignores the filter cannot make
another claim's job look like ours. Results come as output and error files; a request that
never ran (TIMEOUT_EXCEEDED, CANCELLED) has no line in either and goes back to pending.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.kinds import MISTRAL
from batchrelay.worker.providers import http
from batchrelay.worker.providers.base import (
    BatchAdapter,
    Claim,
    Outcome,
    ProviderBatch,
    ProviderError,
)
from batchrelay.worker.providers.openai_compat import (
    CLOCK_SKEW_S,
    METADATA_KEY,
    epoch_s,
    result_outcome,
)

log = logging.getLogger(__name__)

LIST_PAGE = 100
UPLOAD_CHUNK = 1024 * 1024
# Mistral's job statuses in the relay's (OpenAI's) words.
STATUSES = {
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCESS": "completed",
    "FAILED": "failed",
    "TIMEOUT_EXCEEDED": "expired",
    "CANCELLATION_REQUESTED": "cancelling",
    "CANCELLED": "cancelled",
}


def parse_job(data: dict[str, Any]) -> ProviderBatch:
    # A status Mistral adds later is kept as it is: not terminal, so the batch is polled on
    # and shows it (and turns up as stuck if it never changes).
    status = str(data["status"])
    files = data.get("input_files") or []
    return ProviderBatch(
        id=data["id"],
        status=STATUSES.get(status, status),
        created_at=epoch_s(data.get("created_at")),
        counts={
            "total": int(data.get("total_requests") or 0),
            "completed": int(data.get("succeeded_requests") or 0),
            "failed": int(data.get("failed_requests") or 0),
        },
        output_file_id=data.get("output_file"),
        error_file_id=data.get("error_file"),
        errors=[{"code": None, "message": e.get("message")} for e in data.get("errors") or []],
        metadata=dict(data.get("metadata") or {}),
        input_ref=files[0] if files else None,
    )


def parse_result_line(line: bytes) -> Outcome | None:
    """One output- or error-file line `{custom_id, response: {status_code?, body}, error?}`.
    Without a `status_code` (Mistral's docs do not promise one) a response is a success
    unless the line has an error; a string error is read as its message."""
    try:
        data = orjson.loads(line)
        response, error = data.get("response"), data.get("error")
        if isinstance(error, str):
            data["error"] = error = {"code": None, "message": error}
        if isinstance(response, dict) and response.get("status_code") is None:
            response["status_code"] = 500 if error else 200
        return result_outcome(data, line)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("unreadable result line skipped (%s): %.200r", type(exc).__name__, line)
        return None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class MistralAdapter(http.RetryingCalls, BatchAdapter):
    kind = MISTRAL

    def __init__(self, profile: ProviderProfile, settings: Settings):
        assert profile.inline_max_bytes is not None
        self.profile = profile
        self.max_retries = settings.http_max_retries
        self.inline_max_bytes = profile.inline_max_bytes
        self.client = http.client(profile, settings.http_timeout_s)

    def close(self) -> None:
        self.client.close()

    def uploads(self, size: int) -> bool:
        return size > self.inline_max_bytes

    def write_input(
        self, out: IO[bytes], endpoint: str, items: Iterable[tuple[str, bytes]]
    ) -> None:
        for rid, body in items:
            out.write(b'{"custom_id":"' + rid.encode() + b'","body":' + body + b"}\n")

    def upload(self, path: Path, *, model: str) -> str:
        form = {"purpose": "batch"}
        form.update(
            {k: v.replace("{model}", model) for k, v in self.profile.extra_upload_fields.items()}
        )

        def send() -> httpx.Response:
            with path.open("rb") as f:
                files = {"file": (path.name, f, "application/jsonl")}
                return self.client.post("/v1/files", data=form, files=files)

        return self._call("upload input file", send).json()["id"]

    def create(
        self, *, input_ref: str | None, path: Path | None, endpoint: str, model: str, bid: str
    ) -> ProviderBatch:
        head = {
            "endpoint": endpoint,
            "model": model,
            "metadata": {METADATA_KEY: bid},
            "timeout_hours": self.profile.completion_window_s // 3600,
        }
        if not input_ref and path is None:
            raise ProviderError("create: a Mistral job needs an input file or its requests")

        def send() -> httpx.Response:
            if input_ref:
                return self.client.post("/v1/batch/jobs", json={**head, "input_files": [input_ref]})
            assert path is not None
            return self.client.post(
                "/v1/batch/jobs",
                content=self._inline_body(head, path),
                headers={"content-type": "application/json"},
            )

        return parse_job(self._call("create batch job", send, idempotent=False).json())

    @staticmethod
    def _inline_body(head: dict[str, Any], path: Path) -> Iterator[bytes]:
        """`{...head, "requests": [line, ...]}` streamed from the JSONL spool file."""
        yield orjson.dumps(head)[:-1] + b',"requests":['
        separator = b""
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield separator + line.rstrip(b"\n")
                    separator = b","
        yield b"]}"

    def find(self, claim: Claim) -> ProviderBatch | None:
        since = _iso(claim.since - CLOCK_SKEW_S)
        page = 0
        while True:
            params = {
                "page": page,
                "page_size": LIST_PAGE,
                "created_after": since,
                METADATA_KEY: claim.bid,
            }
            data = self._call(
                "list batch jobs",
                lambda p=params: self.client.get("/v1/batch/jobs", params=p),
            ).json()
            jobs = data.get("data") or []
            for raw in jobs:
                if (raw.get("metadata") or {}).get(METADATA_KEY) == claim.bid:
                    return parse_job(raw)
            page += 1
            if not jobs or page * LIST_PAGE >= int(data.get("total") or 0):
                return None

    def retrieve(self, provider_id: str) -> ProviderBatch:
        response = self._call(
            "retrieve batch job", lambda: self.client.get(f"/v1/batch/jobs/{provider_id}")
        )
        return parse_job(response.json())

    def cancel(self, provider_id: str) -> ProviderBatch:
        response = self._call(
            "cancel batch job", lambda: self.client.post(f"/v1/batch/jobs/{provider_id}/cancel")
        )
        return parse_job(response.json())

    def results(self, batch: ProviderBatch) -> Iterator[Outcome]:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            for line in http.stream_lines(
                self.client, f"/v1/files/{file_id}/content", f"download {file_id}"
            ):
                outcome = parse_result_line(line)
                if outcome is not None:
                    yield outcome

    def cleanup(self, batch: ProviderBatch) -> None:
        for file_id in (batch.input_ref, batch.output_file_id, batch.error_file_id):
            if file_id:
                http.delete_quietly(self.client, f"/v1/files/{file_id}", f"provider file {file_id}")
