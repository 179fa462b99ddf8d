"""The OpenAI `validating` phase: one streaming pass over the input file.

Problems with the file's content never fail the create call; they end the batch in `failed`
with one `errors.data` entry per bad line (up to MAX_ERRORS), as the real service does. The
same pass counts lines, estimates enqueued tokens (len(line) // 4 per line) and counts the
lines that the per-request fault will fail, for the progress counters.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from batchrelay.emulator.content import REQUIRED_PARAM
from batchrelay.emulator.faults import digest_fails, line_digest

MAX_ERRORS = 100
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"

ENDPOINT_NAMES = {
    "/v1/chat/completions": "Chat Completions",
    "/v1/embeddings": "Embeddings",
    "/v1/responses": "Responses",
    "/v1/completions": "Completions",
    "/v1/moderations": "Moderations",
    "/v1/fim/completions": "FIM Completions",
}


def normalize_endpoint(endpoint: str) -> str:
    """Azure lets lines and batches name endpoints without the /v1 prefix."""
    return endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint


def batch_error(code: str, message: str, param: str | None = None, line: int | None = None):
    return {"code": code, "message": message, "param": param, "line": line}


def canned_error(code: str, model: str | None, max_requests: int) -> dict:
    """The error an injected validation fault reports (line-level codes point at line 1)."""
    model = model or "gpt-4o-mini"
    messages = {
        "token_limit_exceeded": (token_limit_message(model, 2_000_000), None, None),
        "invalid_json_line": ("This line is not parseable as valid JSON.", None, 1),
        "missing_required_parameter": ("Missing required parameter: 'custom_id'.", "custom_id", 1),
        "invalid_url": (
            "The URL provided for this request does not match the batch endpoint.",
            "url",
            1,
        ),
        "streaming_unsupported": (
            "Chat Completions: Streaming is not supported in the Batch API.",
            "body.stream",
            1,
        ),
        "model_not_found": (
            f"The provided model '{model}' is not supported by the Batch API.",
            "body.model",
            1,
        ),
        "duplicate_custom_id": (DUPLICATE_MESSAGE, "custom_id", 1),
        "mismatched_model": (mismatch_message(model), "body.model", 1),
        "empty_file": (EMPTY_MESSAGE, None, None),
        "too_many_tasks": (too_many_message(max_requests), None, None),
        "invalid_request": ("Model parameter is required.", "body.model", 1),
    }
    message, param, line = messages[code]
    return batch_error(code, message, param, line)


DUPLICATE_MESSAGE = (
    "The custom_id for this request is a duplicate of another request. "
    "The custom_id parameter must be unique for each request in a batch."
)
EMPTY_MESSAGE = (
    "The input file is empty. Please ensure that the batch contains at least one request."
)


def mismatch_message(model: str) -> str:
    return (
        f"The model '{model}' for this request does not match the rest of the batch. "
        "Each batch must contain requests for a single model."
    )


def too_many_message(limit: int) -> str:
    return f"The batch input file contains more than the maximum of {limit:,} requests."


def token_limit_message(model: str, limit: int) -> str:
    return (
        f"Enqueued token limit reached for {model} in organization org-emulator. "
        f"Limit: {limit:,} enqueued tokens. "
        "Please try again once some in_progress batches have been completed."
    )


class ModelMatcher:
    """Known models as globs (`gpt-*`), with a cache since every line asks."""

    def __init__(self, patterns: list[str]) -> None:
        self._patterns = patterns
        self._cache: dict[str, bool] = {}

    def __call__(self, model: str) -> bool:
        known = self._cache.get(model)
        if known is None:
            known = any(fnmatch.fnmatchcase(model, p) for p in self._patterns)
            self._cache[model] = known
        return known


@dataclass
class Validation:
    errors: list[dict] = field(default_factory=list)
    total: int = 0
    model: str | None = None
    planned_failures: int = 0
    enqueued_tokens: int = 0


def validate_input(
    path: Path,
    *,
    endpoint: str,
    batch_id: str,
    error_fraction: float,
    known_model: Callable[[str], bool],
    max_requests: int,
    lines_name_method_url: bool = True,
) -> Validation:
    """One pass over the input file; `lines_name_method_url=False` (Together) takes lines of
    only `custom_id` and `body`, sent to the batch's endpoint."""
    endpoint = normalize_endpoint(endpoint)
    required = REQUIRED_PARAM[endpoint]
    result = Validation()
    errors = result.errors
    seen: set[str] = set()
    loads = orjson.loads

    def fail(code: str, message: str, param: str | None, line: int) -> bool:
        errors.append(batch_error(code, message, param, line))
        return len(errors) >= MAX_ERRORS

    with open(path, "rb") as src:
        for lineno, raw in enumerate(src, 1):
            if not raw.strip():
                continue
            result.total += 1
            if result.total > max_requests:
                errors.append(batch_error("too_many_tasks", too_many_message(max_requests)))
                break
            result.enqueued_tokens += len(raw) // 4
            try:
                obj = loads(raw)
            except orjson.JSONDecodeError:
                obj = None
            if not isinstance(obj, dict):
                message = "This line is not parseable as valid JSON."
                if fail("invalid_json_line", message, None, lineno):
                    break
                continue
            if not lines_name_method_url:
                obj.setdefault("method", "POST")
                obj.setdefault("url", endpoint)
            missing = next(
                (k for k in ("custom_id", "method", "url", "body") if k not in obj), None
            )
            if missing is not None:
                message = f"Missing required parameter: '{missing}'."
                if fail("missing_required_parameter", message, missing, lineno):
                    break
                continue
            custom_id, body = obj["custom_id"], obj["body"]
            problem = None
            if not isinstance(custom_id, str) or not custom_id:
                problem = ("invalid_request", "custom_id must be a non-empty string.", "custom_id")
            elif obj["method"] != "POST":
                message = f"Only POST requests are supported, got '{obj['method']}'."
                problem = ("invalid_request", message, "method")
            elif not isinstance(obj["url"], str) or normalize_endpoint(obj["url"]) != endpoint:
                message = "The URL provided for this request does not match the batch endpoint."
                problem = ("invalid_url", message, "url")
            elif not isinstance(body, dict):
                problem = ("invalid_request", "body must be a JSON object.", "body")
            elif body.get("stream") is True:
                name = ENDPOINT_NAMES[endpoint]
                message = f"{name}: Streaming is not supported in the Batch API."
                problem = ("streaming_unsupported", message, "body.stream")
            else:
                problem = _check_body(body, endpoint, required, known_model, result)
            if problem is None and custom_id in seen:
                problem = ("duplicate_custom_id", DUPLICATE_MESSAGE, "custom_id")
            if problem is not None:
                if fail(*problem, lineno):
                    break
                continue
            seen.add(custom_id)
            if error_fraction > 0 and digest_fails(
                line_digest(batch_id, custom_id), error_fraction
            ):
                result.planned_failures += 1
    if result.total == 0 and not errors:
        errors.append(batch_error("empty_file", EMPTY_MESSAGE))
    return result


def _check_body(
    body: dict,
    endpoint: str,
    required: str,
    known_model: Callable[[str], bool],
    result: Validation,
) -> tuple[str, str, str] | None:
    model = body.get("model")
    if model is None and endpoint == "/v1/moderations":
        model = DEFAULT_MODERATION_MODEL
    if not isinstance(model, str) or not model:
        return ("invalid_request", "Model parameter is required.", "body.model")
    if not known_model(model):
        message = f"The provided model '{model}' is not supported by the Batch API."
        return ("model_not_found", message, "body.model")
    if result.model is None:
        result.model = model
    elif model != result.model:
        return ("mismatched_model", mismatch_message(model), "body.model")
    if required not in body:
        return (
            "invalid_request",
            f"{required.capitalize()} parameter is required.",
            f"body.{required}",
        )
    return None
