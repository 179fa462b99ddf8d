"""Opt-in strictness: auth header styles, `anthropic-version`, Azure `api-version`."""

from __future__ import annotations

import httpx

from tests._emulator import anthropic_client
from tests.emulator.helpers import message_request, wait_message_batch


def test_auth_headers_restrict_styles_but_not_admin(emulator_factory):
    emu = emulator_factory(auth_headers=["x-api-key"])
    key = emu.api_key
    bearer = httpx.get(
        f"{emu.base_url}/v1/messages/batches", headers={"Authorization": f"Bearer {key}"}
    )
    assert bearer.status_code == 401
    assert (
        httpx.get(f"{emu.base_url}/v1/messages/batches", headers={"x-api-key": key}).status_code
        == 200
    )
    admin = httpx.get(f"{emu.base_url}/_emulator/stats", headers={"Authorization": f"Bearer {key}"})
    assert admin.status_code == 200


def test_anthropic_versions(emulator_factory):
    emu = emulator_factory(anthropic_versions=["2023-06-01"])
    url, key = f"{emu.base_url}/v1/messages/batches", {"x-api-key": emu.api_key}
    missing = httpx.get(url, headers=key)
    assert missing.status_code == 400
    assert missing.json()["error"]["message"] == "anthropic-version: header is required"
    wrong = httpx.get(url, headers={**key, "anthropic-version": "1999-01-01"})
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.get(url, headers={**key, "anthropic-version": "2023-06-01"})
    assert ok.status_code == 200


def test_azure_api_versions_on_legacy_paths(emulator_factory):
    emu = emulator_factory(azure_api_versions=["2024-10-21"])
    headers = {"api-key": emu.api_key}
    missing = httpx.get(f"{emu.base_url}/openai/batches", headers=headers)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "404", "message": "Resource not found"}}
    old = httpx.get(f"{emu.base_url}/openai/batches?api-version=2023-01-01", headers=headers)
    assert old.status_code == 400 and old.json()["error"]["code"] == "BadRequest"
    ok = httpx.get(f"{emu.base_url}/openai/batches?api-version=2024-10-21", headers=headers)
    assert ok.status_code == 200
    assert httpx.get(f"{emu.base_url}/openai/v1/batches", headers=headers).status_code == 200


def test_overloaded_request_errors(emulator, emulator_anthropic):
    emulator.set_faults(request_error_fraction=1.0, request_error_status=529)
    batch = emulator_anthropic.messages.batches.create(requests=[message_request(0)])
    batch = wait_message_batch(emulator_anthropic, batch.id)
    (result,) = list(anthropic_client(emulator).messages.batches.results(batch.id))
    assert result.result.type == "errored"
    assert result.result.error.error.type == "overloaded_error"
