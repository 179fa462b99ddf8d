"""Gemini Developer API Batch Mode over httpx (`kind = "gemini"`).

A batch is created on its model, `models/{m}:batchGenerateContent` (embeddings:
`:asyncBatchEmbedContent`). Requests travel inline in the create call while the body stays under
Google's 20 MB create limit; a larger batch is first uploaded as a JSONL file through the
resumable Files API and named by the create call. `write_input` streams the file form
(`{"key": <request id>, "request": <body>}` lines) to the spool file; an inline create re-reads
it into `{"request": …, "metadata": {"key": …}}` entries, streamed, so memory stays flat.

Results come back in `inlinedResponses` (inline batches) or a responses file, in input order; a
line holds a `response` or an `error` (a google.rpc.Status). EXPIRED and CANCELLED batches have
no results, so every request goes back to pending.

Reconciling (docs/architecture.md, promise 4). Creates are not idempotent, and a batch carries no
metadata, but its `displayName` is ours to choose: it is our batch id, and `find` lists the
batches for one with that name before any re-create.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.kinds import GEMINI, MB
from batchrelay.worker.providers import http
from batchrelay.worker.providers.base import (
    BatchAdapter,
    Claim,
    Outcome,
    ProviderBatch,
    ProviderError,
)
from batchrelay.worker.providers.openai_compat import epoch_s, error_payload

log = logging.getLogger(__name__)

#: Google's limit on a create request's size; an inline body must stay below it.
INLINE_LIMIT = 20 * MB
UPLOAD_CHUNK = 8 * MB
STREAM_CHUNK = 256 * 1024
LIST_PAGE = 100
CREATE_METHODS = {
    "generateContent": "batchGenerateContent",
    "embedContent": "asyncBatchEmbedContent",
}
STATES = {
    "BATCH_STATE_PENDING": "validating",
    "BATCH_STATE_RUNNING": "in_progress",
    "BATCH_STATE_SUCCEEDED": "completed",
    "BATCH_STATE_FAILED": "failed",
    "BATCH_STATE_CANCELLED": "cancelled",
    "BATCH_STATE_EXPIRED": "expired",
}
COUNT_NAMES = {
    "requestCount": "total",
    "successfulRequestCount": "completed",
    "failedRequestCount": "failed",
    "pendingRequestCount": "pending",
}
# google.rpc.Code names worth another attempt; the HTTP status each stands for.
RETRYABLE_CODES = frozenset({"RESOURCE_EXHAUSTED", "INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED"})
LINE_HEAD = b'{"key":"'
LINE_MID = b'","request":'


def parse_operation(data: dict[str, Any]) -> ProviderBatch:
    """A batch Operation: what the relay needs is in `metadata` (the SDK reads it there too)."""
    meta = data.get("metadata") or {}
    stats = meta.get("batchStats") or {}
    output = meta.get("output") or {}
    error = data.get("error")
    return ProviderBatch(
        id=data.get("name") or meta["name"],
        status=STATES.get(meta.get("state", ""), "in_progress"),
        created_at=epoch_s(meta.get("createTime")),
        counts={ours: int(stats.get(theirs) or 0) for theirs, ours in COUNT_NAMES.items()},
        output_file_id=output.get("responsesFile"),
        errors=[error] if isinstance(error, dict) else [],
        metadata={"displayName": str(meta.get("displayName") or "")},
        input_ref=(meta.get("inputConfig") or {}).get("fileName"),
    )


def parse_result(data: Any) -> Outcome | None:
    """One result (a responses-file line or an inlined response); None (and a log line) when it
    cannot be read. Its request id is `key` (file) or `metadata.key` (inline)."""
    try:
        key = data.get("key") or (data.get("metadata") or {})["key"]
        response, error = data.get("response"), data.get("error")
        if isinstance(response, dict) and not error:
            return Outcome(key, "ok", 200, orjson.dumps(response), response)
        if isinstance(error, dict):
            code = error.get("status")
            status = int(error.get("code") or 0)
            payload = error_payload(
                code=code,
                message=error.get("message") or str(code),
                status_code=status or None,
                body=error,
            )
            retry = code in RETRYABLE_CODES or http.transient(status)
            return Outcome(key, "retry" if retry else "fail", status, payload)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("unreadable result skipped (%s): %.200r", type(exc).__name__, data)
        return None
    log.warning("result with neither response nor error skipped: %.200r", data)
    return None


def inline_chunks(path: Path) -> Iterator[bytes]:
    """The inline create body's `requests` entries, re-read from the file-form spool (lines
    this adapter wrote, so their key and body are cut out, never re-encoded)."""
    separator = b""
    with path.open("rb") as f:
        for line in f:
            key, body = split_line(line)
            yield separator + b'{"request":' + body + b',"metadata":{"key":"' + key + b'"}}'
            separator = b","


def split_line(line: bytes) -> tuple[bytes, bytes]:
    """(key, request body) of a line written by `GeminiAdapter.write_input`."""
    end = line.index(LINE_MID)
    return line[len(LINE_HEAD) : end], line[end + len(LINE_MID) : line.rindex(b"}")]


class GeminiAdapter(http.RetryingCalls, BatchAdapter):
    kind = GEMINI
    #: Inline create bodies stay below this; a larger batch goes as an uploaded file.
    inline_limit = INLINE_LIMIT

    def __init__(self, profile: ProviderProfile, settings: Settings):
        assert profile.api_version
        self.profile = profile
        self.max_retries = settings.http_max_retries
        self.version = profile.api_version
        self.client = http.client(profile, settings.http_timeout_s)
        # Input files uploaded for creates not yet answered, by batch id: a retried create
        # names the same file instead of uploading another.
        self._uploaded: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()

    def _path(self, name: str) -> str:
        return f"/{self.version}/{name}"

    def write_input(
        self, out: IO[bytes], endpoint: str, items: Iterable[tuple[str, bytes]]
    ) -> None:
        for rid, body in items:
            out.write(LINE_HEAD + rid.encode() + LINE_MID + body + b"}\n")

    def upload(self, path: Path, *, model: str) -> str:
        """A resumable upload: a start call returns the session URL, the bytes follow in
        chunks (the last one finalizes); returns the file's name, `files/…`."""
        size = path.stat().st_size
        start = self._call(
            "start input upload",
            lambda: self.client.post(
                f"/upload/{self.version}/files",
                json={"file": {"displayName": path.name}},
                headers={
                    "x-goog-upload-protocol": "resumable",
                    "x-goog-upload-command": "start",
                    "x-goog-upload-header-content-length": str(size),
                    "x-goog-upload-header-content-type": "application/jsonl",
                },
            ),
        )
        url = start.headers.get("x-goog-upload-url")
        if not url:
            raise ProviderError("start input upload: the answer has no x-goog-upload-url")
        response, offset = start, 0
        with path.open("rb") as f:
            while True:
                chunk = f.read(UPLOAD_CHUNK)
                last = offset + len(chunk) >= size
                headers = {
                    "x-goog-upload-command": "upload, finalize" if last else "upload",
                    "x-goog-upload-offset": str(offset),
                }
                response = self._call(
                    f"upload input bytes at {offset}",
                    lambda c=chunk, h=headers: self.client.post(url, content=c, headers=h),
                )
                offset += len(chunk)
                if last:
                    break
        if response.headers.get("x-goog-upload-status") != "final":
            raise ProviderError("upload input file: the upload was not finalized", retryable=True)
        return response.json()["file"]["name"]

    def create(
        self, *, input_ref: str | None, path: Path | None, endpoint: str, model: str, bid: str
    ) -> ProviderBatch:
        if path is None:
            raise ProviderError("create: Gemini batches need the written input")
        head = b'{"batch":{"displayName":' + orjson.dumps(bid) + b',"inputConfig":'
        open_inline, close = b'{"requests":{"requests":[', b"]}}}}"
        size = self._inline_size(path, len(head) + len(open_inline) + len(close))
        if size is not None:

            def body() -> Iterator[bytes]:
                yield head + open_inline
                yield from inline_chunks(path)
                yield close

        else:
            if bid not in self._uploaded:
                self._uploaded[bid] = self.upload(path, model=model)
            file_body = head + orjson.dumps({"fileName": self._uploaded[bid]}) + b"}}"
            size = len(file_body)

            def body() -> Iterator[bytes]:
                yield file_body

        url = self._path(f"models/{model}:{CREATE_METHODS[endpoint]}")

        def send() -> httpx.Response:
            return self.client.post(
                url,
                content=_buffered(body()),
                headers={"content-type": "application/json", "content-length": str(size)},
            )

        try:
            response = self._call("create batch", send, idempotent=False)
        except ProviderError as exc:
            if not exc.retryable:  # refused: a later attempt starts afresh
                self._uploaded.pop(bid, None)
            raise
        self._uploaded.pop(bid, None)
        return parse_operation(response.json())

    def _inline_size(self, path: Path, envelope: int) -> int | None:
        """The inline create body's exact size, or None when it would reach the create limit
        (an inline entry is never smaller than its file line, so a large file stops early)."""
        size = envelope
        if path.stat().st_size + size >= self.inline_limit:
            return None
        for chunk in inline_chunks(path):
            size += len(chunk)
            if size >= self.inline_limit:
                return None
        return size

    def find(self, claim: Claim) -> ProviderBatch | None:
        """The batch whose displayName is our batch id. Every page is read: Google documents
        no list order, so no page can be assumed older than the claim."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"pageSize": LIST_PAGE}
            if token:
                params["pageToken"] = token
            page = self._call(
                "list batches",
                lambda p=params: self.client.get(self._path("batches"), params=p),
            ).json()
            for raw in page.get("operations") or []:
                if (raw.get("metadata") or {}).get("displayName") == claim.bid:
                    return parse_operation(raw)
            token = page.get("nextPageToken")
            if not token:
                return None

    def retrieve(self, provider_id: str) -> ProviderBatch:
        return parse_operation(self._get(provider_id))

    def _get(self, provider_id: str) -> dict[str, Any]:
        return self._call("retrieve batch", lambda: self.client.get(self._path(provider_id))).json()

    def cancel(self, provider_id: str) -> ProviderBatch:
        self._call("cancel batch", lambda: self.client.post(self._path(f"{provider_id}:cancel")))
        return self.retrieve(provider_id)

    def results(self, batch: ProviderBatch) -> Iterator[Outcome]:
        if batch.status != "completed":
            return  # EXPIRED, CANCELLED and FAILED batches have no results
        if batch.output_file_id:
            url = self._path(f"{batch.output_file_id}:download?alt=media")
            for line in http.stream_lines(self.client, url, f"download {batch.output_file_id}"):
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.warning("unreadable result line skipped: %.200r", line)
                    continue
                outcome = parse_result(data)
                if outcome is not None:
                    yield outcome
            return
        # Inline results live in the batch itself (the list call leaves them out).
        output = (self._get(batch.id).get("metadata") or {}).get("output") or {}
        inlined = output.get("inlinedResponses") or output.get("inlinedEmbedContentResponses")
        for item in (inlined or {}).get("inlinedResponses") or []:
            outcome = parse_result(item)
            if outcome is not None:
                yield outcome

    def cleanup(self, batch: ProviderBatch) -> None:
        for file_name in (batch.input_ref, batch.output_file_id):
            if file_name:
                http.delete_quietly(self.client, self._path(file_name), f"file {file_name}")
        http.delete_quietly(self.client, self._path(batch.id), f"batch {batch.id}")


def _buffered(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Small pieces joined into network-sized writes."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        pending.append(chunk)
        size += len(chunk)
        if size >= STREAM_CHUNK:
            yield b"".join(pending)
            pending, size = [], 0
    if pending:
        yield b"".join(pending)
