"""HTTP errors in each provider's envelope, raised anywhere and rendered by one handler."""

from __future__ import annotations

import secrets
from typing import Literal

import orjson
from fastapi import Response

Shape = Literal["openai", "anthropic", "mistral", "gemini"]

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    529: "overloaded_error",
}

OPENAI_SERVER_MESSAGES = {
    429: ("Rate limit reached for requests. Please try again later.", "requests"),
    500: ("The server had an error while processing your request. Sorry about that!", None),
    502: ("Bad gateway.", None),
    503: ("The server is overloaded or not ready yet.", None),
    529: ("The server is overloaded.", None),
}


# google.rpc.Code names by HTTP status, as Google APIs answer them.
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
GOOGLE_SERVER_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
}


def google_error(status: int, message: str, code: str | None = None) -> dict:
    """A google.rpc.Status in Google's error envelope; `code` overrides the status name."""
    name = code or GOOGLE_STATUSES.get(status, "UNKNOWN")
    return {"error": {"code": status, "message": message, "status": name}}


def request_id() -> str:
    return "req_" + secrets.token_hex(12)


def openai_error(
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def mistral_error(status: int, message: str, code: str | None = None) -> dict:
    """Mistral's envelope: the error fields at the top level, tagged `object: "error"`."""
    error_type = "invalid_request_error" if status < 500 else "api_error"
    return {"object": "error", "message": message, "type": error_type, "param": None, "code": code}


def anthropic_error(status: int, message: str, req_id: str | None = None) -> dict:
    error_type = ANTHROPIC_TYPES.get(status, "api_error")
    return {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": req_id or request_id(),
    }


INJECTED_400 = "Invalid request: this request was failed on purpose by the emulator."


def server_error_body(shape: Shape, status: int) -> dict:
    """Envelope of an injected failure (HTTP faults on API calls, failed batch requests)."""
    if shape == "gemini":
        message = INJECTED_400 if status == 400 else None
        return google_error(status, message or GOOGLE_SERVER_MESSAGES.get(status, "Unavailable"))
    if shape == "anthropic":
        messages = {
            400: INJECTED_400,
            429: "Number of requests has exceeded your rate limit.",
            529: "Overloaded",
        }
        return anthropic_error(status, messages.get(status, "Internal server error"))
    if shape == "mistral":
        text, _ = OPENAI_SERVER_MESSAGES.get(status, OPENAI_SERVER_MESSAGES[500])
        message = INJECTED_400 if status == 400 else text
        return mistral_error(status, message, "rate_limit_exceeded" if status == 429 else None)
    if status == 400:
        return openai_error(INJECTED_400)
    message, kind = OPENAI_SERVER_MESSAGES.get(status, OPENAI_SERVER_MESSAGES[500])
    if status == 429:
        return openai_error(message, kind or "requests", None, "rate_limit_exceeded")
    return openai_error(message, "server_error")


class ApiError(Exception):
    """An HTTP error response; `shape` picks the envelope, `param`/`code` are OpenAI-only."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        shape: Shape = "openai",
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
        body: dict | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.shape = shape
        self.param = param
        self.code = code
        self.type_ = type_
        self.headers = headers or {}
        self.body = body

    def to_response(self) -> Response:
        req_id = request_id()
        if self.body is not None:
            body = self.body
        elif self.shape == "gemini":
            body = google_error(self.status, self.message, self.code)
        elif self.shape == "anthropic":
            body = anthropic_error(self.status, self.message, req_id)
        elif self.shape == "mistral":
            body = mistral_error(self.status, self.message, self.code)
        else:
            type_ = self.type_ or (
                "server_error" if self.status >= 500 else "invalid_request_error"
            )
            body = openai_error(self.message, type_, self.param, self.code)
        headers = {"x-request-id": req_id, "request-id": req_id, **self.headers}
        return Response(
            orjson.dumps(body), self.status, headers=headers, media_type="application/json"
        )


def not_found(shape: Shape, message: str, param: str | None = None) -> ApiError:
    return ApiError(404, message, shape=shape, param=param)


def bad_request(
    shape: Shape, message: str, param: str | None = None, code: str | None = None
) -> ApiError:
    return ApiError(400, message, shape=shape, param=param, code=code)
