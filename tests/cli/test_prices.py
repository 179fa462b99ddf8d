"""The price table: defaults, lookup by model snapshot names, and overrides from the
environment and the TOML configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrelay.config import ConfigurationError
from batchrelay.config.prices import DEFAULT_PRICES, ModelPrice, PriceTable, load_prices


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCHRELAY_PRICES", raising=False)
    monkeypatch.delenv("BATCHRELAY_CONFIG_FILE", raising=False)


@pytest.mark.parametrize(
    ("model", "entry"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ],
)
def test_snapshot_names_find_their_family(model: str, entry: str) -> None:
    assert load_prices().lookup(model) == DEFAULT_PRICES[entry]


def test_unknown_model_has_no_price() -> None:
    assert load_prices().lookup("my-own-model") is None
    assert load_prices().lookup("gpt4o") is None


def test_costs() -> None:
    price = ModelPrice(input=2.5, output=10.0)
    assert price.sync_cost(1_000_000, 500_000) == pytest.approx(7.5)
    assert price.batch_cost(1_000_000, 500_000) == pytest.approx(3.75)
    assert ModelPrice(input=1, batch_discount=0.6).batch_cost(1_000_000, 0) == pytest.approx(0.4)


def test_env_overrides_and_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BATCHRELAY_PRICES",
        '{"gpt-4o": {"output": 12}, "acme-*": {"input": 1, "output": 2, "batch_discount": 0.4}}',
    )
    table = load_prices()
    assert table.lookup("gpt-4o") == ModelPrice(input=2.5, output=12.0)
    assert table.lookup("acme-large-1") == ModelPrice(input=1, output=2, batch_discount=0.4)
    assert table.lookup("gpt-4o-mini") == DEFAULT_PRICES["gpt-4o-mini"]


def test_toml_file_with_env_on_top(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "batchrelay.toml"
    config.write_text(
        'redis_url = "redis://127.0.0.1:6379/0"\n\n'
        '[prices."house-model"]\ninput = 0.5\noutput = 1.5\n\n'
        '[prices."gpt-4o-mini"]\nbatch_discount = 0.25\n'
    )
    monkeypatch.setenv("BATCHRELAY_CONFIG_FILE", str(config))
    monkeypatch.setenv("BATCHRELAY_PRICES", '{"gpt-4o-mini": {"input": 0.2}}')
    table = load_prices()
    assert table.lookup("house-model") == ModelPrice(input=0.5, output=1.5)
    assert table.lookup("gpt-4o-mini") == ModelPrice(input=0.2, output=0.6, batch_discount=0.25)


def test_glob_entries_beat_prefixes() -> None:
    table = PriceTable({"gpt-4o": ModelPrice(input=1), "gpt-4o-*": ModelPrice(input=2)})
    assert table.lookup("gpt-4o-mini").input == 2
    assert table.lookup("gpt-4o").input == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('{"gpt-4o": {"input": -1}}', "BATCHRELAY_PRICES (gpt-4o.input): Input should be"),
        ('{"gpt-4o": {"batch_discount": 2}}', "BATCHRELAY_PRICES (gpt-4o.batch_discount)"),
        ('{"gpt-4o": {"inptu": 1}}', "BATCHRELAY_PRICES (gpt-4o.inptu): Extra inputs"),
        ('{"new-model": {"output": 1}}', "'new-model' has no default price"),
        ('{"gpt-4o": ', "BATCHRELAY_PRICES: not valid JSON"),
    ],
    ids=["negative", "discount", "typo", "no-input", "json"],
)
def test_bad_overrides_name_the_entry(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("BATCHRELAY_PRICES", value)
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_prices()
