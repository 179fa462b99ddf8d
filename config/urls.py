"""URLs that may carry credentials, made fit to show: in logs, errors, Celery's conf, Flower."""

from __future__ import annotations

import re

from pydantic import SecretStr

# `scheme://userinfo@`: userinfo runs to the last `@` before the host's `/`, `?` or `#`, as
# `urlsplit` reads it, so a password holding a raw `@` is still covered whole.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s'\"]*)@")
# redis-py also reads a password from the query string (`?password=...`).
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&#\s'\"]*", re.IGNORECASE)


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    # A name with a password keeps the name; a lone userinfo (often a token) is masked whole.
    shown = f"{user}:***" if colon else "***"
    return f"{match.group('scheme')}{shown}@"


def redacted(text: str) -> str:
    """`text` with the password (or lone token) of every URL in it replaced by `***`."""
    return _QUERY_PASSWORD.sub(r"\g<key>***", _USERINFO.sub(_mask, text))


class RedisUrl(SecretStr):
    """The Redis URL: `str()` and `repr()` mask its password; connect with `get_secret_value()`.

    Shown masked rather than as `**********`, so an operator still sees which Redis is meant.
    """

    def _display(self) -> str:
        return redacted(self.get_secret_value())
