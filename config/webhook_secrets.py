"""The Standard Webhooks secret format, checked in one place.

Settings check it at start-up (a worker with a bad secret refuses to start) and the signer
checks it again before signing: the `standardwebhooks` library decodes base64 leniently
(it drops invalid characters), so a mangled secret would sign with a different key and every
receiver would reject us. Messages say what is wrong, never the secret.
"""

from __future__ import annotations

import base64
import secrets

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def webhook_secret_key(raw: object) -> bytes:
    """The key bytes of a `whsec_<base64>` secret, or ValueError("must ...") saying why not."""
    if not isinstance(raw, str) or not raw.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX!r} (Standard Webhooks format)")
    try:
        key = base64.b64decode(raw.removeprefix(SECRET_PREFIX), validate=True)
    except ValueError:
        raise ValueError(f"must be base64 after {SECRET_PREFIX!r}") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"must decode to {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, got {len(key)}"
        )
    return key


def generate_webhook_secret(nbytes: int = 32) -> str:
    """A fresh secret in that format: `whsec_` + base64 of `nbytes` random bytes."""
    if not MIN_SECRET_BYTES <= nbytes <= MAX_SECRET_BYTES:
        raise ValueError(f"nbytes must be {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES}")
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")
