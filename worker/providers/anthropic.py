"""Anthropic-style Message Batches over httpx: Anthropic itself, and resellers that serve the
same API at another path (e.g. `/v1/batches`) for models of any vendor.

Requests travel inline in the create call, so nothing is uploaded: `write_input` streams the JSON
body `{"requests":[{"custom_id":…,"params":<body>},…]}` to the spool file and `create` streams that
file as the request body (docs/architecture.md, promise 8). Results are JSONL at `results_url`.

Reconciling (docs/architecture.md, promise 4). A message batch carries no metadata, so our batch
id cannot travel with it, and the API shows which requests a batch holds only once it has ended
(in its results). `find` lists the batches created since the claim's first create attempt (less
clock skew) that hold as many requests as the claim sent and that no other claim recorded. An
ended one is ours exactly when its first result line names one of our requests (request ids are
unique and in one live batch at most). One still running cannot be told apart yet: the claim
waits (ReconcilePending) rather than pay twice, and decides once it has ended. Only a create
whose answer was lost leaves such a batch, so the wait is rare.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx
import orjson

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.kinds import ANTHROPIC
from batchrelay.worker.providers import http
from batchrelay.worker.providers.base import (
    BatchAdapter,
    Claim,
    Outcome,
    ProviderBatch,
    ProviderError,
    ReconcilePending,
)
from batchrelay.worker.providers.openai_compat import (
    CLOCK_SKEW_S,
    epoch_s,
    error_payload,
)

log = logging.getLogger(__name__)

LIST_PAGE = 100
UPLOAD_CHUNK = 1024 * 1024
COUNT_NAMES = ("processing", "succeeded", "errored", "canceled", "expired")
# Error types worth another attempt, and the HTTP status each type stands for.
RETRYABLE_TYPES = frozenset({"api_error", "overloaded_error", "rate_limit_error", "timeout_error"})
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
NEVER_RAN = {
    "canceled": ("batch_cancelled", "the batch was cancelled before this request ran"),
    "expired": ("batch_expired", "the batch expired before this request ran"),
}


def batch_status(data: dict[str, Any]) -> str:
    """`processing_status` in the relay's (OpenAI's) words; an ended batch is `cancelled`
    after a cancel, `expired` when requests ran out of time, else `completed`."""
    status = data.get("processing_status")
    if status == "canceling":
        return "cancelling"
    if status != "ended":
        return "in_progress"
    if data.get("cancel_initiated_at"):
        return "cancelled"
    if (data.get("request_counts") or {}).get("expired"):
        return "expired"
    return "completed"


def parse_batch(data: dict[str, Any]) -> ProviderBatch:
    counts = data.get("request_counts") or {}
    return ProviderBatch(
        id=data["id"],
        status=batch_status(data),
        created_at=epoch_s(data.get("created_at")),
        counts={name: int(counts.get(name) or 0) for name in COUNT_NAMES},
        results_url=data.get("results_url"),
    )


def parse_result_line(line: bytes) -> Outcome | None:
    """One results line: succeeded → the message; errored → final or retried by error type;
    canceled and expired → back to pending. None (and a log line) if unreadable."""
    try:
        data = orjson.loads(line)
        custom_id, result = data["custom_id"], data["result"]
        kind = result["type"]
        if kind == "succeeded":
            return Outcome(custom_id, "ok", 200, orjson.dumps(result["message"]), result["message"])
        if kind == "errored":
            envelope = result.get("error") or {}
            inner = envelope.get("error")
            error = inner if isinstance(inner, dict) else envelope
            error_type = error.get("type")
            status = ERROR_STATUS.get(error_type or "", 0)
            payload = error_payload(
                code=error_type,
                message=error.get("message") or str(error_type),
                status_code=status or None,
                body=envelope,
            )
            return Outcome(
                custom_id, "retry" if error_type in RETRYABLE_TYPES else "fail", status, payload
            )
        if kind in NEVER_RAN:
            code, message = NEVER_RAN[kind]
            return Outcome(custom_id, "retry", 0, error_payload(code=code, message=message))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        log.warning("unreadable result line skipped (%s): %.200r", type(exc).__name__, line)
        return None
    log.warning("result line of unknown type skipped: %.200r", line)
    return None


class AnthropicAdapter(http.RetryingCalls, BatchAdapter):
    kind = ANTHROPIC

    def __init__(self, profile: ProviderProfile, settings: Settings):
        assert profile.batches_path and profile.anthropic_version
        self.profile = profile
        self.max_retries = settings.http_max_retries
        self.timeout_s = settings.http_timeout_s
        self.batches = profile.batches_path
        self.client = http.client(
            profile,
            settings.http_timeout_s,
            headers={"anthropic-version": profile.anthropic_version},
        )
        self._foreign: httpx.Client | None = None

    def close(self) -> None:
        self.client.close()
        if self._foreign is not None:
            self._foreign.close()

    def write_input(
        self, out: IO[bytes], endpoint: str, items: Iterable[tuple[str, bytes]]
    ) -> None:
        out.write(b'{"requests":[')
        separator = b""
        for rid, body in items:
            out.write(separator + b'{"custom_id":"' + rid.encode() + b'","params":' + body + b"}")
            separator = b","
        out.write(b"]}")

    def upload(self, path: Path, *, model: str) -> str:
        raise ProviderError(
            f"profile {self.profile.name!r}: Anthropic-style batches take their requests inline; "
            "there is no file to upload"
        )

    def create(
        self, *, input_ref: str | None, path: Path | None, endpoint: str, model: str, bid: str
    ) -> ProviderBatch:
        if path is None:
            raise ProviderError("create: Anthropic-style batches need the written request body")
        size = path.stat().st_size

        def send() -> httpx.Response:
            with path.open("rb") as f:
                return self.client.post(
                    self.batches,
                    content=iter(lambda: f.read(UPLOAD_CHUNK), b""),
                    headers={"content-type": "application/json", "content-length": str(size)},
                )

        response = self._call("create message batch", send, idempotent=False)
        return parse_batch(response.json())

    def find(self, claim: Claim) -> ProviderBatch | None:
        undecided: list[str] = []
        for raw in self._list_since(claim.since - CLOCK_SKEW_S):
            pb = parse_batch(raw)
            if sum(pb.counts.values()) != claim.n:
                continue
            owner = claim.recorded(pb.id)
            if owner == claim.bid:
                return pb
            if owner is not None:
                continue
            if not pb.terminal:
                undecided.append(pb.id)
                continue
            first = self._first_custom_id(pb)
            if first is not None and claim.owns(first):
                return pb
        if undecided:
            raise ReconcilePending(
                f"batch {claim.bid}: provider batch(es) {', '.join(undecided)} hold "
                f"{claim.n} requests and belong to no claim; waiting until they end to see "
                "whether one is ours"
            )
        return None

    def _list_since(self, since: float) -> Iterator[dict[str, Any]]:
        """Batches newest first, until one older than `since`."""
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": LIST_PAGE}
            if after:
                params["after_id"] = after
            page = self._call(
                "list message batches", lambda p=params: self.client.get(self.batches, params=p)
            ).json()
            batches = page.get("data") or []
            for raw in batches:
                if epoch_s(raw.get("created_at")) < since:
                    return
                yield raw
            if not page.get("has_more") or not batches:
                return
            after = page.get("last_id") or batches[-1]["id"]

    def retrieve(self, provider_id: str) -> ProviderBatch:
        response = self._call(
            "retrieve message batch", lambda: self.client.get(f"{self.batches}/{provider_id}")
        )
        return parse_batch(response.json())

    def cancel(self, provider_id: str) -> ProviderBatch:
        response = self._call(
            "cancel message batch",
            lambda: self.client.post(f"{self.batches}/{provider_id}/cancel"),
        )
        return parse_batch(response.json())

    def results(self, batch: ProviderBatch) -> Iterator[Outcome]:
        for line in self._result_lines(batch):
            outcome = parse_result_line(line)
            if outcome is not None:
                yield outcome

    def _first_custom_id(self, batch: ProviderBatch) -> str | None:
        """The custom_id of the first readable result line; the download stops there."""
        lines = self._result_lines(batch)
        try:
            for line in lines:
                try:
                    return str(orjson.loads(line)["custom_id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue
            return None
        finally:
            lines.close()

    def _result_lines(self, batch: ProviderBatch) -> Iterator[bytes]:
        url = batch.results_url
        if not url:
            raise ProviderError(f"batch {batch.id} has ended but has no results_url")
        return http.stream_lines(self._results_client(url), url, f"results of {batch.id}")

    def _results_client(self, url: str) -> httpx.Client:
        """The API client for a results_url on the API's own host; a plain client, without
        the API key, for one elsewhere (a download link must not receive our credentials)."""
        ours, theirs = urlsplit(self.profile.base_url), urlsplit(url)
        if (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc):
            return self.client
        if self._foreign is None:
            self._foreign = httpx.Client(
                timeout=httpx.Timeout(self.timeout_s, connect=10.0), follow_redirects=True
            )
        return self._foreign

    def cleanup(self, batch: ProviderBatch) -> None:
        http.delete_quietly(self.client, f"{self.batches}/{batch.id}", f"message batch {batch.id}")
