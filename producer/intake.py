"""Checking and routing one request at the door, before anything touches Redis.

Whatever a provider would reject for sure is refused here with an exception that says what and why
(docs/architecture.md, promise 9); a request that passes is routed to its group and encoded once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from batchrelay.config import ProviderProfile, Settings
from batchrelay.config.kinds import GEMINI_ENDPOINTS, MESSAGES_ENDPOINT
from batchrelay.producer import errors
from batchrelay.producer.callbacks import (
    Callback,
    WebhookPolicy,
    callback_json,
    validate_callback,
)
from batchrelay.producer.keys import fingerprint, group_tag

MAX_METADATA_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY = 255
# A tenant name is part of Redis keys ({t:<name>}) and of URLs: short, no braces or spaces.
TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# {"custom_id":"<41>","method":"POST","url":"<endpoint>","body":<body>}\n around the body.
LINE_OVERHEAD = 50 + 41
# Anthropic-style batches wrap a body as {"custom_id":"<41>","params":<body>}, plus a comma:
# fewer bytes than LINE_OVERHEAD + the endpoint, so `line_bytes` also bounds the create body.
MESSAGES = MESSAGES_ENDPOINT
# A Gemini request names its model in the path: /v1beta/models/{model}:{method} (or /v1/...).
GEMINI_PATH = re.compile(r"/(?:v1|v1beta)/models/([A-Za-z0-9][A-Za-z0-9._-]*):([A-Za-z]+)")


def compact(encoded: bytes) -> bytes:
    """`encoded` in a buffer of its own size. orjson returns bytes whose allocation keeps
    its working buffer (about 4 KiB for a 150-byte body); a `submit_many` call holds every
    encoded request until all are checked, so 200,000 small ones held 800 MB, not 40."""
    return bytes(memoryview(encoded)) if encoded else encoded


def dumps_compact(value: Any) -> bytes:
    """`orjson.dumps`, kept at its own size (see `compact`)."""
    return compact(orjson.dumps(value))


@dataclass(slots=True)  # not frozen: one is built per request, and frozen costs ~5 us each
class Prepared:
    """A checked request, ready to be stored (treat as read-only)."""

    tag: str
    profile: str
    endpoint: str
    model: str
    body_json: bytes
    line_bytes: int
    callback_json: bytes
    metadata_json: bytes
    idempotency_key: str
    tenant: str = ""
    max_output_tokens: int = 0  # what the body allows the model to write (cost estimates)

    @property
    def fingerprint(self) -> str:
        """What an idempotency key is bound to: every field that makes the request. A Gemini
        body does not name its model (the path does), so the fingerprint must."""
        body = self.body_json
        if self.endpoint in GEMINI_ENDPOINTS:
            body = self.model.encode() + b"\x00" + body
        return fingerprint(self.endpoint, body, self.callback_json, self.metadata_json)

    @property
    def idem_scope(self) -> str:
        """The idempotency key as stored: each tenant has its own keys, so two tenants using
        the same key neither collide nor learn each other's request ids."""
        return f"{self.tenant}\x00{self.idempotency_key}" if self.tenant else self.idempotency_key


class Router:
    """Picks a request's primary profile: the first profile, in configuration order, whose
    `models` globs match and which accepts the endpoint, and which is enabled or has an
    enabled fallback that can take the request. The worker may still send a batch to one of
    the primary's fallbacks (disabled, batches-in-flight cap, token budget); the group stays
    the primary's."""

    def __init__(self, settings: Settings):
        self.all = list(settings.providers)
        self.by_name = {p.name: p for p in self.all}
        self.profiles = [p for p in self.all if p.enabled]
        self.endpoints = sorted({e for p in self.profiles for e in p.endpoints})

    def usable(self, profile: ProviderProfile, endpoint: str, model: str) -> bool:
        """Whether requests routed to `profile` can be sent somewhere."""
        if profile.enabled:
            return True
        return any(
            f.enabled and f.accepts(endpoint, model)
            for f in (self.by_name[n] for n in profile.fallbacks)
        )

    def max_line_bytes(self, profile: ProviderProfile, endpoint: str, model: str) -> float:
        """The largest request whose token estimate fits an enqueued-token budget of some
        profile the request may go to (infinite where one has no budget): a larger one
        could never be sent."""
        chain = [profile, *(self.by_name[n] for n in profile.fallbacks)]
        usable = [p for p in chain if p.enabled and p.accepts(endpoint, model)]
        fits = [
            math.inf if (b := p.token_budget(model)) is None else b * p.bytes_per_token(model)
            for p in usable
        ]
        return max(fits, default=math.inf)

    def route(self, endpoint: str, model: str) -> ProviderProfile:
        if endpoint not in self.endpoints:
            raise errors.UnknownEndpointError(
                f"endpoint {endpoint!r} is not served by any configured provider; "
                f"supported endpoints: {', '.join(self.endpoints) or 'none (no provider)'}"
            )
        serving = [p for p in self.all if p.serves(model) and self.usable(p, endpoint, model)]
        if not serving:
            globs = sorted({g for p in self.profiles for g in p.models})
            raise errors.UnknownModelError(
                f"model {model!r} matches no provider profile's models ({', '.join(globs)}); "
                "add it to a profile's `models` globs"
            )
        for p in serving:
            if endpoint in p.endpoints:
                return p
        raise errors.UnknownEndpointError(
            f"model {model!r} is served by {', '.join(p.name for p in serving)}, "
            f"which do not accept endpoint {endpoint!r}"
        )


class Intake:
    def __init__(self, settings: Settings):
        self.router = Router(settings)
        self._routes: dict[tuple[str, str], tuple[ProviderProfile, str, float]] = {}
        self.policy = WebhookPolicy.from_settings(settings)

    def prepare(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        callback: Callback | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tenant: str | None = None,
    ) -> Prepared:
        if not isinstance(endpoint, str):
            raise errors.UnknownEndpointError(f"endpoint must be a string, got {type(endpoint)}")
        if not isinstance(body, Mapping):
            raise errors.InvalidRequestError(
                f"body must be a JSON object (a dict), got {type(body).__name__}"
            )
        if endpoint in GEMINI_ENDPOINTS or endpoint.startswith(("/v1/models/", "/v1beta/models/")):
            endpoint, model = _gemini_route(endpoint, body)
        else:
            model = body.get("model")
        if model is None or model == "":
            raise errors.MissingModelError(
                f"body has no 'model'; a batch request must name its model ({endpoint})"
            )
        if not isinstance(model, str):
            raise errors.MissingModelError(f"body 'model' must be a string, got {model!r}")
        route = self._routes.get((endpoint, model))
        if route is None:  # a pair met before was checked then
            _require_text("endpoint", endpoint)
            _require_text("body 'model'", model)
            profile = self.router.route(endpoint, model)
            route = self._routes[endpoint, model] = (
                profile,
                group_tag(profile.name, endpoint, model),
                self.router.max_line_bytes(profile, endpoint, model),
            )
        profile, tag, budget_bytes = route
        if body.get("stream"):
            raise errors.StreamingNotSupportedError(
                "body has 'stream': true; the Batch API does not stream, remove it"
            )
        if endpoint == MESSAGES:
            _check_messages_body(body)
        try:
            body_json = dumps_compact(body)
        except TypeError as exc:
            raise errors.InvalidRequestError(f"body is not JSON-serialisable: {exc}") from None
        _refuse_non_finite("body", body, body_json, errors.InvalidRequestError)
        line_bytes = len(body_json) + len(endpoint) + LINE_OVERHEAD
        if line_bytes > profile.max_line_bytes:
            raise errors.RequestTooLargeError(
                f"request is {line_bytes} bytes as a batch line; provider {profile.name!r} "
                f"accepts at most {profile.max_line_bytes} (max_line_bytes)"
            )
        if line_bytes > budget_bytes:
            raise errors.RequestTooLargeError(
                f"request is {line_bytes} bytes as a batch line, estimated at more enqueued "
                f"tokens than the budget (enqueued_token_budget) for {model!r} at "
                f"{profile.name!r} and its fallbacks; it could never be sent"
            )
        return Prepared(
            tag=tag,
            profile=profile.name,
            endpoint=endpoint,
            model=model,
            body_json=body_json,
            line_bytes=line_bytes,
            callback_json=compact(callback_json(validate_callback(callback, self.policy))),
            metadata_json=_metadata_json(metadata),
            idempotency_key=_idempotency_key(idempotency_key),
            tenant=tenant_name(tenant),
            max_output_tokens=_max_output_tokens(body),
        )


def _max_output_tokens(body: Mapping[str, Any]) -> int:
    """The body's output token cap under any provider's name for it; 0 when it sets none."""
    for name in ("max_completion_tokens", "max_output_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _gemini_route(path: str, body: Mapping[str, Any]) -> tuple[str, str]:
    """(method, model) of a Gemini request path; its model lives in the path, so a body that
    names another model is refused rather than silently overridden."""
    match = GEMINI_PATH.fullmatch(path)
    if match is None or match.group(2) not in GEMINI_ENDPOINTS:
        raise errors.UnknownEndpointError(
            f"endpoint {path!r}: a Gemini request is submitted to its model's path, "
            "/v1beta/models/{model}:generateContent or :embedContent (or /v1/...)"
        )
    model, method = match.group(1), match.group(2)
    named = body.get("model")
    if named is not None and named not in (model, f"models/{model}"):
        raise errors.InvalidRequestError(
            f"body 'model' {named!r} differs from the model in the path ({model!r}); "
            "leave it out or make them agree"
        )
    if method == "generateContent":
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise errors.InvalidRequestError(f"body 'contents' must be a non-empty list for {path}")
    elif not isinstance(body.get("content"), Mapping):
        raise errors.InvalidRequestError(f"body 'content' must be an object for {path}")
    return method, model


def _check_messages_body(body: Mapping[str, Any]) -> None:
    """What every Anthropic-style Messages request needs, or the provider fails it for sure."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise errors.InvalidRequestError(
            f"body 'max_tokens' must be a positive integer for {MESSAGES}, got {max_tokens!r}"
        )
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.InvalidRequestError(f"body 'messages' must be a non-empty list for {MESSAGES}")


def _metadata_json(metadata: Mapping[str, Any] | None) -> bytes:
    if metadata is None:
        return b""
    if not isinstance(metadata, Mapping):
        raise errors.InvalidMetadataError(
            f"metadata must be a JSON object (a dict), got {type(metadata).__name__}"
        )
    if not all(isinstance(k, str) for k in metadata):
        raise errors.InvalidMetadataError("metadata keys must be strings")
    try:
        encoded = dumps_compact(metadata)
    except TypeError as exc:
        raise errors.InvalidMetadataError(f"metadata is not JSON-serialisable: {exc}") from None
    _refuse_non_finite("metadata", metadata, encoded, errors.InvalidMetadataError)
    if len(encoded) > MAX_METADATA_BYTES:
        raise errors.InvalidMetadataError(
            f"metadata is {len(encoded)} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
        )
    return encoded


def _idempotency_key(key: str | None) -> str:
    if key is None:
        return ""
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise errors.InvalidRequestError(
            f"idempotency_key must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} "
            "characters"
        )
    _require_text("idempotency_key", key)
    return key


def tenant_name(tenant: str | None) -> str:
    """The tenant as stored ("" for none); InvalidRequestError for a name keys cannot hold."""
    if tenant is None:
        return ""
    if not isinstance(tenant, str) or not TENANT_NAME.fullmatch(tenant):
        raise errors.InvalidRequestError(
            f"tenant must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
            f"digit), got {tenant!r}"
        )
    return tenant


def _require_text(field: str, value: str) -> None:
    """Refuse a string Redis cannot store as UTF-8 (a lone surrogate such as "\\ud800"),
    before anything is stored rather than half-way through a submit."""
    try:
        value.encode()
    except UnicodeEncodeError as exc:
        raise errors.InvalidRequestError(
            f"{field} is not valid Unicode text ({exc.reason} at position {exc.start})"
        ) from None


def _refuse_non_finite(
    field: str, value: Any, encoded: bytes, error: type[errors.InvalidRequestError]
) -> None:
    """Refuse NaN and Infinity, which orjson writes as null and providers' JSON parsers refuse.
    Only JSON holding a null can hide one, so most requests skip the walk."""
    if b"null" not in encoded:
        return
    stack: list[tuple[Any, str]] = [(value, field)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise error(f"{path} is {item}; JSON has no NaN or Infinity, providers refuse them")
        if isinstance(item, Mapping):
            stack.extend((v, f"{path}.{k}") for k, v in item.items())
        elif isinstance(item, list | tuple):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
