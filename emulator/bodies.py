"""Reading request bodies with a bound, so no body costs more memory or disk than its route
allows: a body is refused with a 413 in the provider's envelope (Gemini: a 400, as Google
answers) as soon as it is known to be too large (a declared Content-Length at once, a chunked
body once the limit is passed), never after it was read whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request

from batchrelay.emulator.errors import ApiError, Shape

# JSON bodies of the create-batch and admin routes: real ones are a few KB.
JSON_BODY_LIMIT = 1024 * 1024


def too_large(shape: Shape, limit: int) -> ApiError:
    if shape == "gemini":  # Google refuses an oversized payload with 400 INVALID_ARGUMENT
        return ApiError(400, f"Request payload size exceeds the limit: {limit} bytes.", shape=shape)
    return ApiError(413, f"Request exceeds the maximum allowed size of {limit} bytes.", shape=shape)


async def bounded_stream(request: Request, limit: int, shape: Shape) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; raises a 413 `ApiError` past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(shape, limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(shape, limit)
        yield chunk


async def read_bounded(request: Request, limit: int, shape: Shape) -> bytes:
    """The whole body, which must be at most `limit` bytes (413 otherwise)."""
    body = bytearray()
    async for chunk in bounded_stream(request, limit, shape):
        body += chunk
    return bytes(body)
