"""Errors as RFC 9457 problem JSON: each Python exception keeps its message as `detail`, and
its class picks the status (bad input names the `field`, a quota its name and Retry-After)."""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from batchrelay.producer import errors

PROBLEM_JSON = "application/problem+json"

# Most specific first: RequestTooLargeError is an InvalidRequestError.
STATUS_OF: tuple[tuple[type[errors.BatchRelayError], int], ...] = (
    (errors.RequestTooLargeError, 413),
    (errors.InvalidRequestError, 400),
    (errors.IdempotencyConflictError, 409),
    (errors.CancelError, 409),
    (errors.RequestNotFoundError, 404),
    (errors.QuotaExceededError, 429),
    (errors.RelayUnavailableError, 503),
)
FIELD_OF: tuple[tuple[type[errors.InvalidRequestError], str], ...] = (
    (errors.UnknownEndpointError, "endpoint"),
    (errors.MissingModelError, "body.model"),
    (errors.UnknownModelError, "body.model"),
    (errors.StreamingNotSupportedError, "body.stream"),
    (errors.InvalidMetadataError, "metadata"),
    (errors.InvalidCallbackError, "callback"),
)
# An InvalidRequestError's message starts with the field it is about ("body 'model' ...",
# "idempotency_key must ..."); submit_many's with "item <i>: ".
_ITEM = re.compile(r"item (\d+): ")
_FIELDS = ("endpoint", "body", "callback", "idempotency_key", "metadata", "tenant")


class HTTPProblem(Exception):
    """A problem found by the HTTP layer itself (authentication, media type, size, limits)."""

    def __init__(
        self, status: int, detail: str, *, field: str | None = None, headers: dict | None = None
    ):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field
        self.headers = headers or {}


def problem(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    quota: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    if quota is not None:
        body["quota"] = quota
    return Response(orjson.dumps(body), status, headers=headers, media_type=PROBLEM_JSON)


def field_of(exc: errors.InvalidRequestError) -> str:
    """Which input the error is about, as a dotted path (`[3].body.model` for a bulk item)."""
    text = message(exc)
    prefix = ""
    if m := _ITEM.match(text):
        prefix, text = f"[{m.group(1)}].", text[m.end() :]
    for cls, name in FIELD_OF:
        if isinstance(exc, cls):
            return prefix + name
    first = re.split(r"[ .\[']", text, maxsplit=1)[0]
    return prefix + (first if first in _FIELDS else "body")


def message(exc: Exception) -> str:
    """The exception's message as raised (str() of a KeyError would quote it)."""
    return exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)


def for_error(exc: errors.BatchRelayError) -> Response:
    status = next((code for cls, code in STATUS_OF if isinstance(exc, cls)), 500)
    detail = message(exc)
    if isinstance(exc, errors.QuotaExceededError):
        return problem(
            status, detail, quota=exc.quota, headers={"Retry-After": str(exc.retry_after_s)}
        )
    field = field_of(exc) if isinstance(exc, errors.InvalidRequestError) else None
    return problem(status, detail, field=field)


def _validation(exc: RequestValidationError) -> Response:
    """FastAPI's body validation: unparsable JSON is a 400, JSON of the wrong shape a 422."""
    first = exc.errors()[0]
    loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc).replace(".[", "[") or None
    if first.get("type") == "json_invalid":
        return problem(400, f"the request body is not valid JSON: {first.get('msg')}")
    where = f"{field}: " if field else ""
    return problem(422, f"{where}{first.get('msg')}", field=field)


def install(app: FastAPI) -> None:
    """Every error the app can raise answers as problem JSON."""

    @app.exception_handler(errors.BatchRelayError)
    async def _relay_error(_: Request, exc: errors.BatchRelayError) -> Response:
        return for_error(exc)

    @app.exception_handler(HTTPProblem)
    async def _http_problem(_: Request, exc: HTTPProblem) -> Response:
        return problem(exc.status, exc.detail, field=exc.field, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return _validation(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)
