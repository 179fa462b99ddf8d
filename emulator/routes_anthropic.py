"""Anthropic Message Batches routes, at /v1/messages/batches.

A reseller-style extra path (config `anthropic_batches_path`) is rewritten to these routes by
`app.ResellerPathMiddleware`, which records the public prefix so `results_url` points back at
the path the client used.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
from fastapi import APIRouter, Depends, Request, Response

from batchrelay.emulator.anthropic_body import BodyError, split_requests
from batchrelay.emulator.bodies import bounded_stream
from batchrelay.emulator.downloads import stored_file
from batchrelay.emulator.engine import CancelConflict, Engine, NotEnded
from batchrelay.emulator.errors import ApiError
from batchrelay.emulator.guards import api_guard
from batchrelay.emulator.store import BatchRecord
from batchrelay.emulator.views import anthropic_batch, anthropic_status
from batchrelay.emulator.wire import int_query, json_response

BASE = "/v1/messages/batches"
PREFIX_SCOPE_KEY = "emulator.anthropic_prefix"
PATH_SCOPE_KEY = "emulator.original_path"


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def results_base(request: Request) -> str:
    prefix = request.scope.get(PREFIX_SCOPE_KEY, BASE)
    return str(request.base_url).rstrip("/") + prefix


def _error(status: int, message: str) -> ApiError:
    return ApiError(status, message, shape="anthropic")


def _get(request: Request, batch_id: str) -> BatchRecord:
    batch = _engine(request).store.get_batch(batch_id)
    if batch is None or batch.shape != "anthropic":
        raise _error(404, f"message_batch {batch_id} not found")
    return batch


def _render(request: Request, batch: BatchRecord) -> Response:
    return json_response(anthropic_batch(batch, time.time(), results_base(request)))


async def _spool_body(request: Request, limit: int) -> Path:
    """The body in a spool file (a 256 MB body must not sit in memory); 413 past `limit`."""
    spool = _engine(request).store.tmp_path(".body")
    try:
        with open(spool, "wb") as out:
            async for chunk in bounded_stream(request, limit, "anthropic"):
                out.write(chunk)
    except BaseException:
        spool.unlink(missing_ok=True)
        raise
    return spool


def anthropic_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(api_guard("anthropic"))])

    @router.post(BASE)
    async def create(request: Request) -> Response:
        engine = _engine(request)
        config = engine.config
        spool = await _spool_body(request, config.max_anthropic_body_bytes)
        requests = engine.store.tmp_path(".jsonl")
        try:
            total = await anyio.to_thread.run_sync(
                split_requests, spool, requests, config.max_anthropic_requests
            )
            batch = engine.create_anthropic_batch(requests, requests.stat().st_size, total)
        except BodyError as exc:
            raise _error(400, str(exc)) from None
        finally:
            spool.unlink(missing_ok=True)
            requests.unlink(missing_ok=True)
        return _render(request, batch)

    @router.get(BASE)
    def list_batches(request: Request) -> Response:
        limit = int_query(request, "limit", 20, 1, 1000, "anthropic")
        batches = _engine(request).store.list_batches("anthropic")
        ids = [b.id for b in batches]
        after, before = request.query_params.get("after_id"), request.query_params.get("before_id")
        if before:
            end = ids.index(before) if before in ids else 0
            start = max(0, end - limit)
            page, has_more = batches[start:end], start > 0
        else:
            start = ids.index(after) + 1 if after in ids else (len(ids) if after else 0)
            page, has_more = batches[start : start + limit], start + limit < len(ids)
        now, base = time.time(), results_base(request)
        return json_response(
            {
                "data": [anthropic_batch(b, now, base) for b in page],
                "has_more": has_more,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
            }
        )

    @router.get(BASE + "/{batch_id}")
    def retrieve(request: Request, batch_id: str) -> Response:
        return _render(request, _get(request, batch_id))

    @router.post(BASE + "/{batch_id}/cancel")
    def cancel(request: Request, batch_id: str) -> Response:
        _get(request, batch_id)
        try:
            batch = _engine(request).cancel(batch_id, "anthropic")
        except CancelConflict:
            raise _error(400, f"Message batch {batch_id} has already ended.") from None
        assert batch is not None
        return _render(request, batch)

    @router.delete(BASE + "/{batch_id}")
    def delete(request: Request, batch_id: str) -> Response:
        _get(request, batch_id)
        try:
            _engine(request).delete_anthropic(batch_id)
        except NotEnded:
            raise _error(
                400,
                f"Message batch {batch_id} has not ended yet; cancel it and wait for it to end "
                "before deleting it.",
            ) from None
        return json_response({"id": batch_id, "type": "message_batch_deleted"})

    @router.get(BASE + "/{batch_id}/results")
    def results(request: Request, batch_id: str) -> Response:
        engine = _engine(request)
        batch = _get(request, batch_id)
        if anthropic_status(batch, time.time()) != "ended" or not batch.output_file_id:
            raise _error(400, f"Message batch {batch_id} has not ended yet; no results.")
        record = engine.store.get_file(batch.output_file_id)
        return stored_file(engine, batch.output_file_id, record, "application/binary")

    return router
