"""BATCHRELAY_TENANTS parsing: JSON, a TOML or JSON file, and clear errors."""

from __future__ import annotations

import pytest

from batchrelay.config import ConfigurationError
from batchrelay.config.tenants import key_digest, load_tenants

DIGEST = key_digest("secret-key")
A = f'{{"name": "a", "key_sha256": ["{DIGEST}"]}}'


def test_json_value_and_authentication():
    tenants = load_tenants(f'[{{"name": "shop", "key_sha256": ["{DIGEST}"], "max_pending": 5}}]')
    assert tenants.authenticate("secret-key").name == "shop"
    assert tenants.authenticate("other") is None
    assert tenants.quota("shop").max_pending == 5 and tenants.quota("nobody") is None


def test_toml_and_json_files(tmp_path):
    toml = tmp_path / "tenants.toml"
    toml.write_text(f'[[tenants]]\nname = "a"\nkey_sha256 = ["{DIGEST}"]\nusd_per_day = 2.5\n')
    assert load_tenants(str(toml)).quota("a").usd_per_day == 2.5
    js = tmp_path / "tenants.json"
    js.write_text(f'[{{"name": "b", "key_sha256": ["{DIGEST}"]}}]')
    assert load_tenants(str(js)).authenticate("secret-key").name == "b"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "BATCHRELAY_TENANTS is not set"),
        ("[", "not valid JSON"),
        ("/nope.toml", "neither a JSON list of tenants nor an existing"),
        ('[{"name": "a", "key_sha256": ["secret-key"]}]', "not the key itself"),
        (f'[{{"name": "a b", "key_sha256": ["{DIGEST}"]}}]', "BATCHRELAY_TENANTS (0.name)"),
        (f'[{{"name": "a", "key_sha256": ["{DIGEST}"], "max_pending": 0}}]', "0.max_pending"),
        (
            f'[{A}, {{"name": "b", "key_sha256": ["{DIGEST}"]}}]',
            "share an API key digest",
        ),
        (
            f'[{A}, {{"name": "a", "key_sha256": ["{"0" * 64}"]}}]',
            "listed twice",
        ),
    ],
)
def test_bad_tenants_are_named(value, message):
    with pytest.raises(ConfigurationError) as err:
        load_tenants(value)
    assert message in str(err.value)
    assert "secret-key" not in str(err.value) or "not the key itself" in str(err.value)
