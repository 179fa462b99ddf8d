"""Small request/response helpers shared by the route modules."""

from __future__ import annotations

import orjson
from fastapi import Request, Response

from batchrelay.emulator.bodies import JSON_BODY_LIMIT, read_bounded
from batchrelay.emulator.errors import Shape, bad_request

JSON_TYPE_NAMES = {
    str: "a string",
    list: "an array",
    dict: "an object",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def json_response(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def type_name(value: object) -> str:
    return JSON_TYPE_NAMES.get(type(value), "an unknown type")


async def read_json_object(
    request: Request, shape: Shape, max_bytes: int = JSON_BODY_LIMIT
) -> dict:
    """The body as a JSON object; over `max_bytes` it is refused unread (413)."""
    raw = await read_bounded(request, max_bytes, shape)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise bad_request(
            shape,
            "We could not parse the JSON body of your request. The body must be valid JSON.",
        ) from None
    if not isinstance(body, dict):
        raise bad_request(shape, "The request body must be a JSON object.")
    return body


def int_query(request: Request, name: str, default: int, low: int, high: int, shape: Shape) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(
            shape, f"Invalid '{name}': expected an integer, got '{raw}'.", name, "invalid_type"
        ) from None
    if not low <= value <= high:
        raise bad_request(
            shape,
            f"Invalid '{name}': must be between {low} and {high}, got {value}.",
            name,
            "invalid_value",
        )
    return value


def page_after(items: list, after: str | None, limit: int) -> tuple[list, bool]:
    """The page of `limit` items following the item whose id is `after` (unknown: empty)."""
    start = 0
    if after:
        ids = [item.id for item in items]
        if after not in ids:
            return [], False
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return page, start + limit < len(items)
