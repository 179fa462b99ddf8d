"""Gemini Developer API Batch Mode and Files API routes, under /v1beta/ (and /v1/, routed here by
`app.GeminiPathMiddleware` because OpenAI's paths share that prefix).

  POST   {ver}/models/{m}:batchGenerateContent | :asyncBatchEmbedContent   create
  GET    {ver}/batches?pageSize=&pageToken=                                  list
  GET    {ver}/batches/{id}                                                  get
  POST   {ver}/batches/{id}:cancel                                           cancel
  DELETE {ver}/batches/{id}   (also POST or GET {id}:delete, as in the docs' sample)
  POST   /upload/{ver}/files                 resumable upload: start, then chunks at the URL
  GET    {ver}/files/{id}, DELETE {ver}/files/{id}
  GET    {ver}/files/{id}:download?alt=media and /download/{ver}/files/{id}:download?alt=media

The key comes in `x-goog-api-key` (or `?key=`); upload chunks carry none, their URL is the
capability, as at Google. Errors are google.rpc.Status envelopes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Request, Response

from batchrelay.emulator.bodies import bounded_stream, read_bounded
from batchrelay.emulator.downloads import stored_file
from batchrelay.emulator.engine import (
    GEMINI_FILE_LIFETIME_S,
    GEMINI_OUTPUT_PURPOSE,
    GEMINI_UPLOAD_PURPOSE,
    CancelConflict,
    Engine,
)
from batchrelay.emulator.errors import ApiError, server_error_body
from batchrelay.emulator.gemini_views import gemini_file, gemini_operation
from batchrelay.emulator.store import BatchRecord, FileRecord
from batchrelay.emulator.wire import json_response

VERSIONS = ("v1beta", "v1")
VERSION_SCOPE_KEY = "emulator.gemini_version"
ORIGINAL_PATH_KEY = "emulator.original_path"
CREATE_ACTIONS = {
    "batchGenerateContent": "generateContent",
    "asyncBatchEmbedContent": "embedContent",
}
MAX_START_BODY = 64 * 1024
PAGE_DEFAULT, PAGE_MAX = 50, 1000
NO_KEY = (
    "Method doesn't allow unregistered callers (callers without established identity). "
    "Please use API Key or other form of API consumer identity to call this API."
)
BAD_KEY = "API key not valid. Please pass a valid API key."


def _error(status: int, message: str, code: str | None = None) -> ApiError:
    return ApiError(status, message, shape="gemini", code=code)


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _version(request: Request, version: str) -> str:
    return request.scope.get(VERSION_SCOPE_KEY, version)


async def gemini_guard(request: Request) -> None:
    """The API key (`x-goog-api-key` or `?key=`), then injected HTTP errors."""
    engine = _engine(request)
    engine.count("api_requests")
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise _error(403, NO_KEY)
    if key not in engine.config.api_keys:
        raise _error(400, BAD_KEY)
    _inject_fault(request)


def _inject_fault(request: Request) -> None:
    engine = _engine(request)
    path = request.scope.get(ORIGINAL_PATH_KEY, request.url.path)
    fault = engine.faults.http_fault(request.method, path)
    if fault is None:
        return
    status, retry_after = fault
    headers = {"retry-after": str(math.ceil(retry_after))} if retry_after is not None else {}
    raise ApiError(status, "injected", headers=headers, body=server_error_body("gemini", status))


def _json_object(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise _error(400, "Invalid JSON payload received. Unexpected token.") from None
    if not isinstance(body, dict):
        raise _error(400, "Invalid JSON payload received. Expected an object.")
    return body


def _field(obj: dict, camel: str, snake: str) -> Any:
    """A field in either spelling: the SDK sends camelCase, the REST docs' samples snake_case."""
    return obj[camel] if camel in obj else obj.get(snake)


def _batch(request: Request, batch_id: str) -> BatchRecord:
    batch = _engine(request).store.get_batch(batch_id)
    if batch is None or batch.shape != "gemini":
        raise _error(404, f"Batch batches/{batch_id} not found.")
    return batch


def _gemini_file(request: Request, file_id: str) -> FileRecord:
    record = _engine(request).store.get_file(file_id)
    if record is None or record.purpose not in (GEMINI_UPLOAD_PURPOSE, GEMINI_OUTPUT_PURPOSE):
        raise _error(
            403,
            f"You do not have permission to access the File {file_id} or it may not exist.",
        )
    return record


def _inlined(engine: Engine, batch: BatchRecord) -> list[dict] | None:
    """An inline batch's results as `inlinedResponses` entries (a line the malformed-output
    fault spoilt is left out: inline results cannot carry it)."""
    if not batch.inline or not batch.output_file_id:
        return None
    entries = []
    with open(engine.store.blob_path(batch.output_file_id), "rb") as src:
        for raw in src:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            entries.append({k: line[k] for k in ("response", "error", "metadata") if k in line})
    return entries


def _operation(request: Request, batch: BatchRecord) -> Response:
    engine = _engine(request)
    return json_response(gemini_operation(batch, time.time(), _inlined(engine, batch)))


def _inline_spool(engine: Engine, requests: Any) -> tuple[Path, int]:
    """Inline requests as JSONL in a spool file; 400 naming the first bad entry."""
    where = "batch.input_config.requests.requests"
    if not isinstance(requests, list) or not requests:
        raise _error(400, f"* {where}: at least one request is required")
    spool = engine.store.tmp_path(".jsonl")
    with open(spool, "wb") as out:
        for i, item in enumerate(requests):
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                out.close()
                spool.unlink(missing_ok=True)
                raise _error(400, f"* {where}[{i}].request: required field is missing")
            entry = {k: item[k] for k in ("request", "metadata") if k in item}
            out.write(orjson.dumps(entry) + b"\n")
    return spool, len(requests)


def _count_lines(path: Path) -> int:
    with open(path, "rb") as src:
        return sum(1 for line in src if line.strip())


def batch_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(gemini_guard)])

    @router.post("/models/{target}")
    async def create(request: Request, target: str) -> Response:
        engine = _engine(request)
        model, _, action = target.rpartition(":")
        method = CREATE_ACTIONS.get(action)
        if method is None or not model:
            raise _error(404, f"Method models/{target} is not found.")
        ver = _version(request, request.url.path.split("/")[1])
        if not engine.known_model(model):
            raise _error(
                404,
                f"models/{model} is not found for API version {ver}, or is not supported "
                f"for {action}.",
            )
        raw = await read_bounded(request, engine.config.max_gemini_body_bytes, "gemini")
        body = await anyio.to_thread.run_sync(_json_object, raw)
        batch = body.get("batch")
        if not isinstance(batch, dict):
            raise _error(400, "* batch: required field is missing")
        display = _field(batch, "displayName", "display_name") or ""
        input_config = _field(batch, "inputConfig", "input_config")
        if not isinstance(display, str) or not isinstance(input_config, dict):
            raise _error(400, "* batch.input_config: required field is missing")
        file_name = _field(input_config, "fileName", "file_name")
        requests = input_config.get("requests")
        if (file_name is None) == (requests is None):
            raise _error(400, "* batch.input_config: exactly one of file_name or requests")
        if file_name is not None:
            if not isinstance(file_name, str) or not file_name.startswith("files/"):
                raise _error(400, f"* batch.input_config.file_name: invalid {file_name!r}")
            record = _gemini_file(request, file_name.removeprefix("files/"))
            total = await anyio.to_thread.run_sync(_count_lines, engine.store.blob_path(record.id))
            if total == 0:
                raise _error(400, f"Input file {file_name} has no requests.")
            created = engine.create_gemini_batch(
                method=method, model=model, display_name=display, total=total, file_id=record.id
            )
        else:
            inner = requests.get("requests") if isinstance(requests, dict) else None
            spool, total = await anyio.to_thread.run_sync(_inline_spool, engine, inner)
            created = engine.create_gemini_batch(
                method=method, model=model, display_name=display, total=total, inline_spool=spool
            )
        return _operation(request, created)

    @router.get("/batches")
    def list_batches(request: Request) -> Response:
        size = _page_size(request.query_params.get("pageSize"))
        batches = _engine(request).store.list_batches("gemini")
        token = request.query_params.get("pageToken")
        ids = [b.id for b in batches]
        start = ids.index(token) + 1 if token in ids else (len(ids) if token else 0)
        page = batches[start : start + size]
        now = time.time()
        body: dict[str, Any] = {"operations": [gemini_operation(b, now, None) for b in page]}
        if start + size < len(batches) and page:
            body["nextPageToken"] = page[-1].id
        return json_response(body)

    @router.get("/batches/{name}")
    def get(request: Request, name: str) -> Response:
        batch_id, _, verb = name.partition(":")
        if verb == "delete":
            return _delete(request, batch_id)
        if verb:
            raise _error(404, f"Method batches/{name} is not found.")
        return _operation(request, _batch(request, batch_id))

    @router.post("/batches/{name}")
    def post(request: Request, name: str) -> Response:
        batch_id, _, verb = name.partition(":")
        if verb == "delete":
            return _delete(request, batch_id)
        if verb != "cancel":
            raise _error(404, f"Method batches/{name} is not found.")
        _batch(request, batch_id)
        try:
            _engine(request).cancel(batch_id, "gemini")
        except CancelConflict as exc:
            raise _error(
                400,
                f"Batch batches/{batch_id} has already ended ({exc.status}).",
                "FAILED_PRECONDITION",
            ) from None
        return json_response({})

    @router.delete("/batches/{name}")
    def delete(request: Request, name: str) -> Response:
        return _delete(request, name)

    @router.get("/files/{name}")
    def get_file(request: Request, name: str) -> Response:
        file_id, _, verb = name.partition(":")
        if verb == "download":
            return _download(request, file_id)
        if verb:
            raise _error(404, f"Method files/{name} is not found.")
        record = _gemini_file(request, file_id)
        ver = _version(request, request.url.path.split("/")[1])
        return json_response(gemini_file(record, str(request.base_url).rstrip("/"), ver))

    @router.delete("/files/{name}")
    def delete_file(request: Request, name: str) -> Response:
        _gemini_file(request, name)
        _engine(request).store.delete_file(name)
        return json_response({})

    return router


def _page_size(raw: str | None) -> int:
    if not raw:
        return PAGE_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        raise _error(400, f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"") from None
    if value < 0:
        raise _error(400, "page_size must not be negative")
    return min(value or PAGE_DEFAULT, PAGE_MAX)


def _delete(request: Request, batch_id: str) -> Response:
    _batch(request, batch_id)
    _engine(request).delete_gemini(batch_id)
    return json_response({})


def _download(request: Request, file_id: str) -> Response:
    engine = _engine(request)
    record = _gemini_file(request, file_id)
    if request.query_params.get("alt") != "media":
        raise _error(400, "Only alt=media is supported for files:download.")
    return stored_file(engine, record.id, record)


def download_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(gemini_guard)])

    @router.get("/files/{name}")
    def download(request: Request, name: str) -> Response:
        file_id, _, verb = name.partition(":")
        if verb != "download":
            raise _error(404, f"Method files/{name} is not found.")
        return _download(request, file_id)

    return router


@dataclass
class UploadSession:
    path: Path
    declared: int | None
    display_name: str
    mime_type: str
    version: str
    received: int = 0
    sha256: Any = field(default_factory=hashlib.sha256)


class UploadSessions:
    """Resumable uploads in progress, by upload id (the capability in the upload URL)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, UploadSession] = {}

    def open(self, session: UploadSession) -> str:
        upload_id = secrets.token_urlsafe(24)
        with self._lock:
            self._sessions[upload_id] = session
        return upload_id

    def get(self, upload_id: str) -> UploadSession:
        with self._lock:
            session = self._sessions.get(upload_id)
        if session is None:
            raise _error(404, "No such upload session (unknown or finished upload_id).")
        return session

    def close(self, upload_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(upload_id, None)
        if session is not None:
            session.path.unlink(missing_ok=True)


def upload_router(sessions: UploadSessions) -> APIRouter:
    router = APIRouter()

    @router.post("/files")
    async def upload(request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        if upload_id:
            _inject_fault(request)
            return await _chunk(request, sessions, upload_id)
        await gemini_guard(request)
        return await _start(request, sessions)

    return router


async def _start(request: Request, sessions: UploadSessions) -> Response:
    engine = _engine(request)
    headers = request.headers
    protocol = headers.get("x-goog-upload-protocol", "")
    if protocol != "resumable" or headers.get("x-goog-upload-command", "") != "start":
        raise _error(
            400,
            "The emulator takes uploads with X-Goog-Upload-Protocol: resumable and "
            "X-Goog-Upload-Command: start (as google-genai sends them).",
        )
    declared_raw = headers.get("x-goog-upload-header-content-length")
    declared = int(declared_raw) if declared_raw and declared_raw.isdigit() else None
    limit = engine.config.max_gemini_file_bytes
    if declared is not None and declared > limit:
        raise _error(400, f"File size {declared} exceeds the limit of {limit} bytes.")
    meta = _json_object(await read_bounded(request, MAX_START_BODY, "gemini")).get("file") or {}
    if not isinstance(meta, dict):
        raise _error(400, "* file: must be an object")
    display = _field(meta, "displayName", "display_name") or ""
    mime = (
        _field(meta, "mimeType", "mime_type")
        or headers.get("x-goog-upload-header-content-type")
        or "application/octet-stream"
    )
    version = request.url.path.split("/")[2]
    session = UploadSession(
        path=engine.store.tmp_path(".upload"),
        declared=declared,
        display_name=str(display),
        mime_type=str(mime),
        version=version,
    )
    session.path.touch()
    upload_id = sessions.open(session)
    base = str(request.base_url).rstrip("/")
    url = f"{base}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
    return Response(
        b"",
        200,
        headers={
            "x-goog-upload-url": url,
            "x-goog-upload-status": "active",
            "x-goog-upload-chunk-granularity": "262144",
        },
    )


async def _chunk(request: Request, sessions: UploadSessions, upload_id: str) -> Response:
    engine = _engine(request)
    session = sessions.get(upload_id)
    commands = {c.strip() for c in request.headers.get("x-goog-upload-command", "").split(",")}
    active = {"x-goog-upload-status": "active"}
    if "query" in commands:
        return Response(
            b"", 200, headers={**active, "x-goog-upload-size-received": str(session.received)}
        )
    if not commands & {"upload", "finalize"}:
        raise _error(400, "X-Goog-Upload-Command must be upload, finalize, or query.")
    offset_raw = request.headers.get("x-goog-upload-offset", "")
    if not offset_raw.isdigit() or int(offset_raw) != session.received:
        raise _error(
            400,
            f"X-Goog-Upload-Offset {offset_raw!r} does not match the bytes received so far "
            f"({session.received}).",
        )
    limit = (
        session.declared if session.declared is not None else engine.config.max_gemini_file_bytes
    )
    try:
        with open(session.path, "ab") as out:
            async for chunk in bounded_stream(request, limit - session.received, "gemini"):
                out.write(chunk)
                session.sha256.update(chunk)
                session.received += len(chunk)
    except ApiError:  # the chunk would pass the declared size: the session is spoilt
        sessions.close(upload_id)
        raise _error(400, f"The upload exceeds its declared size of {limit} bytes.") from None
    if "finalize" not in commands:
        return Response(b"", 200, headers=active)
    if session.declared is not None and session.received != session.declared:
        sessions.close(upload_id)
        raise _error(
            400,
            f"Upload finalized after {session.received} bytes; {session.declared} were declared.",
        )
    record = engine.add_file(
        session.path,
        filename=session.display_name,
        purpose=GEMINI_UPLOAD_PURPOSE,
        size=session.received,
        expires_at=int(time.time()) + GEMINI_FILE_LIFETIME_S,
        extra_fields={
            "mime_type": session.mime_type,
            "sha256_b64": base64.b64encode(session.sha256.digest()).decode(),
        },
        internal=True,
        file_id=secrets.token_hex(6),
    )
    sessions.close(upload_id)
    engine.count("files_uploaded")
    base = str(request.base_url).rstrip("/")
    body = {"file": gemini_file(record, base, session.version)}
    return Response(
        orjson.dumps(body),
        200,
        headers={"x-goog-upload-status": "final"},
        media_type="application/json",
    )


def gemini_routers() -> list[tuple[str, APIRouter]]:
    """(prefix, router) pairs for app.py: the API and the upload and download paths, for
    each version."""
    sessions = UploadSessions()
    routes: list[tuple[str, APIRouter]] = []
    for version in VERSIONS:
        routes.append((f"/upload/{version}", upload_router(sessions)))
        routes.append((f"/download/{version}", download_router()))
    routes.append(("/v1beta", batch_router()))
    return routes
