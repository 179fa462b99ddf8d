"""The emulator's own control API under /_emulator/: faults, timings, stats, reset.

Protected by the same API keys as the provider routes; never subject to injected faults.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ValidationError

from batchrelay.emulator.engine import Engine
from batchrelay.emulator.errors import bad_request, not_found
from batchrelay.emulator.guards import admin_guard
from batchrelay.emulator.views import file_object
from batchrelay.emulator.wire import json_response, read_json_object

PREFIX = "/_emulator"


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _invalid(exc: ValidationError):
    details = "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
    )
    return bad_request("openai", details or str(exc))


def admin_router() -> APIRouter:
    public = APIRouter(prefix=PREFIX)
    router = APIRouter(prefix=PREFIX, dependencies=[Depends(admin_guard)])

    @public.get("/health")
    def health() -> Response:
        return json_response({"status": "ok"})

    @router.get("/faults")
    def get_faults(request: Request) -> Response:
        return json_response(_engine(request).faults.get().model_dump())

    @router.patch("/faults")
    async def patch_faults(request: Request) -> Response:
        changes = await read_json_object(request, "openai")
        try:
            faults = _engine(request).faults.update(changes)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return json_response(faults.model_dump())

    @router.post("/faults/reset")
    def reset_faults(request: Request) -> Response:
        return json_response(_engine(request).faults.reset().model_dump())

    @router.get("/timings")
    def get_timings(request: Request) -> Response:
        return json_response(_engine(request).timings.model_dump())

    @router.patch("/timings")
    async def patch_timings(request: Request) -> Response:
        changes = await read_json_object(request, "openai")
        try:
            timings = _engine(request).set_timings(changes)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return json_response(timings.model_dump())

    @router.get("/stats")
    def stats(request: Request) -> Response:
        return json_response(_engine(request).stats())

    @router.post("/reset")
    def reset(request: Request) -> Response:
        data = request.query_params.get("data", "true").lower() not in ("0", "false", "no")
        _engine(request).reset(data=data)
        return json_response({"reset": True, "data": data})

    @router.get("/files/{file_id}")
    def file_details(request: Request, file_id: str) -> Response:
        record = _engine(request).store.get_file(file_id)
        if record is None:
            raise not_found("openai", f"No such File object: {file_id}", "id")
        return json_response(
            {
                **file_object(record),
                "extra_fields": record.extra_fields,
                "internal": record.internal,
            }
        )

    combined = APIRouter()
    combined.include_router(public)
    combined.include_router(router)
    return combined
