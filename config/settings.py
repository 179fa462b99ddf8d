"""One `Settings` object for every process: environment (`BATCHRELAY_*`), `.env`, or a TOML file.

Precedence, highest first: arguments, environment, `.env`, the TOML file named by
`BATCHRELAY_CONFIG_FILE`, defaults. Cross-field rules live here too, so a worker with a
configuration it cannot honour refuses to start instead of failing at 3 a.m.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from batchrelay.config.errors import ConfigurationError
from batchrelay.config.kinds import (
    KIND_SETTINGS,
    KINDS,
    OPENAI,
    VENDORS,
    ProviderKind,
    Vendor,
    kinds_with,
)
from batchrelay.config.urls import RedisUrl, redacted
from batchrelay.config.webhook_secrets import webhook_secret_key

DEFAULT_CHARS_PER_TOKEN = 4.0

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Kind = Literal["openai", "azure", "anthropic", "mistral", "gemini"]
AuthStyle = Literal["bearer", "x-api-key", "api-key", "x-goog-api-key"]
VendorName = Literal["openai", "groq", "together"]


class ProviderProfile(BaseModel):
    """One provider account: where to send batches for the models it serves, and its limits.

    Defaults depend on `kind` (endpoints, limits, auth header), so a profile names only what
    differs from its provider's norm. Settings that make no sense for the kind are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$")]
    kind: Kind = "openai"
    # Before the fields whose checks depend on it (endpoints, completion_window).
    vendor: VendorName | None = None
    base_url: str
    api_key: SecretStr
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    # No static defaults: `_kind_defaults` fills these in from the kind (config/kinds.py).
    endpoints: list[str]
    max_requests_per_batch: PositiveInt
    max_bytes_per_batch: PositiveInt
    max_line_bytes: PositiveInt
    completion_window: str = "24h"
    file_expires_after_s: PositiveInt | None = None
    file_lifetime_cap_s: PositiveInt | None = None
    extra_upload_fields: dict[str, str] = Field(default_factory=dict)
    auth_style: AuthStyle
    anthropic_version: str | None = None
    batches_path: str | None = None
    api_version: str | None = None
    inline_max_bytes: Annotated[int, Field(ge=0)] | None = None
    enabled: bool = True
    fallbacks: list[str] = Field(default_factory=list)
    max_batches_in_flight: PositiveInt | None = None
    enqueued_token_budget: dict[str, PositiveInt] = Field(default_factory=dict)
    token_estimates: dict[str, PositiveFloat | str] = Field(default_factory=dict)
    # Signing secret of the provider's batch event webhooks (OpenAI's project webhook, the
    # Gemini API's static webhook for a gemini profile) that
    # `POST /v1/provider-webhooks/<name>` verifies; unset, that route refuses every call.
    webhook_secret: SecretStr | None = None

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _check_webhook_secret(value)

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        # An unknown kind gets OpenAI's defaults; the Literal check reports the bad kind.
        name = data.get("kind", OPENAI.name)
        kind = KINDS.get(name, OPENAI) if isinstance(name, str) else OPENAI
        vendor = data.get("vendor")
        # A vendor's limits replace the kind's (the vendor check reports a misplaced one).
        facts: ProviderKind | Vendor = kind
        if kind is OPENAI and isinstance(vendor, str) and vendor in VENDORS:
            facts = VENDORS[vendor]
        return {
            "endpoints": list(facts.endpoints),
            "max_requests_per_batch": facts.max_requests_per_batch,
            "max_bytes_per_batch": facts.max_bytes_per_batch,
            "max_line_bytes": kind.max_line_bytes,
            "auth_style": kind.auth_style,
            **kind.defaults,
            **data,
        }

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"must be an http(s) URL such as https://api.openai.com/v1, got {value!r}"
            )
        return value.rstrip("/")

    @field_validator("models")
    @classmethod
    def _globs(cls, value: list[str]) -> list[str]:
        if any(not g.strip() for g in value):
            raise ValueError("model globs must not be empty strings")
        return value

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: list[str], info: ValidationInfo) -> list[str]:
        kind, vendor = info.data.get("kind", OPENAI.name), info.data.get("vendor")
        allowed = _facts(kind, vendor).endpoints
        unknown = [e for e in value if e not in allowed]
        if unknown or not value:
            where = f"vendor {vendor!r}" if vendor else f"kind {kind!r}"
            raise ValueError(
                f"unsupported endpoint(s) {unknown} for {where}; supported: {list(allowed)}"
            )
        return value

    @field_validator(*KIND_SETTINGS)
    @classmethod
    def _kind_only(cls, value: object, info: ValidationInfo) -> object:
        kind, owner = info.data.get("kind", OPENAI.name), kinds_with(info.field_name or "")
        if value and kind not in owner:
            raise ValueError(
                f"does not apply to kind {kind!r} (only to {' and '.join(owner)}); remove it, "
                "or set kind to the provider's protocol"
            )
        return value

    @field_validator("completion_window")
    @classmethod
    def _window(cls, value: str, info: ValidationInfo) -> str:
        windows = _facts(info.data.get("kind", OPENAI.name), info.data.get("vendor"))
        windows = windows.completion_windows
        if value not in windows:
            raise ValueError(f"must be one of {sorted(windows)}, got {value!r}")
        return value

    @field_validator("batches_path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "?" in value):
            raise ValueError(f"must be a path such as /v1/messages/batches, got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("token_estimates")
    @classmethod
    def _estimates(cls, value: dict[str, float | str]) -> dict[str, float | str]:
        from batchrelay.config.tokens import check_tokenizer

        for glob, spec in value.items():
            if isinstance(spec, str):
                try:
                    check_tokenizer(spec)
                except ValueError as exc:
                    raise ValueError(f"{glob!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _limits(self) -> ProviderProfile:
        self._check_kind()
        if self.max_line_bytes > self.max_bytes_per_batch:
            raise ValueError("max_line_bytes must not exceed max_bytes_per_batch")
        self._check_file_lifetime()
        if self.name in self.fallbacks or len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError("fallbacks must name other profiles, each once")
        return self

    def _check_kind(self) -> None:
        path = urlsplit(self.base_url).path.rstrip("/")
        if self.kind == "azure" and (path.endswith("/openai") or path.endswith("/openai/v1")):
            raise ValueError(
                "base_url: for kind 'azure' give the resource endpoint, e.g. "
                "https://NAME.openai.azure.com; batchrelay adds /openai/v1 (or /openai with "
                "api_version)"
            )
        if self.kind == "mistral" and path.endswith("/v1"):
            raise ValueError(
                "base_url: for kind 'mistral' give the API root, e.g. https://api.mistral.ai; "
                "batchrelay adds /v1/files and /v1/batch/jobs"
            )

    def _check_file_lifetime(self) -> None:
        window = self.completion_window_s
        asked, cap = self.file_expires_after_s, self.file_lifetime_cap_s
        if cap is not None and cap <= window:
            raise ValueError(
                f"file_lifetime_cap_s ({cap}) does not exceed the completion window ({window} s):"
                " this provider deletes input files before a batch may finish; check the "
                "provider's file lifetime and fix file_lifetime_cap_s"
            )
        if asked is not None and asked <= window:
            raise ValueError(
                f"file_expires_after_s ({asked}) must exceed the completion window ({window} s), "
                "or the input file may vanish mid-batch; raise file_expires_after_s"
            )
        if asked is not None and cap is not None and asked > cap:
            raise ValueError(
                f"file_expires_after_s ({asked}) exceeds file_lifetime_cap_s ({cap}), the "
                "longest this provider keeps files, so uploads would be refused; lower "
                f"file_expires_after_s to at most {cap} (or leave it out to ask for the cap)"
            )
        bounds, expiry = self.provider_kind.file_expiry_s, self.upload_expiry_s
        if bounds is not None and expiry is not None and not bounds[0] <= expiry <= bounds[1]:
            raise ValueError(
                f"file_expires_after_s ({expiry}): kind {self.kind!r} accepts file expiries of "
                f"{bounds[0]}-{bounds[1]} s; change file_expires_after_s"
            )

    @property
    def provider_kind(self) -> ProviderKind:
        """The facts of this profile's wire protocol (config/kinds.py)."""
        return KINDS[self.kind]

    @property
    def vendor_facts(self) -> Vendor:
        """The OpenAI-style vendor this profile talks to (OpenAI itself unless named)."""
        return VENDORS[self.vendor or OPENAI.name]

    @property
    def completion_window_s(self) -> int:
        return _facts(self.kind, self.vendor).completion_windows[self.completion_window]

    @property
    def upload_expiry_s(self) -> int | None:
        """The input-file lifetime asked for at upload: the setting, else the provider's cap."""
        return self.file_expires_after_s or self.file_lifetime_cap_s

    def serves(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, glob) for glob in self.models)

    def accepts(self, endpoint: str, model: str) -> bool:
        return endpoint in self.endpoints and self.serves(model)

    def token_budget(self, model: str) -> int | None:
        """The enqueued-token budget for `model` (first matching glob), or None."""
        for glob, budget in self.enqueued_token_budget.items():
            if fnmatch.fnmatchcase(model, glob):
                return budget
        return None

    def bytes_per_token(self, model: str) -> float:
        """Bytes per token for bounding a claim: the ratio, or 1 where a tokenizer counts (a
        tokenizer never finds more tokens than a text has bytes)."""
        spec = self.token_estimate(model)
        return 1.0 if isinstance(spec, str) else float(spec)

    def token_estimate(self, model: str) -> float | str:
        """Characters per token, or a tokenizer spec, for `model` (first matching glob)."""
        for glob, spec in self.token_estimates.items():
            if fnmatch.fnmatchcase(model, glob):
                return spec
        return DEFAULT_CHARS_PER_TOKEN


def _facts(kind: str, vendor: str | None) -> ProviderKind | Vendor:
    """Where a profile's endpoints and windows come from: its vendor's facts, else its kind's."""
    return VENDORS[vendor] if vendor else KINDS[kind]


def _check_webhook_secret(value: SecretStr) -> SecretStr:
    try:
        webhook_secret_key(value.get_secret_value())
    except ValueError as exc:
        raise ValueError(f"webhook secret {exc}") from None
    return value


BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")


def config_file_sources(settings_cls: type[BaseSettings]) -> list[PydanticBaseSettingsSource]:
    """The TOML file named by BATCHRELAY_CONFIG_FILE, below the environment and `.env`."""
    config_file = os.environ.get("BATCHRELAY_CONFIG_FILE")
    if not config_file:
        return []
    path = Path(config_file)
    if not path.is_file():
        raise ConfigurationError(
            f"BATCHRELAY_CONFIG_FILE: {config_file!r} does not exist or is not a file"
        )
    return [TomlConfigSettingsSource(settings_cls, toml_file=path)]


class Settings(BaseSettings):
    """Everything a producer, worker or beat needs; secrets are `SecretStr`, never logged."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHRELAY_", env_file=".env", extra="ignore", frozen=True
    )

    redis_url: RedisUrl = RedisUrl("redis://127.0.0.1:6379/0")
    # None: ask the server (INFO cluster_enabled); true/false: skip the question.
    redis_cluster: bool | None = None
    # Celery's broker; None: the Redis URL, which a Redis Cluster cannot be (kombu has no
    # cluster transport), so a cluster needs a standalone Redis or RabbitMQ here.
    broker_url: RedisUrl | None = None
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "br"
    queue: Annotated[str, Field(min_length=1)] = "batchrelay"
    providers: list[ProviderProfile] = Field(default_factory=list)

    # The batch lines one submit_many call may hold: every item is checked (and held,
    # encoded) before any is stored, so this bounds the caller's memory.
    submit_max_bytes: PositiveInt = 100 * 1024 * 1024

    flush_max_wait_s: PositiveFloat = 60.0
    flush_max_requests: PositiveInt | None = None
    flush_max_bytes: PositiveInt | None = None

    tick_s: PositiveFloat = 1.0
    poll_interval_s: PositiveFloat = 30.0
    poll_max_interval_s: PositiveFloat = 300.0
    stuck_after_s: PositiveFloat = 3600.0
    lease_s: PositiveFloat = 300.0
    # How long a `batchrelay run` that stopped answering (killed) keeps its locks and its
    # profile reservations; a live run refreshes them every third of it.
    run_lease_s: PositiveFloat = 60.0
    token_limit_backoff_s: PositiveFloat = 300.0
    max_attempts: PositiveInt = 5
    http_max_retries: Annotated[int, Field(ge=0)] = 5
    http_timeout_s: PositiveFloat = 60.0

    delivery_retry_schedule_s: list[PositiveFloat] = Field(
        default_factory=lambda: [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400]
    )
    # A worker process sends up to `delivery_concurrency` webhooks at once on one event loop
    # (worker/engine.py). A task's window fills at its start and drains at its end: in
    # bench_webhooks 500 per task reached 0.41 x a plain aiohttp client, 2,000 0.58-0.64.
    delivery_chunk: PositiveInt = 2000
    delivery_concurrency: Annotated[int, Field(gt=0, le=512)] = 64
    webhook_secrets: list[SecretStr] = Field(default_factory=list)
    webhook_timeout_s: PositiveFloat = 15.0
    webhook_allow_private: bool = False
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    result_retention_s: PositiveInt = 7 * 86_400

    task_time_limit_s: PositiveInt = 1800
    visibility_timeout_s: PositiveInt = 3600
    spool_dir: Path | None = None
    delete_provider_files: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            *config_file_sources(settings_cls),
            file_secret_settings,
        )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: RedisUrl) -> RedisUrl:
        if urlsplit(value.get_secret_value()).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url(cls, value: RedisUrl | None) -> RedisUrl | None:
        if value is not None and urlsplit(value.get_secret_value()).scheme not in BROKER_SCHEMES:
            raise ValueError("must start with " + ", ".join(f"{s}://" for s in BROKER_SCHEMES))
        return value

    @field_validator("webhook_secrets")
    @classmethod
    def _secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        return [_check_webhook_secret(v) for v in value]

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        # Checked here, so a bad entry stops the worker at start instead of failing every
        # delivery. The producer package imports config, hence the late import.
        from batchrelay.producer.callbacks import WebhookPolicy

        try:
            WebhookPolicy(allow_hosts=tuple(value))
        except ConfigurationError as exc:
            raise ValueError(str(exc).removeprefix("WebhookPolicy.allow_hosts: ")) from None
        return value

    @field_validator("delivery_retry_schedule_s")
    @classmethod
    def _schedule(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("needs at least one retry delay")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"providers: duplicate profile name(s) {dupes}")
        _check_fallbacks(self.providers)
        if self.task_time_limit_s >= self.visibility_timeout_s:
            raise ValueError(
                "task_time_limit_s must be below visibility_timeout_s, or a slow task is "
                "redelivered while it still runs"
            )
        if self.lease_s <= self.http_timeout_s:
            raise ValueError("lease_s must exceed http_timeout_s")
        window = sum(self.delivery_retry_schedule_s)
        if self.result_retention_s <= window:
            raise ValueError(
                f"result_retention_s ({self.result_retention_s}) must exceed the delivery retry "
                f"schedule ({window:.0f} s), or a result expires before its last delivery"
            )
        return self

    def profile(self, name: str) -> ProviderProfile:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def require_providers(self) -> None:
        """Processes that move batches need at least one provider; a web app may not."""
        if not self.providers:
            raise ConfigurationError(
                "BATCHRELAY_PROVIDERS: no provider profile configured; set it as JSON, e.g. "
                '[{"name":"openai","base_url":"https://api.openai.com/v1","api_key":"sk-..."}], '
                "or in the TOML file named by BATCHRELAY_CONFIG_FILE"
            )


def _check_fallbacks(profiles: list[ProviderProfile]) -> None:
    by_name = {p.name: p for p in profiles}
    for i, p in enumerate(profiles):
        for name in p.fallbacks:
            other = by_name.get(name)
            if other is None:
                raise ValueError(
                    f"BATCHRELAY_PROVIDERS (providers.{i}.fallbacks): no profile named {name!r} "
                    f"(profiles: {', '.join(by_name)})"
                )
            if not set(p.endpoints) & set(other.endpoints):
                raise ValueError(
                    f"BATCHRELAY_PROVIDERS (providers.{i}.fallbacks): {name!r} ({other.kind}) "
                    f"accepts none of {p.name!r}'s endpoints {p.endpoints}, so it cannot take "
                    "its requests"
                )


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"])
        setting = f"BATCHRELAY_{loc.split('.')[0].upper()}" if loc else "settings"
        where = f"{setting} ({loc})" if "." in loc else setting
        lines.append(f"{where}: {e['msg']}")
    return "invalid batchrelay configuration:\n  " + "\n  ".join(lines)


# Where pydantic-settings read a value, in the words of the README's Configuration section.
_SOURCES = {
    "EnvSettingsSource": "the environment",
    "DotEnvSettingsSource": ".env",
    "TomlConfigSettingsSource": "the file named by BATCHRELAY_CONFIG_FILE",
}


def _describe_unparsable(error: SettingsError) -> str:
    """A value pydantic-settings could not decode as JSON, named as the operator set it."""
    text = str(error)
    field = re.search(r'field "(\w+)"', text)
    source = re.search(r'source "(\w+)"', text)
    name = f"BATCHRELAY_{field.group(1).upper()}" if field else "settings"
    where = f" in {_SOURCES.get(source.group(1), 'the settings')}" if source else ""
    why = f" ({error.__cause__})" if error.__cause__ else ""
    return f"invalid batchrelay configuration:\n  {name}{where}: not valid JSON{why}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings or raise `ConfigurationError` naming each bad setting.

    Every message is redacted: a URL's password or token never reaches a log or terminal.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        message = _describe(exc)
    except SettingsError as exc:
        message = _describe_unparsable(exc)
    except tomllib.TOMLDecodeError as exc:
        message = (
            f"invalid batchrelay configuration:\n  BATCHRELAY_CONFIG_FILE: not valid TOML ({exc})"
        )
    except ConfigurationError as exc:
        message = str(exc)
    raise ConfigurationError(redacted(message)) from None
