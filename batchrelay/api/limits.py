"""Refuses a POST before its body is parsed: 415 unless it is JSON, 413 past the size limit
(checked on Content-Length and again on the bytes as they arrive, for a chunked body)."""

from __future__ import annotations

from typing import Any

from batchrelay.api.problems import problem

MAX_BODY_BYTES = 16 * 1024 * 1024  # one request (a provider line is at most this much)
MAX_BULK_BODY_BYTES = 64 * 1024 * 1024  # POST /v1/requests/bulk


class _TooLarge(Exception):
    pass


def _limit(path: str) -> int:
    return MAX_BULK_BODY_BYTES if path.endswith("/bulk") else MAX_BODY_BYTES


class BodyLimits:
    """Pure ASGI middleware (no per-request task, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if ctype != b"application/json":
            shown = ctype.decode("latin-1") or "none"
            await problem(
                415, f"the request body must be application/json, got Content-Type {shown}"
            )(scope, receive, send)
            return
        limit = _limit(scope["path"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(limit)(scope, receive, send)
            return
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._too_large(limit)(scope, receive, send)

    @staticmethod
    def _too_large(limit: int) -> Any:
        return problem(413, f"the request body is larger than {limit} bytes, the limit here")
