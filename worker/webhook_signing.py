"""Standard Webhooks signatures, computed once per secret per process.

`webhook-signature` is `v1,` + base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>")) per secret,
space-separated. The HMAC is computed here directly from keys decoded once (the
`standardwebhooks` library re-decodes its secret and re-encodes the body on every call);
tests check the `standardwebhooks` package verifies what this signs, one secret and two.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping, Sequence
from hashlib import sha256
from typing import Any

import standardwebhooks
from pydantic import SecretStr

from batchrelay.config.webhook_secrets import webhook_secret_key
from batchrelay.producer import errors

USER_AGENT = "batchrelay-webhooks/1"

WebhookSecret = str | SecretStr


class WebhookSigner:
    """Signs deliveries with every configured secret; several secrets at once is how keys
    rotate (receivers holding either the old or the new secret find a matching signature)."""

    __slots__ = ("_keys",)

    def __init__(self, secrets: Sequence[WebhookSecret]):
        if isinstance(secrets, str | SecretStr) or not secrets:
            raise errors.ConfigurationError(
                "webhook signing needs a non-empty list of secrets (BATCHRELAY_WEBHOOK_SECRETS)"
            )
        self._keys = tuple(_key(s, i) for i, s in enumerate(secrets))

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """The `webhook-signature` value for exactly these bytes."""
        _check_body(body)
        signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
        return " ".join(
            "v1," + base64.b64encode(hmac.digest(key, signed, sha256)).decode("ascii")
            for key in self._keys
        )

    def headers(self, msg_id: str, body: bytes, *, timestamp: int) -> dict[str, str]:
        """Every header of a delivery; the signature covers exactly `body` as sent."""
        if not isinstance(msg_id, str) or not msg_id or any(ord(c) <= 0x20 for c in msg_id):
            raise ValueError("msg_id must be a non-empty string without whitespace")
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.signature(msg_id, timestamp, body),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            # Raw bytes only: a compressed answer could inflate far beyond the prefix we read.
            "accept-encoding": "identity",
        }


def _key(secret: WebhookSecret, index: int) -> bytes:
    """The key bytes, after checking the secret's format (the message never shows it)."""
    raw = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    try:
        return webhook_secret_key(raw)
    except ValueError as exc:
        raise errors.ConfigurationError(f"webhook secret #{index + 1} {exc}") from None


def _check_body(body: bytes) -> None:
    # Standard Webhooks signs text: a body must be UTF-8 (JSON) for receivers to verify it.
    if not isinstance(body, bytes | bytearray):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    try:
        bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("webhook body must be UTF-8 (JSON)") from None


def sign_webhook(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[WebhookSecret]) -> str:
    """The `webhook-signature` value: one `v1,<base64>` per secret, space-separated."""
    return WebhookSigner(secrets).signature(msg_id, timestamp, body)


def verify_webhook(body: bytes, headers: Mapping[str, str], secret: str) -> dict[str, Any]:
    """Verify a delivery and return its JSON payload; raise WebhookVerificationError otherwise.

    For our tests and receivers written in Python. A web app should verify with the
    `standardwebhooks` package (or any Standard Webhooks library) directly, dedupe on
    `webhook-id`, and never depend on batchrelay's worker code. Unlike the bare library call,
    malformed headers or a non-UTF-8 body also raise WebhookVerificationError.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        payload = standardwebhooks.Webhook(secret).verify(bytes(body), lowered)
    except (ValueError, TypeError) as exc:
        raise standardwebhooks.WebhookVerificationError(
            f"malformed webhook ({type(exc).__name__})"
        ) from None
    if not isinstance(payload, dict):
        raise standardwebhooks.WebhookVerificationError("payload is not a JSON object")
    return payload
