"""Azure OpenAI paths: /openai/v1/... and legacy /openai/...?api-version=, `api-key` auth."""

from __future__ import annotations

import time

import httpx
import openai

from tests.emulator.helpers import create_batch, jsonl, read_jsonl, request_line, token, wait_batch


def _azure_legacy(emu) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=emu.base_url,
        api_key=emu.api_key,
        api_version="2024-10-21",
        _strict_response_validation=True,
        max_retries=0,
    )


def _azure_v1(emu) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=emu.azure_base_url,
        api_key="unused",
        default_headers={"api-key": emu.api_key, "Authorization": ""},
        _strict_response_validation=True,
        max_retries=0,
    )


def test_legacy_paths_with_api_version_and_empty_error_file(emulator):
    client = _azure_legacy(emulator)
    batch = create_batch(client, [request_line(i) for i in range(3)], "/chat/completions")
    assert batch.endpoint == "/chat/completions"
    batch = wait_batch(client, batch.id)
    assert batch.status == "completed"
    assert [
        ln["response"]["body"]["choices"][0]["message"]["content"]
        for ln in sorted(read_jsonl(client, batch.output_file_id), key=lambda ln: ln["custom_id"])
    ] == [f"echo: say {token(i)}" for i in range(3)]
    assert batch.error_file_id is not None
    error_file = client.files.retrieve(batch.error_file_id)
    assert error_file.bytes == 0 and error_file.purpose == "batch_output"
    assert client.files.content(batch.error_file_id).content == b""


def test_v1_paths_with_api_key_header(emulator):
    client = _azure_v1(emulator)
    batch = wait_batch(client, create_batch(client, [request_line(0)]).id)
    assert batch.status == "completed" and batch.error_file_id is not None
    assert [b.id for b in client.batches.list()] == [batch.id]
    plain = openai.OpenAI(base_url=emulator.openai_base_url, api_key=emulator.api_key)
    assert [b.id for b in plain.batches.list()] == []
    assert emulator.stats()["batches_created"]["azure"] == 1
    only_api_key = httpx.get(
        emulator.azure_base_url + "/batches", headers={"api-key": emulator.api_key}
    )
    assert only_api_key.status_code == 200 and only_api_key.json()["data"][0]["id"] == batch.id


def test_jobs_never_expire(emulator_factory):
    emu = emulator_factory(completion_window_s=0.3, processing_rate_rps=40)
    client = _azure_legacy(emu)
    start = time.monotonic()
    batch = wait_batch(client, create_batch(client, [request_line(i) for i in range(25)]).id)
    assert time.monotonic() - start > 0.5
    assert batch.status == "completed"
    assert batch.request_counts.completed == 25
    assert batch.expired_at is None


def test_dot_style_upload_fields_on_azure(emulator):
    response = httpx.post(
        f"{emulator.base_url}/openai/files",
        params={"api-version": "2025-04-01-preview"},
        data={
            "purpose": "batch",
            "expires_after.anchor": "created_at",
            "expires_after.seconds": "1209600",
        },
        files={"file": ("in.jsonl", jsonl([request_line(0)]), "application/jsonl")},
        headers={"api-key": emulator.api_key},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["expires_at"] - body["created_at"] == 1209600
