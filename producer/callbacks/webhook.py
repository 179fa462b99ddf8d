"""The `Webhook` callback kind, and the check that its URL is safe to call.

A webhook URL comes from an app, and the worker that calls it sits inside our network, so a
careless or hostile URL could make batchrelay POST to Redis, a cloud metadata endpoint or an
admin panel (SSRF). `check_webhook_url` refuses such URLs at the door (docs/architecture.md,
promise 9) and again at delivery time, because DNS may have changed in between. It parses with
httpx's URL parser, the same one the worker sends with, so the check and the request cannot
disagree about the host.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from batchrelay.producer import errors
from batchrelay.producer.callbacks.addresses import literal_address
from batchrelay.producer.callbacks.policy import WebhookPolicy
from batchrelay.producer.callbacks.resolution import check_address, resolve_webhook_host

MAX_URL_LENGTH = 2048
MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class Webhook:
    """POST the result, signed per Standard Webhooks, to `url`; the request id is `webhook-id`."""

    kind: ClassVar[str] = "webhook"
    url: str

    def check(self, policy: WebhookPolicy, *, resolve: bool = True) -> None:
        check_webhook_url(self.url, policy, resolve=resolve)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Webhook:
        return cls(url=record["url"])


def check_webhook_port(port: int | None) -> None:
    """Refuse a port no TCP connection can use: the socket layer would wrap 120539 to 55003,
    reaching a port the URL check never saw. None is the scheme's default port."""
    if port is not None and not 1 <= port <= MAX_PORT:
        raise errors.InvalidCallbackError(f"webhook URL port {port} is outside 1-{MAX_PORT}")


def check_webhook_url(
    url: str, policy: WebhookPolicy, *, resolve: bool = True, resolve_fresh: bool = False
) -> None:
    """Raise InvalidCallbackError unless batchrelay may POST to `url` under `policy`.

    `resolve=False` checks only what the URL says by itself (literal addresses included);
    `resolve_fresh=True` bypasses the DNS cache, for the re-check just before delivery.
    Messages name the host but never echo the whole URL, whose query may carry a token.
    """
    if not isinstance(url, str):
        raise errors.InvalidCallbackError(f"webhook URL must be a string, not {type(url).__name__}")
    if len(url) > MAX_URL_LENGTH:
        raise errors.InvalidCallbackError(
            f"webhook URL is {len(url)} characters long; the limit is {MAX_URL_LENGTH}"
        )
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise errors.InvalidCallbackError("webhook URL contains whitespace or control characters")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii")
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise errors.InvalidCallbackError(f"webhook URL is not a valid URL ({exc})") from None
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        what = f"scheme {scheme!r} is not allowed" if scheme else "has no scheme"
        raise errors.InvalidCallbackError(f"webhook URL {what}; use http or https")
    if policy.require_https and scheme != "https":
        raise errors.InvalidCallbackError(
            "webhook URL must use https (WebhookPolicy.require_https)"
        )
    authority = re.split(r"[/?#]", url.split("//", 1)[-1], maxsplit=1)[0]
    if parsed.userinfo or "@" in authority:
        raise errors.InvalidCallbackError(
            "webhook URL must not contain credentials (user:password@); authenticate receivers "
            "with the webhook signature instead"
        )
    if not host:
        raise errors.InvalidCallbackError("webhook URL has no host")
    check_webhook_port(port)
    if resolve:
        resolve_webhook_host(host, policy, fresh=resolve_fresh)
        return
    if policy.allows_name(host):
        return
    literal = literal_address(host)
    if literal is not None:
        check_address(literal, policy, str(literal))
