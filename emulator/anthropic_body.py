"""Split a Message Batches create body (`{"requests": [...]}`, up to 256 MB) without loading it.

The body is spooled to disk and memory-mapped; a regex walks its structure (whole strings
are single matches, so their contents are never inspected byte by byte) and each element of
the top-level `requests` array is handed out as raw bytes for orjson to parse on its own.
"""

from __future__ import annotations

import mmap
import re
from collections.abc import Iterator
from pathlib import Path

import orjson

_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_QUOTE, _OPEN_OBJ, _OPEN_ARR = ord('"'), ord("{"), ord("[")
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class BodyError(ValueError):
    """The body is not a valid create request; the message names the offending field."""


def iter_request_elements(buf: bytes | mmap.mmap) -> Iterator[bytes]:
    """Yield the raw bytes of each element of the top-level `requests` array."""
    depth = 0
    state = "key"  # key -> value (after "requests":) -> array -> done
    region_start = 0  # where the text between elements starts (for separator checks)
    element_start = -1
    count = 0
    for match in _TOKENS.finditer(buf):
        start = match.start()
        char = buf[start]
        if char == _QUOTE:
            if depth == 1 and state == "key" and match.group() == b'"requests"':
                rest = buf[match.end() : match.end() + 64].lstrip()
                if rest.startswith(b":"):
                    state = "value"
            elif depth == 2 and state == "array":
                raise BodyError(f"requests.{count}: Input should be a valid dictionary")
            elif state == "value":
                raise BodyError("requests: Input should be a valid list")
            continue
        if char in (_OPEN_OBJ, _OPEN_ARR):
            depth += 1
            if depth == 1 and char != _OPEN_OBJ:
                raise BodyError("The request body must be a JSON object.")
            if state == "value":
                if depth != 2 or char != _OPEN_ARR:
                    raise BodyError("requests: Input should be a valid list")
                state, region_start = "array", match.end()
            elif state == "array" and depth == 3:
                _check_gap(buf[region_start:start], first=count == 0, index=count)
                if char != _OPEN_OBJ:
                    raise BodyError(f"requests.{count}: Input should be a valid dictionary")
                element_start = start
            continue
        if depth == 0:
            raise BodyError("The request body is not valid JSON.")
        if state == "array" and depth == 3:
            yield bytes(buf[element_start : match.end()])
            count += 1
            region_start = match.end()
        elif state == "array" and depth == 2:
            if buf[region_start:start].strip(b" \t\r\n"):
                raise BodyError(f"requests.{count}: Input should be a valid dictionary")
            state = "done"
        elif state == "value" and depth == 1:
            raise BodyError("requests: Input should be a valid list")
        depth -= 1
    if depth != 0:
        raise BodyError("The request body is not valid JSON.")
    if state != "done":
        raise BodyError("requests: Field required")


def _check_gap(gap: bytes, *, first: bool, index: int) -> None:
    gap = gap.strip(b" \t\r\n")
    if gap != (b"" if first else b","):
        raise BodyError(f"requests.{index}: Input should be a valid dictionary")


def split_requests(body_path: Path, target: Path, max_requests: int) -> int:
    """Check every request and write one JSONL line per request to `target`; returns the count.

    Raises BodyError with the message of the synchronous 400 the real API returns.
    """
    size = body_path.stat().st_size
    if size == 0:
        raise BodyError("The request body is not valid JSON.")
    seen: set[str] = set()
    count = 0
    with (
        open(body_path, "rb") as src,
        open(target, "wb") as out,
        mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as buf,
    ):
        for raw in iter_request_elements(buf):
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise BodyError(f"requests.{count}: invalid JSON") from None
            _check_item(item, count, seen)
            count += 1
            if count > max_requests:
                raise BodyError(
                    f"requests: List should have at most {max_requests} items after "
                    f"validation, not {count}"
                )
            out.write(raw.replace(b"\n", b" ").replace(b"\r", b" ") + b"\n")
    if count == 0:
        raise BodyError("requests: List should have at least 1 item after validation, not 0")
    return count


def _check_item(item: object, index: int, seen: set[str]) -> None:
    if not isinstance(item, dict):
        raise BodyError(f"requests.{index}: Input should be a valid dictionary")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str):
        raise BodyError(f"requests.{index}.custom_id: Field required")
    if len(custom_id) > 64:
        raise BodyError(f"requests.{index}.custom_id: String should have at most 64 characters")
    if not CUSTOM_ID.match(custom_id):
        raise BodyError(
            f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'"
        )
    if custom_id in seen:
        raise BodyError(
            f"requests.{index}.custom_id: Duplicate custom_id '{custom_id}'; "
            "each request in a batch must have a unique custom_id"
        )
    seen.add(custom_id)
    if "params" not in item:
        raise BodyError(f"requests.{index}.params: Field required")
