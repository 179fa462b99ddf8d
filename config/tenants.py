"""Tenants of a shared relay: who may call `batchrelay serve`, and how much each may use.

`BATCHRELAY_TENANTS` holds a JSON list, or names a `.toml` or `.json` file holding one
(TOML: a `[[tenants]]` array of tables). Each tenant has a name, the SHA-256 (hex) of each
of its API keys (several, so a key can be rotated without downtime; plaintext keys are never
configured, stored or logged) and optional quotas:

    [{"name": "shop", "key_sha256": ["9f86d08..."], "max_pending": 1000,
      "requests_per_day": 50000, "usd_per_day": 20.0}]
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from batchrelay.config.errors import ConfigurationError

ENV = "BATCHRELAY_TENANTS"
TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class Quota(BaseModel):
    """Limits of one tenant; None is no limit. Checked atomically with each submit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pending: Annotated[int, Field(gt=0)] | None = None
    requests_per_day: Annotated[int, Field(gt=0)] | None = None
    usd_per_day: Annotated[float, Field(gt=0)] | None = None


class Tenant(Quota):
    name: TenantName
    key_sha256: Annotated[list[str], Field(min_length=1)]

    @field_validator("key_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest.lower()):
                raise ValueError(
                    "each key_sha256 entry is the SHA-256 of an API key as 64 hex digits "
                    '(e.g. `printf %s "$KEY" | sha256sum`), not the key itself'
                )
        return [d.lower() for d in value]

    @property
    def quota(self) -> Quota:
        return Quota(
            max_pending=self.max_pending,
            requests_per_day=self.requests_per_day,
            usd_per_day=self.usd_per_day,
        )


def key_digest(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class Tenants:
    """The configured tenants, found by name or by an API key's digest."""

    by_name: Mapping[str, Tenant]
    by_digest: Mapping[str, Tenant]

    @classmethod
    def of(cls, tenants: list[Tenant]) -> Tenants:
        by_name: dict[str, Tenant] = {}
        by_digest: dict[str, Tenant] = {}
        for t in tenants:
            if t.name in by_name:
                raise ConfigurationError(f"{ENV}: tenant {t.name!r} is listed twice")
            by_name[t.name] = t
            for digest in t.key_sha256:
                other = by_digest.setdefault(digest, t)
                if other is not t:
                    raise ConfigurationError(
                        f"{ENV}: tenants {other.name!r} and {t.name!r} share an API key digest"
                    )
        return cls(by_name, by_digest)

    def authenticate(self, api_key: str) -> Tenant | None:
        return self.by_digest.get(key_digest(api_key))

    def quota(self, name: str) -> Quota | None:
        tenant = self.by_name.get(name)
        return None if tenant is None else tenant.quota


_LIST = TypeAdapter(list[Tenant])


def load_tenants(value: str | None = None) -> Tenants:
    """Parse `value` (default: $BATCHRELAY_TENANTS); ConfigurationError says what is wrong."""
    raw = os.environ.get(ENV, "") if value is None else value
    if not raw.strip():
        raise ConfigurationError(f"{ENV} is not set: `batchrelay serve` needs at least one tenant")
    try:
        data = _parse(raw.strip())
        return Tenants.of(_LIST.validate_python(data))
    except ValidationError as exc:
        lines = [f"{ENV} ({'.'.join(map(str, e['loc']))}): {e['msg']}" for e in exc.errors()]
        raise ConfigurationError(
            "invalid batchrelay configuration:\n  " + "\n  ".join(lines)
        ) from None


def _json(raw: str, where: str) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError(f"{ENV}: {where} is not valid JSON ({exc})") from None


def _parse(raw: str) -> object:
    if raw[0] in "[{":
        return _json(raw, "the value")
    path = Path(raw)
    if not path.is_file():
        raise ConfigurationError(
            f"{ENV}: {raw!r} is neither a JSON list of tenants nor an existing .toml/.json file"
        )
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            return tomllib.loads(text).get("tenants", [])
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{ENV}: {raw} is not valid TOML ({exc})") from None
    return _json(text, raw)
