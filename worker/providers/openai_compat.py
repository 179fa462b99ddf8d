"""OpenAI Files + Batches over httpx: OpenAI itself, every OpenAI-compatible reseller, the
OpenAI-style vendors (Groq, Together: config/kinds.py `VENDORS`), Azure.

A vendor differs in facts its profile names: the upload path, purpose and a file-name field,
input lines without `method`/`url`, and batches without `metadata` (reconciling then matches
the claim's input file, which only that claim uploaded). Together's create answers
`{job, warning}` and its statuses are upper-case; both are read as they come.

Reseller differences are configuration: extra upload form fields (`{model}` is replaced by
the batch's model, e.g. LiteLLM's `target_model_names`), the input file's lifetime (asked for
at upload; at most the reseller's cap) and the auth header. Azure differs in its paths
(`/openai/v1/...`, or `/openai/...?api-version=`), its `api-key` header, a model that is a
deployment name, jobs that never expire and an error file on every finished job (empty
when nothing failed); the shared code reads all of these as they come.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.kinds import AZURE, OPENAI
from batchrelay.worker.providers import http
from batchrelay.worker.providers.base import (
    BatchAdapter,
    Claim,
    Outcome,
    ProviderBatch,
)

log = logging.getLogger(__name__)

METADATA_KEY = "batchrelay_batch"
RETRYABLE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled"})
LIST_PAGE = 100
# Provider clocks and ours differ; look this much further back when reconciling.
CLOCK_SKEW_S = 600.0


def epoch_s(value: Any) -> float:
    """A timestamp as epoch seconds: unix numbers, or RFC 3339 strings (Anthropic, and Azure's
    older API versions)."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return 0.0
    return 0.0


def parse_batch(data: dict[str, Any]) -> ProviderBatch:
    errors = data.get("errors") or {}
    counts = data.get("request_counts") or {}
    return ProviderBatch(
        id=data["id"],
        status=str(data["status"]).lower(),  # Azure's older versions say "Validating"
        created_at=epoch_s(data.get("created_at")),
        counts={k: int(v or 0) for k, v in counts.items()},
        output_file_id=data.get("output_file_id"),
        error_file_id=data.get("error_file_id"),
        errors=list(errors.get("data") or []) if isinstance(errors, dict) else [],
        metadata=dict(data.get("metadata") or {}),
        input_ref=data.get("input_file_id"),
    )


def error_payload(
    *, code: str | None, message: str, status_code: int | None = None, body: Any = None
) -> bytes:
    """The `error` a caller sees for a failed request, whatever the provider's shape."""
    return orjson.dumps(
        {"code": code, "message": message, "status_code": status_code, "body": body}
    )


def parse_result_line(line: bytes) -> Outcome | None:
    """One output- or error-file line; None (and a log line) for one that cannot be read."""
    try:
        return result_outcome(orjson.loads(line), line)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("unreadable result line skipped (%s): %.200r", type(exc).__name__, line)
        return None


def result_outcome(data: dict[str, Any], line: bytes) -> Outcome | None:
    """The outcome of one parsed result line `{custom_id, response: {status_code, body},
    error}`; raises on a malformed line, None (and a log line) for one with neither part."""
    custom_id = data["custom_id"]
    response, error = data.get("response"), data.get("error")
    if response:
        status = int(response["status_code"])
        body = response.get("body")
        if 200 <= status < 300:
            return Outcome(custom_id, "ok", status, orjson.dumps(body), body)
        err = body.get("error") if isinstance(body, dict) else None
        if err is None and isinstance(body, dict) and body.get("object") == "error":
            err = body  # Mistral's envelope: the error fields at the top level
        err = err if isinstance(err, dict) else {}
        payload = error_payload(
            code=err.get("code") or err.get("type"),
            message=err.get("message") or f"HTTP {status}",
            status_code=status,
            body=body,
        )
        kind = "retry" if status == 429 or status >= 500 else "fail"
        return Outcome(custom_id, kind, status, payload)
    if error:
        code = error.get("code")
        payload = error_payload(code=code, message=error.get("message") or str(code))
        return Outcome(custom_id, "retry" if code in RETRYABLE_LINE_CODES else "fail", 0, payload)
    log.warning("result line with neither response nor error skipped: %.200r", line)
    return None


class OpenAIAdapter(http.RetryingCalls, BatchAdapter):
    kind = OPENAI

    def __init__(self, profile: ProviderProfile, settings: Settings):
        self.profile = profile
        self.vendor = profile.vendor_facts
        self.max_retries = settings.http_max_retries
        self.client = self._client(settings.http_timeout_s)

    def _client(self, timeout_s: float) -> httpx.Client:
        return http.client(self.profile, timeout_s)

    def batch_endpoint(self, endpoint: str) -> str:
        """The `endpoint` value a create call names (the lines keep the logical one)."""
        return endpoint

    def close(self) -> None:
        self.client.close()

    def write_input(
        self, out: IO[bytes], endpoint: str, items: Iterable[tuple[str, bytes]]
    ) -> None:
        head = b'{"custom_id":"'
        mid = b'","method":"POST","url":' + orjson.dumps(endpoint) + b',"body":'
        if not self.vendor.lines_name_method_url:
            mid = b'","body":'
        for rid, body in items:
            out.write(head + rid.encode() + mid + body + b"}\n")

    def upload(self, path: Path, *, model: str) -> str:
        form = {"purpose": self.vendor.upload_purpose}
        if self.vendor.upload_name_field:
            form[self.vendor.upload_name_field] = path.name
        form.update(
            {k: v.replace("{model}", model) for k, v in self.profile.extra_upload_fields.items()}
        )
        if self.profile.upload_expiry_s is not None:
            form["expires_after[anchor]"] = "created_at"
            form["expires_after[seconds]"] = str(self.profile.upload_expiry_s)

        def send() -> httpx.Response:
            with path.open("rb") as f:
                files = {"file": (path.name, f, "application/jsonl")}
                return self.client.post(self.vendor.upload_path, data=form, files=files)

        return self._call("upload input file", send).json()["id"]

    def create(
        self, *, input_ref: str | None, path: Path | None, endpoint: str, model: str, bid: str
    ) -> ProviderBatch:
        body: dict[str, Any] = {
            "input_file_id": input_ref,
            "endpoint": self.batch_endpoint(endpoint),
            "completion_window": self.profile.completion_window,
        }
        if self.vendor.metadata:
            body["metadata"] = {METADATA_KEY: bid}
        response = self._call(
            "create batch", lambda: self.client.post("/batches", json=body), idempotent=False
        ).json()
        # Together wraps the new batch: {"job": {...}, "warning": ...}.
        job = response.get("job")
        return parse_batch(job if isinstance(job, dict) else response)

    def find(self, claim: Claim) -> ProviderBatch | None:
        """Our batch id travels in the batch's metadata, so listing finds it exactly; a
        vendor without metadata is matched on the input file only this claim uploaded."""
        bid, since = claim.bid, claim.since
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE}
            if after:
                params["after"] = after
            page = self._call(
                "list batches", lambda p=params: self.client.get("/batches", params=p)
            )
            data = page.json()
            if isinstance(data, list):  # Together lists every batch as a bare array
                data = {"data": data, "has_more": False}
            batches = data.get("data") or []
            for raw in batches:
                if (raw.get("metadata") or {}).get(METADATA_KEY) == bid or (
                    claim.input_ref and raw.get("input_file_id") == claim.input_ref
                ):
                    return parse_batch(raw)
            if not data.get("has_more") or not batches:
                return None
            if min(epoch_s(b.get("created_at")) for b in batches) < since - CLOCK_SKEW_S:
                return None
            after = batches[-1]["id"]

    def retrieve(self, provider_id: str) -> ProviderBatch:
        response = self._call("retrieve batch", lambda: self.client.get(f"/batches/{provider_id}"))
        return parse_batch(response.json())

    def cancel(self, provider_id: str) -> ProviderBatch:
        response = self._call(
            "cancel batch", lambda: self.client.post(f"/batches/{provider_id}/cancel")
        )
        return parse_batch(response.json())

    def results(self, batch: ProviderBatch) -> Iterator[Outcome]:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                yield from self._stream_file(file_id)

    def _stream_file(self, file_id: str) -> Iterator[Outcome]:
        for line in http.stream_lines(
            self.client, f"/files/{file_id}/content", f"download {file_id}"
        ):
            outcome = parse_result_line(line)
            if outcome is not None:
                yield outcome

    def cleanup(self, batch: ProviderBatch) -> None:
        for file_id in (batch.input_ref, batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            http.delete_quietly(self.client, f"/files/{file_id}", f"provider file {file_id}")


class AzureAdapter(OpenAIAdapter):
    """Azure OpenAI: `{base_url}/openai/v1/...`, or `{base_url}/openai/...?api-version=` when
    the profile names an `api_version` (the legacy API, whose create examples name the
    endpoint without `/v1`)."""

    kind = AZURE

    def _client(self, timeout_s: float) -> httpx.Client:
        version = self.profile.api_version
        if version:
            base, params = f"{self.profile.base_url}/openai", {"api-version": version}
        else:
            base, params = f"{self.profile.base_url}/openai/v1", None
        return http.client(self.profile, timeout_s, base_url=base, params=params)

    def batch_endpoint(self, endpoint: str) -> str:
        if self.profile.api_version:
            return endpoint.removeprefix("/v1")
        return endpoint
