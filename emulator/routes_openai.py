"""OpenAI Files + Batches routes; the same router serves Azure's paths with flavor="azure",
and the OpenAI-style vendors' with flavor="groq" or "together".

Azure differences: its 401 envelope, endpoints also accepted without the `/v1` prefix, jobs
that never expire, and an error file on every finished job (empty when nothing failed).
Groq: chat completions only, `completion_window` from 24h to 7d. Together: uploads at
`/files/upload` (purpose `batch-api`, a `file_name` field), lines without `method`/`url`, no
metadata, create answering 201 `{job, warning}`, upper-case statuses, a bare list.
Batches are scoped to the flavor that created them; files are shared.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request, Response

from batchrelay.emulator.content import OPENAI_ENDPOINTS
from batchrelay.emulator.downloads import stored_file
from batchrelay.emulator.engine import CancelConflict, Engine
from batchrelay.emulator.errors import ApiError, bad_request, not_found
from batchrelay.emulator.guards import api_guard
from batchrelay.emulator.store import BatchRecord, FileRecord
from batchrelay.emulator.uploads import UploadError, receive_upload
from batchrelay.emulator.validation import normalize_endpoint
from batchrelay.emulator.views import file_object, openai_batch, together_batch
from batchrelay.emulator.wire import (
    int_query,
    json_response,
    page_after,
    read_json_object,
    type_name,
)

MAX_FILE_BYTES = 512 * 1024 * 1024
PURPOSES = {"assistants", "batch", "fine-tune", "vision", "user_data", "evals"}
TOGETHER_PURPOSES = {"batch-api", "fine-tune", "eval"}
BATCH_PURPOSES = {"batch", "batch-api"}
CHAT_ONLY = ("/v1/chat/completions",)
# Groq takes windows from 24 hours to 7 days; emulated time scales them from 24h.
GROQ_WINDOWS_H = {"24h": 24, **{f"{d}d": 24 * d for d in range(1, 8)}}
BATCH_FILE_LIFETIME_S = 30 * 86400
EXPIRY_MIN_S, EXPIRY_MAX_S = 3600, 2592000
UPLOAD_FIELDS = {
    "purpose",
    "file_name",
    "file_type",
    "expires_after[anchor]",
    "expires_after[seconds]",
    "expires_after.anchor",
    "expires_after.seconds",
}


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _supported_endpoints(endpoints: tuple[str, ...]) -> str:
    names = [f"'{e}'" for e in endpoints]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + ", and " + names[-1]


def _visible_file(request: Request, file_id: str) -> FileRecord:
    record = _engine(request).store.get_file(file_id)
    if record is None or record.internal:
        raise not_found("openai", f"No such File object: {file_id}", "id")
    return record


def _expires_at(request: Request, fields: dict[str, str], purpose: str, now: int) -> int | None:
    cap = _engine(request).config.max_file_expires_after_s
    anchor = fields.get("expires_after[anchor]", fields.get("expires_after.anchor"))
    seconds = fields.get("expires_after[seconds]", fields.get("expires_after.seconds"))
    if anchor is None and seconds is None:
        lifetime = BATCH_FILE_LIFETIME_S if purpose == "batch" else None
        if cap is not None:
            lifetime = min(lifetime or cap, cap)
        return None if lifetime is None else now + lifetime
    if anchor != "created_at":
        raise bad_request(
            "openai",
            f"Invalid value: '{anchor}'. Supported values are: 'created_at'.",
            "expires_after.anchor",
            "invalid_value",
        )
    try:
        value = int(seconds or "")
    except ValueError:
        raise bad_request(
            "openai",
            f"Invalid type for 'expires_after.seconds': expected an integer, got '{seconds}'.",
            "expires_after.seconds",
            "invalid_type",
        ) from None
    if not EXPIRY_MIN_S <= value <= EXPIRY_MAX_S:
        raise bad_request(
            "openai",
            f"Invalid 'expires_after.seconds': must be between {EXPIRY_MIN_S} and "
            f"{EXPIRY_MAX_S}, got {value}.",
            "expires_after.seconds",
            "invalid_value",
        )
    if cap is not None and value > cap:
        raise bad_request(
            "openai",
            f"Invalid 'expires_after.seconds': this server keeps files for at most {cap} "
            f"seconds, got {value}.",
            "expires_after.seconds",
            "invalid_value",
        )
    return now + value


def _check_metadata(metadata: object) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise bad_request(
            "openai",
            f"Invalid type for 'metadata': expected an object, but got {type_name(metadata)} "
            "instead.",
            "metadata",
            "invalid_type",
        )
    if len(metadata) > 16:
        raise bad_request(
            "openai",
            "Invalid 'metadata': too many properties. Expected an object with at most 16 "
            f"properties, but got an object with {len(metadata)} properties instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad_request(
                "openai",
                "Invalid 'metadata': string too long. Expected a string with maximum length 64, "
                f"but got a string with length {len(key)} instead.",
                "metadata",
                "string_above_max_length",
            )
        if not isinstance(value, str):
            raise bad_request(
                "openai",
                f"Invalid type for 'metadata.{key}': expected a string, but got "
                f"{type_name(value)} instead.",
                f"metadata.{key}",
                "invalid_type",
            )
        if len(value) > 512:
            raise bad_request(
                "openai",
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                f"length 512, but got a string with length {len(value)} instead.",
                f"metadata.{key}",
                "string_above_max_length",
            )
    return metadata


def _output_expiry(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("anchor") != "created_at":
        raise bad_request(
            "openai",
            'Invalid \'output_expires_after\': expected {"anchor": "created_at", '
            '"seconds": <3600..2592000>}.',
            "output_expires_after",
            "invalid_value",
        )
    seconds = value.get("seconds")
    if not isinstance(seconds, int) or not EXPIRY_MIN_S <= seconds <= EXPIRY_MAX_S:
        raise bad_request(
            "openai",
            f"Invalid 'output_expires_after.seconds': must be an integer between {EXPIRY_MIN_S} "
            f"and {EXPIRY_MAX_S}.",
            "output_expires_after.seconds",
            "invalid_value",
        )
    return seconds


def _required(body: dict, name: str) -> object:
    if body.get(name) is None:
        raise bad_request(
            "openai",
            f"Missing required parameter: '{name}'.",
            name,
            "missing_required_parameter",
        )
    return body[name]


def _windows(flavor: str) -> dict[str, int]:
    """The completion windows a flavor accepts, in hours."""
    return GROQ_WINDOWS_H if flavor == "groq" else {"24h": 24}


def openai_router(flavor: str) -> APIRouter:
    router = APIRouter(dependencies=[Depends(api_guard(flavor))])
    together = flavor == "together"
    purposes = TOGETHER_PURPOSES if together else PURPOSES
    endpoints = CHAT_ONLY if flavor in ("groq", "together") else tuple(OPENAI_ENDPOINTS)
    render = together_batch if together else openai_batch

    def get_batch(request: Request, batch_id: str) -> BatchRecord:
        batch = _engine(request).store.get_batch(batch_id)
        if batch is None or batch.flavor != flavor:
            raise not_found("openai", f"No such Batch object: {batch_id}", "id")
        return batch

    @router.post("/files/upload" if together else "/files")
    async def upload_file(request: Request) -> Response:
        engine = _engine(request)
        config = engine.config
        tmp = engine.store.tmp_path(".upload")
        try:
            try:
                upload = await receive_upload(
                    request, tmp, max(config.max_batch_file_bytes, MAX_FILE_BYTES)
                )
            except UploadError as exc:
                raise bad_request("openai", str(exc)) from None
            fields = upload.fields
            purpose = fields.get("purpose")
            if not purpose:
                raise bad_request(
                    "openai",
                    "Missing required parameter: 'purpose'.",
                    "purpose",
                    "missing_required_parameter",
                )
            if purpose not in purposes:
                raise bad_request(
                    "openai",
                    f"Invalid value: '{purpose}'. Supported values are: "
                    + ", ".join(f"'{p}'" for p in sorted(purposes))
                    + ".",
                    "purpose",
                    "invalid_value",
                )
            if upload.filename is None:
                raise bad_request(
                    "openai",
                    "Missing required parameter: 'file'.",
                    "file",
                    "missing_required_parameter",
                )
            if together and not fields.get("file_name"):
                raise bad_request(
                    "openai",
                    "Missing required parameter: 'file_name'.",
                    "file_name",
                    "missing_required_parameter",
                )
            for name in config.required_upload_fields:
                if not fields.get(name):
                    raise bad_request(
                        "openai",
                        f"Missing required parameter: '{name}'. This server requires it on "
                        "every upload.",
                        name,
                        "missing_required_parameter",
                    )
            limit = config.max_batch_file_bytes if purpose in BATCH_PURPOSES else MAX_FILE_BYTES
            if upload.size > limit:
                raise bad_request("openai", "File is too large.")
            if purpose in BATCH_PURPOSES:
                if not upload.filename.lower().endswith(".jsonl"):
                    raise bad_request("openai", "Invalid file format for Batch API. Must be .jsonl")
                if not upload.utf8:
                    raise bad_request("openai", "Invalid file for Batch API. Must be utf-8 encoded")
            now = int(time.time())
            expires_at = _expires_at(request, fields, purpose, now)
            record = engine.add_file(
                tmp,
                filename=upload.filename,
                purpose=purpose,
                size=upload.size,
                expires_at=expires_at,
                extra_fields={k: v for k, v in fields.items() if k not in UPLOAD_FIELDS},
            )
            engine.count("files_uploaded")
            return json_response(file_object(record))
        finally:
            tmp.unlink(missing_ok=True)

    @router.get("/files")
    def list_files(request: Request) -> Response:
        query = request.query_params
        limit = int_query(request, "limit", 10000, 1, 10000, "openai")
        order = query.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise bad_request(
                "openai",
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                "order",
                "invalid_value",
            )
        files = _engine(request).store.list_files()
        if query.get("purpose"):
            files = [f for f in files if f.purpose == query["purpose"]]
        if order == "desc":
            files.reverse()
        page, has_more = page_after(files, query.get("after"), limit)
        return json_response(_list(page, has_more, file_object))

    @router.get("/files/{file_id}")
    def retrieve_file(request: Request, file_id: str) -> Response:
        return json_response(file_object(_visible_file(request, file_id)))

    @router.delete("/files/{file_id}")
    def delete_file(request: Request, file_id: str) -> Response:
        _visible_file(request, file_id)
        _engine(request).store.delete_file(file_id)
        return json_response({"id": file_id, "object": "file", "deleted": True})

    @router.get("/files/{file_id}/content")
    def file_content(request: Request, file_id: str) -> Response:
        engine = _engine(request)
        record = _visible_file(request, file_id)
        return stored_file(engine, record.id, record)

    @router.post("/batches")
    async def create_batch(request: Request) -> Response:
        body = await read_json_object(request, "openai")
        input_file_id = _required(body, "input_file_id")
        endpoint = _required(body, "endpoint")
        if together:  # optional there, and always 24h
            window = body.get("completion_window") or "24h"
        else:
            window = _required(body, "completion_window")
        known = endpoint in endpoints or (
            flavor == "azure"
            and isinstance(endpoint, str)
            and normalize_endpoint(endpoint) in OPENAI_ENDPOINTS
        )
        if not known:
            raise bad_request(
                "openai",
                f"Invalid value: '{endpoint}'. Supported values are: "
                f"{_supported_endpoints(endpoints)}.",
                "endpoint",
                "invalid_value",
            )
        windows = _windows(flavor)
        if not isinstance(window, str) or window not in windows:
            supported = ", ".join(f"'{w}'" for w in windows)
            raise bad_request(
                "openai",
                f"Invalid value: '{window}'. Supported values are: {supported}.",
                "completion_window",
                "invalid_value",
            )
        if not isinstance(input_file_id, str):
            raise bad_request(
                "openai",
                f"Invalid type for 'input_file_id': expected a string, but got "
                f"{type_name(input_file_id)} instead.",
                "input_file_id",
                "invalid_type",
            )
        batch = _engine(request).create_openai_batch(
            flavor=flavor,
            input_file_id=input_file_id,
            endpoint=endpoint,
            completion_window=window,
            metadata=None if together else _check_metadata(body.get("metadata")),
            output_expires_after_s=_output_expiry(body.get("output_expires_after")),
            window_factor=windows[window] / 24,
        )
        if together:
            return json_response({"job": together_batch(batch, time.time()), "warning": None}, 201)
        return json_response(openai_batch(batch, time.time()))

    @router.get("/batches")
    def list_batches(request: Request) -> Response:
        limit = int_query(request, "limit", 20, 1, 100, "openai")
        batches = [b for b in _engine(request).store.list_batches("openai") if b.flavor == flavor]
        now = time.time()
        if together:  # every batch, as a bare array
            return json_response([together_batch(b, now) for b in batches])
        page, has_more = page_after(batches, request.query_params.get("after"), limit)
        return json_response(_list(page, has_more, lambda b: openai_batch(b, now)))

    @router.get("/batches/{batch_id}")
    def retrieve_batch(request: Request, batch_id: str) -> Response:
        return json_response(render(get_batch(request, batch_id), time.time()))

    @router.post("/batches/{batch_id}/cancel")
    def cancel_batch(request: Request, batch_id: str) -> Response:
        get_batch(request, batch_id)
        try:
            batch = _engine(request).cancel(batch_id, "openai")
        except CancelConflict as exc:
            raise ApiError(
                409,
                f"Cannot cancel a batch with status '{exc.status}'.",
                headers={"x-should-retry": "false"},
            ) from None
        assert batch is not None
        return json_response(render(batch, time.time()))

    return router


def _list(page: list, has_more: bool, render) -> dict:
    return {
        "object": "list",
        "data": [render(item) for item in page],
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
        "has_more": has_more,
    }
