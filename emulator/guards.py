"""What every API call goes through first: the API key, then injected HTTP errors.

Keys are accepted from `Authorization: Bearer`, `x-api-key` (Anthropic) and `api-key`
(Azure) alike; a missing or wrong key gets 401 in the envelope of the route's provider.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

from fastapi import Request

from batchrelay.emulator.errors import ApiError, server_error_body

Flavor = str  # "openai" | "azure" | "anthropic" | "mistral" | "groq" | "together"

AZURE_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)


def presented_keys(request: Request, styles: list[str] | None = None) -> list[str]:
    """Keys in the request's auth headers; only the header `styles` given, if any."""
    keys = []
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and (styles is None or "bearer" in styles):
        keys.append(auth[7:].strip())
    for header in ("x-api-key", "api-key"):
        if header in request.headers and (styles is None or header in styles):
            keys.append(request.headers[header].strip())
    return [k for k in keys if k]


def _mask(key: str) -> str:
    return key[:3] + "*" * 6 + key[-4:] if len(key) > 8 else "*" * len(key)


def unauthorized(flavor: Flavor, presented: list[str]) -> ApiError:
    if flavor == "anthropic":
        message = "invalid x-api-key" if presented else "x-api-key header is required"
        return ApiError(401, message, shape="anthropic")
    if flavor == "mistral":
        return ApiError(401, "Unauthorized", body={"message": "Unauthorized", "request_id": ""})
    if flavor == "azure":
        return ApiError(401, AZURE_401, body={"error": {"code": "401", "message": AZURE_401}})
    if presented:
        message = (
            f"Incorrect API key provided: {_mask(presented[0])}. "
            "You can find your API key at https://platform.openai.com/account/api-keys."
        )
        return ApiError(401, message, code="invalid_api_key")
    message = (
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
    )
    return ApiError(401, message)


def check_key(request: Request, flavor: Flavor, *, admin: bool = False) -> None:
    config = request.app.state.engine.config
    presented = presented_keys(request, None if admin else config.auth_headers)
    if not any(k in config.api_keys for k in presented):
        raise unauthorized(flavor, presented)


def check_versions(request: Request, flavor: Flavor, path: str) -> None:
    """The version header (Anthropic) or query parameter (Azure legacy paths), when the
    configuration asks for them, answered as the real services do."""
    config = request.app.state.engine.config
    if flavor == "anthropic" and config.anthropic_versions is not None:
        version = request.headers.get("anthropic-version")
        if version not in config.anthropic_versions:
            message = (
                "anthropic-version: header is required"
                if not version
                else f"anthropic-version: {version!r} is not a valid version"
            )
            raise ApiError(400, message, shape="anthropic")
    legacy = path.startswith("/openai/") and not path.startswith("/openai/v1/")
    if flavor == "azure" and legacy and config.azure_api_versions is not None:
        version = request.query_params.get("api-version")
        if not version:
            body = {"error": {"code": "404", "message": "Resource not found"}}
            raise ApiError(404, "Resource not found", body=body)
        if version not in config.azure_api_versions:
            body = {"error": {"code": "BadRequest", "message": "API version not supported"}}
            raise ApiError(400, "API version not supported", body=body)


def api_guard(flavor: Flavor) -> Callable[[Request], Awaitable[None]]:
    """FastAPI dependency for the API routes of one provider flavor."""
    shape = flavor if flavor in ("anthropic", "mistral") else "openai"

    async def guard(request: Request) -> None:
        engine = request.app.state.engine
        engine.count("api_requests")
        check_key(request, flavor)
        path = request.scope.get("emulator.original_path", request.url.path)
        check_versions(request, flavor, path)
        fault = engine.faults.http_fault(request.method, path)
        if fault is None:
            return
        status, retry_after = fault
        headers = {}
        if retry_after is not None:
            headers["retry-after"] = str(math.ceil(retry_after))
            headers["retry-after-ms"] = str(int(retry_after * 1000))
        raise ApiError(status, "injected", headers=headers, body=server_error_body(shape, status))

    return guard


async def admin_guard(request: Request) -> None:
    check_key(request, "openai", admin=True)
