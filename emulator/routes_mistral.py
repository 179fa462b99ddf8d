"""Mistral Files + Batch jobs routes, served under /mistral (a client's `server_url` is
`<emulator>/mistral`; Mistral's own paths start with /v1 and would collide with OpenAI's).

Files: upload (multipart `file`, `purpose`), list, retrieve, delete, download. Jobs: create
from `input_files` or inline `requests`, list (filters, pages, metadata as bare query keys,
as the SDK sends it), get (`?inline=true` adds an inline job's `outputs`), cancel.
Errors come in Mistral's envelope (`{"object": "error", "message", "type", ...}`).
"""

from __future__ import annotations

import time
from datetime import datetime

import anyio
import orjson
from fastapi import APIRouter, Depends, Request, Response

from batchrelay.emulator import mistral
from batchrelay.emulator.downloads import stored_file
from batchrelay.emulator.engine import CancelConflict, Engine
from batchrelay.emulator.errors import ApiError, bad_request, not_found
from batchrelay.emulator.guards import api_guard
from batchrelay.emulator.lifecycle import phase
from batchrelay.emulator.store import BatchRecord, FileRecord
from batchrelay.emulator.uploads import UploadError, receive_upload
from batchrelay.emulator.wire import int_query, json_response, read_json_object

PREFIX = "/mistral"
MAX_FILE_BYTES = 512 * 1024 * 1024
DEFAULT_TIMEOUT_HOURS = 24
LIST_QUERY = {"page", "page_size", "model", "agent_id", "created_after", "created_by_me"}
LIST_QUERY |= {"status", "order_by"}
CREATE_FIELDS = {"endpoint", "input_files", "requests", "model", "agent_id", "metadata"}
CREATE_FIELDS |= {"timeout_hours"}


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _bad(message: str) -> ApiError:
    return bad_request("mistral", message)


def _file(request: Request, file_id: str) -> FileRecord:
    record = _engine(request).store.get_file(file_id)
    if record is None or record.internal:
        raise not_found("mistral", f"File {file_id} not found")
    return record


def _job(request: Request, job_id: str) -> BatchRecord:
    batch = _engine(request).store.get_batch(job_id)
    if batch is None or batch.flavor != "mistral":
        raise not_found("mistral", f"Batch job {job_id} not found")
    return batch


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad("metadata must be an object of string values")
    return value


def _inline_items(requests: object) -> list[bytes]:
    if not isinstance(requests, list) or not requests:
        raise _bad("requests must be a non-empty list of {custom_id, body} objects")
    for i, item in enumerate(requests):
        if not isinstance(item, dict) or not isinstance(item.get("body"), dict):
            raise _bad(f"requests[{i}]: body is required and must be an object")
        custom_id = item.get("custom_id")
        if custom_id is not None and not isinstance(custom_id, str):
            raise _bad(f"requests[{i}]: custom_id must be a string")
    return [orjson.dumps(item) for item in requests]


def _input_files(request: Request, value: object) -> list[FileRecord]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _bad("input_files must be a non-empty list of file ids")
    records = [_file(request, file_id) for file_id in value]
    for record in records:
        if record.purpose != "batch":
            raise _bad(f"File {record.id} was not uploaded with purpose 'batch'")
    return records


def _timeout_hours(value: object) -> int:
    if value is None:
        return DEFAULT_TIMEOUT_HOURS
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"timeout_hours must be a positive integer, got {value!r}")
    return value


def _outputs(engine: Engine, batch: BatchRecord, inline: bool) -> list[dict] | None:
    """An ended inline job's results, when asked for with `?inline=true`."""
    if not (inline and batch.inline) or phase(batch, time.time()) not in mistral.ENDED:
        return None
    ids = (batch.output_file_id, batch.error_file_id)
    return mistral.result_lines(engine.store.blob_path(i) for i in ids if i)


def mistral_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(api_guard("mistral"))])

    @router.post("/v1/files")
    async def upload_file(request: Request) -> Response:
        engine = _engine(request)
        tmp = engine.store.tmp_path(".upload")
        try:
            try:
                upload = await receive_upload(request, tmp, MAX_FILE_BYTES, "mistral")
            except UploadError as exc:
                raise _bad(str(exc)) from None
            purpose = upload.fields.get("purpose") or "fine-tune"
            if purpose not in mistral.PURPOSES:
                raise _bad(f"purpose must be one of {', '.join(mistral.PURPOSES)}, got {purpose!r}")
            if upload.filename is None:
                raise _bad("file is required")
            if purpose == "batch" and not upload.utf8:
                raise _bad("Batch files must be UTF-8 encoded JSONL")
            record = engine.add_file(
                tmp,
                filename=upload.filename,
                purpose=purpose,
                size=upload.size,
                expires_at=None,
                prefix="",
            )
            engine.count("files_uploaded")
            return json_response(mistral.file_object(record))
        finally:
            tmp.unlink(missing_ok=True)

    @router.get("/v1/files")
    def list_files(request: Request) -> Response:
        page = int_query(request, "page", 0, 0, 1_000_000, "mistral")
        size = int_query(request, "page_size", 100, 1, 10_000, "mistral")
        files = _engine(request).store.list_files()
        purpose = request.query_params.get("purpose")
        if purpose:
            files = [f for f in files if mistral.file_object(f)["purpose"] == purpose]
        files.reverse()
        shown = files[page * size : (page + 1) * size]
        return json_response(
            {"data": [mistral.file_object(f) for f in shown], "object": "list", "total": len(files)}
        )

    @router.get("/v1/files/{file_id}")
    def retrieve_file(request: Request, file_id: str) -> Response:
        return json_response(mistral.file_object(_file(request, file_id), deleted=False))

    @router.delete("/v1/files/{file_id}")
    def delete_file(request: Request, file_id: str) -> Response:
        _file(request, file_id)
        _engine(request).store.delete_file(file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    @router.get("/v1/files/{file_id}/content")
    def file_content(request: Request, file_id: str) -> Response:
        engine = _engine(request)
        record = _file(request, file_id)
        return stored_file(engine, record.id, record)

    @router.post("/v1/batch/jobs")
    async def create_job(request: Request) -> Response:
        engine = _engine(request)
        body = await read_json_object(request, "mistral", engine.config.max_mistral_body_bytes)
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise _bad(f"Extra inputs are not permitted: {', '.join(unknown)}")
        endpoint = body.get("endpoint")
        if endpoint not in mistral.ENDPOINTS:
            raise _bad(f"endpoint must be one of {', '.join(mistral.ENDPOINTS)}, got {endpoint!r}")
        if endpoint not in mistral.SERVED:
            raise _bad(f"endpoint {endpoint} is not served by the emulator")
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _bad("model must be a string")
        if body.get("agent_id") is not None:
            raise _bad("agent_id: agents are not served by the emulator; name a model")
        files, requests = body.get("input_files"), body.get("requests")
        if (files is None) == (requests is None):
            raise _bad("give exactly one of input_files and requests")
        metadata = _metadata(body.get("metadata"))
        hours = _timeout_hours(body.get("timeout_hours"))
        if files is not None:
            records = _input_files(request, files)
            sources = mistral.file_lines(engine.store.blob_path(r.id) for r in records)
        else:
            records, sources = [], iter(_inline_items(requests))
        spool = engine.store.tmp_path(".jsonl")
        try:
            await anyio.to_thread.run_sync(
                lambda: mistral.write_requests(spool, sources, endpoint=endpoint, model=model)
            )
            job = engine.create_mistral_job(
                spool,
                spool.stat().st_size,
                endpoint=endpoint,
                input_files=[r.id for r in records],
                metadata=metadata,
                timeout_hours=hours,
            )
        finally:
            spool.unlink(missing_ok=True)
        return json_response(mistral.job_object(job, time.time()))

    @router.get("/v1/batch/jobs")
    def list_jobs(request: Request) -> Response:
        query = request.query_params
        page = int_query(request, "page", 0, 0, 1_000_000, "mistral")
        size = int_query(request, "page_size", 100, 1, 10_000, "mistral")
        order = query.get("order_by") or "-created"
        if order not in ("created", "-created"):
            raise _bad(f"order_by must be 'created' or '-created', got {order!r}")
        now = time.time()
        jobs = [b for b in _engine(request).store.list_batches("openai") if b.flavor == "mistral"]
        if order == "created":
            jobs.reverse()
        if query.get("model"):
            jobs = [b for b in jobs if b.model == query["model"]]
        if query.get("created_after"):
            try:
                after = datetime.fromisoformat(query["created_after"]).timestamp()
            except ValueError:
                raise _bad("created_after must be an ISO 8601 date-time") from None
            jobs = [b for b in jobs if b.created_at >= after]
        statuses = query.getlist("status")
        if statuses:
            jobs = [b for b in jobs if mistral.job_object(b, now)["status"] in statuses]
        # The SDK sends `metadata` exploded: each key is a query parameter of its own.
        wanted = {k: v for k, v in query.items() if k not in LIST_QUERY}
        jobs = [b for b in jobs if wanted.items() <= (b.metadata or {}).items()]
        shown = jobs[page * size : (page + 1) * size]
        data = [mistral.job_object(b, now) for b in shown]
        return json_response({"object": "list", "data": data, "total": len(jobs)})

    @router.get("/v1/batch/jobs/{job_id}")
    def get_job(request: Request, job_id: str) -> Response:
        batch = _job(request, job_id)
        inline = request.query_params.get("inline") == "true"
        outputs = _outputs(_engine(request), batch, inline)
        return json_response(mistral.job_object(batch, time.time(), outputs))

    @router.post("/v1/batch/jobs/{job_id}/cancel")
    def cancel_job(request: Request, job_id: str) -> Response:
        _job(request, job_id)
        try:
            batch = _engine(request).cancel(job_id, "openai")
        except CancelConflict as exc:
            status = mistral.STATUS[exc.status]
            raise _bad(f"Batch job {job_id} has already ended ({status})") from None
        assert batch is not None
        return json_response(mistral.job_object(batch, time.time()))

    return router
