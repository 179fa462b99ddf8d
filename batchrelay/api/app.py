"""The HTTP API: `AsyncBatchRelay` per route, each call on behalf of the caller's tenant.

A request id of another tenant answers exactly as an unknown one (404), so ids cannot be
probed across tenants. Errors are problem JSON (`batchrelay.api.problems`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from datetime import date
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import Field, TypeAdapter, ValidationError
from starlette.responses import Response

from batchrelay.api import schemas
from batchrelay.api.limits import BodyLimits
from batchrelay.api.problems import PROBLEM_JSON, HTTPProblem, install
from batchrelay.config import Settings
from batchrelay.config.tenants import Tenant, Tenants
from batchrelay.costs import read_costs
from batchrelay.metrics import monitoring_router
from batchrelay.producer import errors
from batchrelay.producer.callbacks import CeleryTask, Webhook
from batchrelay.producer.client import UNAVAILABLE, AsyncBatchRelay
from batchrelay.producer.connection import LazyClient
from batchrelay.producer.core import SubmitItem, unavailable
from batchrelay.producer.keys import Keys
from batchrelay.producer.records import RequestStatus

T = TypeVar("T")
_bearer = HTTPBearer(auto_error=False, description="A tenant's API key")
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The problem JSON answers a route documents (`batchrelay.api.problems`)."""
    return {
        code: {
            "description": HTTPStatus(code).phrase,
            "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
        }
        for code in codes
    }


def _with_problem_schema(app: FastAPI) -> None:
    """Register the Problem schema the error answers refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            components = schema["components"]["schemas"]
            for model in (schemas.Problem, schemas.SubmitRequest):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
        return app.openapi_schema or schema

    app.openapi = openapi  # type: ignore[method-assign]


_ONE = TypeAdapter(schemas.SubmitRequest)
_MANY = TypeAdapter(Annotated[list[schemas.SubmitRequest], Field(min_length=1)])
_REF_SUBMIT = {"$ref": "#/components/schemas/SubmitRequest"}


async def _parse(request: Request, adapter: TypeAdapter[T]) -> T:
    """The JSON body, parsed and checked by pydantic-core in one pass (FastAPI's own body
    handling parses with the json module first, several times slower for a bulk)."""
    try:
        return adapter.validate_json(await request.body())
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI requestBody of a route that parses its body itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _json(data: dict[str, Any], status: int) -> Response:
    """A JSON answer written by orjson, skipping FastAPI's response-model pass (the data
    is the model's already)."""
    return Response(orjson.dumps(data), status, media_type="application/json")


def _callback(cb: schemas.WebhookCallback | schemas.CeleryTaskCallback | None) -> Any:
    if isinstance(cb, schemas.WebhookCallback):
        return Webhook(cb.url)
    if isinstance(cb, schemas.CeleryTaskCallback):
        return CeleryTask(cb.celery_task, cb.queue)
    return None


def _item(req: schemas.SubmitRequest, idempotency_key: str | None = None) -> SubmitItem:
    return SubmitItem(
        endpoint=req.endpoint,
        body=req.body,
        callback=_callback(req.callback),
        idempotency_key=idempotency_key or req.idempotency_key,
        metadata=req.metadata,
    )


async def caller(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    """The tenant whose API key is the bearer token; 401 without one."""
    tenants: Tenants = request.app.state.tenants
    found = None if creds is None else tenants.authenticate(creds.credentials)
    if found is None:
        raise HTTPProblem(
            401,
            "a tenant's API key is required: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return found


Caller = Annotated[Tenant, Depends(caller)]


def create_app(settings: Settings, tenants: Tenants) -> FastAPI:
    """The API for `settings`' relay, open to `tenants`; a Redis client per app."""
    state: dict[str, Any] = {}
    keys = Keys(settings.key_prefix)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["relay"] = AsyncBatchRelay(settings, tenants=tenants)
        state["sync"] = LazyClient(settings)  # `GET /v1/usage` reads in a thread
        yield
        await state["relay"].aclose()
        state["sync"].close()

    app = FastAPI(
        title="batchrelay",
        version="1",
        summary="Single LLM requests in, provider Batch API jobs out, each result back.",
        lifespan=lifespan,
    )
    app.state.tenants = tenants
    # Prometheus scrapes and providers' batch webhooks, as on `batchrelay metrics`; left out
    # of the API's schema (they are not tenant calls).
    monitor = LazyClient(settings)
    app.include_router(monitoring_router(settings, monitor), include_in_schema=False)
    _with_problem_schema(app)
    app.add_middleware(BodyLimits)
    install(app)

    def relay() -> AsyncBatchRelay:
        return state["relay"]

    async def owned(rid: str, who: Tenant) -> RequestStatus:
        """The request's status if it belongs to `who`; 404 as for an unknown id if not."""
        status = await relay().status(rid)
        if status.tenant != who.name:
            raise errors.RequestNotFoundError(f"request {rid} does not exist")
        return status

    submit_errors = _errors(400, 401, 409, 413, 415, 422, 429, 503)

    @app.post(
        "/v1/requests",
        status_code=202,
        response_model=schemas.Submitted,
        responses=submit_errors,
        openapi_extra=_body(_REF_SUBMIT),
    )
    async def submit(
        request: Request,
        who: Caller,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> dict[str, str]:
        """Store one request; the `Idempotency-Key` header is the body's idempotency_key."""
        req = await _parse(request, _ONE)
        if idempotency_key and req.idempotency_key and idempotency_key != req.idempotency_key:
            raise HTTPProblem(
                400,
                "the Idempotency-Key header and the body's idempotency_key differ",
                field="idempotency_key",
            )
        item = _item(req, idempotency_key)
        rid = await relay().submit(
            item.endpoint,
            item.body,
            callback=item.callback,
            idempotency_key=item.idempotency_key,
            metadata=item.metadata,
            tenant=who.name,
        )
        return _json({"id": rid, "status": "pending"}, 202)

    @app.post(
        "/v1/requests/bulk",
        status_code=202,
        response_model=schemas.SubmittedMany,
        responses=submit_errors,
        openapi_extra=_body(
            {"type": "array", "items": _REF_SUBMIT, "minItems": 1, "maxItems": schemas.MAX_BULK}
        ),
    )
    async def submit_many(request: Request, who: Caller) -> Any:
        """Store 1 to MAX_BULK requests, all or none (`submit_many`); ids in order."""
        reqs = await _parse(request, _MANY)
        if len(reqs) > schemas.MAX_BULK:
            raise HTTPProblem(
                413, f"{len(reqs)} items; a bulk submit takes at most {schemas.MAX_BULK}"
            )
        ids = await relay().submit_many([_item(r) for r in reqs], tenant=who.name)
        return _json({"ids": list(ids)}, 202)

    @app.get(
        "/v1/requests/{rid}", response_model=schemas.Status, responses=_errors(401, 404, 422, 503)
    )
    async def status(rid: str, who: Caller) -> dict[str, Any]:
        return asdict(await owned(rid, who))

    @app.get(
        "/v1/requests/{rid}/result",
        response_model=schemas.Result,
        responses={
            202: {"model": schemas.Status, "description": "Not final yet: the status"},
            **_errors(401, 404, 422, 503),
        },
    )
    async def result(
        rid: str,
        who: Caller,
        wait: Annotated[float, Query(ge=0, le=schemas.MAX_WAIT_S)] = 0,
    ) -> Any:
        """The webhook's JSON once final; else, after waiting up to `wait` seconds for it
        (on Redis pub/sub, not a poll loop), 202 with the status."""
        await owned(rid, who)
        if wait > 0:
            with suppress(errors.ResultTimeoutError):
                await relay().wait([rid], wait)
        (payload,) = await relay().results([rid])
        if payload is not None:
            return payload
        return _json(asdict(await owned(rid, who)), 202)

    @app.delete(
        "/v1/requests/{rid}",
        response_model=schemas.Cancelled,
        responses=_errors(401, 404, 409, 422, 503),
    )
    async def cancel(rid: str, who: Caller) -> dict[str, str]:
        """Cancel until the request's batch is submitted to the provider; 409 after."""
        await owned(rid, who)
        await relay().cancel(rid)
        return {"id": rid, "status": "cancelled"}

    @app.get("/v1/usage", response_model=schemas.Usage, responses=_errors(401, 422, 503))
    async def usage(who: Caller, since: date | None = None) -> dict[str, Any]:
        """The caller's costs per UTC date and model (as `batchrelay costs`)."""
        day = None if since is None else since.isoformat()
        try:
            rows = await asyncio.to_thread(
                read_costs, state["sync"], keys, tenant=who.name, since=day
            )
        except UNAVAILABLE as exc:
            raise unavailable(settings, exc) from exc
        fields = schemas.UsageRow.model_fields
        return {
            "tenant": who.name,
            "since": day,
            "rows": [{k: v for k, v in r.as_json().items() if k in fields} for r in rows],
        }

    @app.get("/healthz", response_model=schemas.Health, responses=_errors(503))
    async def healthz() -> dict[str, str]:
        """200 while Redis answers, else 503."""
        try:
            await (await relay().client()).ping()
        except UNAVAILABLE as exc:
            raise unavailable(settings, exc) from exc
        return {"status": "ok"}

    return app
