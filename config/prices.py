"""Model prices for the cost table of `batchrelay run`: USD per 1M tokens and the batch discount.

The defaults are list prices of common OpenAI, Anthropic, Mistral and Gemini models (synchronous
API, standard tier, as published in 2025); providers change them, so any entry can be overridden or
added without a release, from the environment or the TOML file the rest of the settings come from:

    BATCHRELAY_PRICES='{"gpt-4o": {"input": 2.5, "output": 10}, "my-model": {"input": 1}}'

    # in the file named by BATCHRELAY_CONFIG_FILE
    [prices."my-model"]
    input = 1.0
    output = 2.0
    batch_discount = 0.5

An override of a known model may give only the fields it changes; a new model needs `input`.
Prices load on their own (not through `Settings`), so a process that never prints costs never
reads them, and a bad price entry cannot stop a worker from starting.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from batchrelay.config.errors import ConfigurationError
from batchrelay.config.settings import config_file_sources

NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
BATCH_DISCOUNT = 0.5


class ModelPrice(BaseModel):
    """Synchronous list price in USD per 1M tokens; the Batch API charges (1 - discount) of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: NonNegative
    output: NonNegative = 0.0
    batch_discount: Fraction = BATCH_DISCOUNT

    def sync_cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1_000_000

    def batch_cost(self, input_tokens: int, output_tokens: int) -> float:
        return self.sync_cost(input_tokens, output_tokens) * (1 - self.batch_discount)


class PriceOverride(BaseModel):
    """One configured entry: every field optional, so a known model can change only one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: NonNegative | None = None
    output: NonNegative | None = None
    batch_discount: Fraction | None = None


def _p(input_usd: float, output_usd: float = 0.0) -> ModelPrice:
    return ModelPrice(input=input_usd, output=output_usd)


DEFAULT_PRICES: dict[str, ModelPrice] = {
    # OpenAI
    "gpt-5": _p(1.25, 10.0),
    "gpt-5-mini": _p(0.25, 2.0),
    "gpt-5-nano": _p(0.05, 0.40),
    "gpt-4.1": _p(2.0, 8.0),
    "gpt-4.1-mini": _p(0.40, 1.60),
    "gpt-4.1-nano": _p(0.10, 0.40),
    "gpt-4o": _p(2.50, 10.0),
    "gpt-4o-mini": _p(0.15, 0.60),
    "gpt-4-turbo": _p(10.0, 30.0),
    "gpt-4": _p(30.0, 60.0),
    "gpt-3.5-turbo": _p(0.50, 1.50),
    "o1": _p(15.0, 60.0),
    "o1-mini": _p(1.10, 4.40),
    "o3": _p(2.0, 8.0),
    "o3-mini": _p(1.10, 4.40),
    "o4-mini": _p(1.10, 4.40),
    "text-embedding-3-small": _p(0.02),
    "text-embedding-3-large": _p(0.13),
    "text-embedding-ada-002": _p(0.10),
    "omni-moderation-latest": _p(0.0),
    # Anthropic
    "claude-opus-4-5": _p(5.0, 25.0),
    "claude-opus-4": _p(15.0, 75.0),
    "claude-sonnet-4": _p(3.0, 15.0),
    "claude-haiku-4-5": _p(1.0, 5.0),
    "claude-3-7-sonnet": _p(3.0, 15.0),
    "claude-3-5-sonnet": _p(3.0, 15.0),
    "claude-3-5-haiku": _p(0.80, 4.0),
    "claude-3-opus": _p(15.0, 75.0),
    "claude-3-haiku": _p(0.25, 1.25),
    # Mistral (its batch jobs are also half price)
    "mistral-large": _p(2.0, 6.0),
    "mistral-medium": _p(0.40, 2.0),
    "mistral-small": _p(0.10, 0.30),
    "ministral-8b": _p(0.10, 0.10),
    "ministral-3b": _p(0.04, 0.04),
    "open-mistral-nemo": _p(0.15, 0.15),
    "codestral": _p(0.30, 0.90),
    "pixtral-large": _p(2.0, 6.0),
    "mistral-embed": _p(0.10),
    "mistral-moderation": _p(0.10),
    # Google Gemini (prompts up to 200k tokens; longer ones cost more on the Pro models)
    "gemini-2.5-pro": _p(1.25, 10.0),
    "gemini-2.5-flash": _p(0.30, 2.50),
    "gemini-2.5-flash-lite": _p(0.10, 0.40),
    "gemini-2.0-flash": _p(0.10, 0.40),
    "gemini-2.0-flash-lite": _p(0.075, 0.30),
    "gemini-embedding-001": _p(0.15),
}


class PriceSettings(BaseSettings):
    """`BATCHRELAY_PRICES` (JSON), `.env`, and the `[prices]` table of BATCHRELAY_CONFIG_FILE."""

    model_config = SettingsConfigDict(env_prefix="BATCHRELAY_", env_file=".env", extra="ignore")

    prices: dict[str, PriceOverride] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, dotenv_settings, *config_file_sources(settings_cls))


def usage_tokens(usage: Any) -> tuple[int, int]:
    """(input, output) tokens of a response's `usage`: chat/completions `prompt_tokens` and
    `completion_tokens`, responses and Anthropic `input_tokens` and `output_tokens`,
    embeddings `prompt_tokens` only. Prompt-cache token counts are not priced."""
    if not isinstance(usage, dict):
        return 0, 0
    return _first(usage, INPUT_NAMES), _first(usage, OUTPUT_NAMES)


INPUT_NAMES = ("prompt_tokens", "input_tokens")
OUTPUT_NAMES = ("completion_tokens", "output_tokens")


def _first(usage: dict[str, Any], names: tuple[str, ...]) -> int:
    """The first of `names` holding an integer (a JSON number, not true/false)."""
    for name in names:
        value = usage.get(name)
        if type(value) is int:  # called per result line: cheaper than isinstance, bool excluded
            return value
    return 0


_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class PriceTable:
    """Looks a model up: exact name, then glob entries (longest first), then the longest entry
    that is a dash-separated prefix, so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`
    and `claude-sonnet-4-20250514` as `claude-sonnet-4`."""

    prices: Mapping[str, ModelPrice]

    def lookup(self, model: str) -> ModelPrice | None:
        exact = self.prices.get(model)
        if exact is not None:
            return exact
        globs = sorted((k for k in self.prices if _GLOB.search(k)), key=len, reverse=True)
        for pattern in globs:
            if fnmatch.fnmatchcase(model, pattern):
                return self.prices[pattern]
        prefixes = [k for k in self.prices if model.startswith(k + "-")]
        return self.prices[max(prefixes, key=len)] if prefixes else None


def merge(
    defaults: Mapping[str, ModelPrice], overrides: Mapping[str, PriceOverride]
) -> dict[str, ModelPrice]:
    merged = dict(defaults)
    for model, override in overrides.items():
        given = override.model_dump(exclude_none=True)
        base = merged.get(model)
        if base is None:
            if "input" not in given:
                raise ConfigurationError(
                    f"invalid batchrelay configuration:\n  BATCHRELAY_PRICES ({model}): "
                    f"{model!r} has no default price, so it needs at least 'input' "
                    "(USD per 1M input tokens)"
                )
            merged[model] = ModelPrice(**given)
        else:
            merged[model] = base.model_copy(update=given)
    return merged


def _describe(error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = ".".join(str(p) for p in e["loc"][1:])
        lines.append(f"BATCHRELAY_PRICES ({loc or 'prices'}): {e['msg']}")
    return "invalid batchrelay configuration:\n  " + "\n  ".join(lines)


def load_prices(**overrides: object) -> PriceTable:
    """The default table with configured overrides applied; ConfigurationError names a bad
    entry. Keyword arguments (e.g. `prices={...}`) take precedence over the environment."""
    try:
        configured = PriceSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None
    except SettingsError as exc:
        raise ConfigurationError(
            f"invalid batchrelay configuration:\n  BATCHRELAY_PRICES: not valid JSON ({exc})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"invalid batchrelay configuration:\n  BATCHRELAY_CONFIG_FILE: not valid TOML ({exc})"
        ) from None
    return PriceTable(merge(DEFAULT_PRICES, configured.prices))
