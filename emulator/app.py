"""The ASGI app: provider routers, admin router, error envelopes, reseller path routing.

Paths served:
  /v1/files..., /v1/batches...              OpenAI
  /openai/v1/..., /openai/...?api-version=  Azure OpenAI (always on)
  /groq/openai/v1/...                       Groq's OpenAI-style batches
  /together/v1/...                          Together AI's OpenAI-style batches
  /v1/messages/batches...                   Anthropic
  /mistral/v1/files..., /mistral/v1/batch/jobs...  Mistral
  /v1beta/..., /upload/..., /download/...   Gemini
  /v1/... with a Google API key             Gemini (GeminiPathMiddleware)
  <anthropic_batches_path>...               Anthropic, as a reseller serves it
  /_emulator/...                            admin
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchrelay.emulator.engine import Engine
from batchrelay.emulator.errors import ApiError, Shape, server_error_body
from batchrelay.emulator.routes_admin import admin_router
from batchrelay.emulator.routes_anthropic import (
    BASE,
    PATH_SCOPE_KEY,
    PREFIX_SCOPE_KEY,
    anthropic_router,
)
from batchrelay.emulator.routes_gemini import (
    ORIGINAL_PATH_KEY,
    VERSION_SCOPE_KEY,
    gemini_routers,
)
from batchrelay.emulator.routes_mistral import PREFIX as MISTRAL_PREFIX
from batchrelay.emulator.routes_mistral import mistral_router
from batchrelay.emulator.routes_openai import openai_router
from batchrelay.emulator.webhooks import webhook_router

OPENAI_MOUNTS = {
    "/v1": "openai",
    "/openai/v1": "azure",
    "/openai": "azure",
    "/groq/openai/v1": "groq",
    "/together/v1": "together",
}
PEEK_LIMIT = 1024 * 1024


class ResellerPathMiddleware:
    """Routes `<prefix>/...` to the Anthropic routes, telling shapes apart where paths collide.

    When the prefix is also an OpenAI batches path (e.g. /v1/batches), a request is taken as
    Anthropic-style if: its id starts with `msgbatch_`; or it creates with a body holding
    `requests` (a body over 1 MB can only be that); or it lists with `anthropic-version`,
    `after_id` or `before_id`.
    """

    def __init__(self, app: ASGIApp, prefix: str | None) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/") if prefix else None
        openai_batch_paths = {mount + "/batches" for mount in OPENAI_MOUNTS}
        self.collides = self.prefix in openai_batch_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        prefix = self.prefix
        if scope["type"] != "http" or not prefix or prefix == BASE:
            return await self.app(scope, receive, send)
        if path != prefix and not path.startswith(prefix + "/"):
            return await self.app(scope, receive, send)
        rest = path[len(prefix) :].rstrip("/")
        anthropic, receive = await self._classify(scope, receive, rest)
        if anthropic:
            scope = dict(scope)
            scope["path"] = BASE + rest
            scope["raw_path"] = (BASE + rest).encode()
            scope[PREFIX_SCOPE_KEY] = prefix
            scope[PATH_SCOPE_KEY] = path
        await self.app(scope, receive, send)

    async def _classify(self, scope: Scope, receive: Receive, rest: str) -> tuple[bool, Receive]:
        if not self.collides:
            return True, receive
        if rest:
            return rest.startswith("/msgbatch_"), receive
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope["method"] != "POST":
            query = scope.get("query_string", b"")
            hinted = b"after_id=" in query or b"before_id=" in query
            return hinted or b"anthropic-version" in headers, receive
        buffered: list[Message] = []
        size, complete = 0, False
        while size <= PEEK_LIMIT:
            message = await receive()
            buffered.append(message)
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                complete = True
                break
        anthropic = not complete
        if complete:
            try:
                body = orjson.loads(b"".join(m.get("body", b"") for m in buffered))
            except orjson.JSONDecodeError:
                body = None
            anthropic = isinstance(body, dict) and "requests" in body

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        return anthropic, replay


GEMINI_PREFIXES = ("/v1beta/", "/upload/", "/download/")


def _google_keyed(scope: Scope) -> bool:
    """A call carrying a Google API key (header or `key=` query), as every Gemini call does."""
    headers = scope.get("headers", [])
    query = scope.get("query_string", b"")
    return any(k.lower() == b"x-goog-api-key" for k, _ in headers) or (
        query.startswith(b"key=") or b"&key=" in query
    )


def path_shape(path: str) -> Shape:
    """The error envelope of the provider a path belongs to."""
    if path.startswith(GEMINI_PREFIXES):
        return "gemini"
    if path.startswith("/v1/messages"):
        return "anthropic"
    return "mistral" if path.startswith(MISTRAL_PREFIX + "/") else "openai"


def scope_shape(scope: Scope) -> Shape:
    """The error envelope of the provider a call belongs to: a Google API key or a rewritten
    Gemini /v1/ path makes it Gemini's, a reseller prefix Anthropic's, else its path decides."""
    if VERSION_SCOPE_KEY in scope or _google_keyed(scope):
        return "gemini"
    if PREFIX_SCOPE_KEY in scope:
        return "anthropic"
    return path_shape(scope.get(ORIGINAL_PATH_KEY, scope.get("path", "")))


def _route_shape(request: Request) -> Shape:
    return scope_shape(request.scope)


class GeminiPathMiddleware:
    """Gemini's /v1/ paths collide with OpenAI's (/v1/batches, /v1/files/...): a /v1/ call with
    a Google API key goes to the Gemini routes (served at /v1beta/), which remember the
    version it asked for."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path.startswith("/v1/") and _google_keyed(scope):
            scope = dict(scope)
            scope["path"] = "/v1beta/" + path[len("/v1/") :]
            scope["raw_path"] = scope["path"].encode()
            scope[VERSION_SCOPE_KEY] = "v1"
            scope[ORIGINAL_PATH_KEY] = path
        await self.app(scope, receive, send)


class LostReplyMiddleware:
    """The `lost_reply_*` fault: the call runs to the end (a batch really is created), then its
    answer is dropped and a 500 in the provider's envelope goes out instead."""

    def __init__(self, app: ASGIApp, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path.startswith("/_emulator")
            or not self.engine.faults.lose_reply(scope["method"], path)
        ):
            return await self.app(scope, receive, send)

        async def swallow(message: Message) -> None:
            pass

        await self.app(scope, receive, swallow)
        body = server_error_body(scope_shape(scope), 500)
        await ApiError(500, "injected: reply lost", body=body).to_response()(scope, receive, send)


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(
        title="batchrelay emulator",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError):
        return exc.to_response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = f"Invalid URL ({request.method} {request.url.path})"
        if exc.status_code != 404:
            message = str(exc.detail)
        shape = _route_shape(request)
        return ApiError(exc.status_code, message, shape=shape).to_response()

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):
        shape = _route_shape(request)
        return ApiError(500, f"Emulator error: {exc!r}", shape=shape).to_response()

    app.include_router(admin_router())
    app.include_router(webhook_router())
    app.include_router(anthropic_router())
    for prefix, router in gemini_routers():
        app.include_router(router, prefix=prefix)
    app.include_router(mistral_router())
    for mount, flavor in OPENAI_MOUNTS.items():
        app.include_router(openai_router(flavor), prefix=mount)
    app.add_middleware(ResellerPathMiddleware, prefix=engine.config.anthropic_batches_path)
    app.add_middleware(GeminiPathMiddleware)
    app.add_middleware(LostReplyMiddleware, engine=engine)  # outermost: sees the original path
    return app
