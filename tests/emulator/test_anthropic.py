"""Anthropic Message Batches through the official SDK (strict), and the reseller path."""

from __future__ import annotations

import time
from datetime import timedelta

import anthropic
import httpx
import orjson
import pytest
from anthropic.types.messages import MessageBatch

from tests._emulator import anthropic_client, openai_client
from tests.emulator.helpers import (
    message_request,
    request_line,
    token,
    upload,
    wait_batch,
    wait_message_batch,
)


def test_lifecycle_and_results(emulator, emulator_anthropic):
    emulator.set_timings(processing_rate_rps=100, finalizing_delay_s=0.1)
    requests = [message_request(i) for i in range(20)]
    batch = emulator_anthropic.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_")
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.model_dump() == {
        "processing": 20,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch.results_url is None and batch.ended_at is None
    assert batch.expires_at - batch.created_at == timedelta(hours=24)
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        list(emulator_anthropic.messages.batches.results(batch.id))

    batch = wait_message_batch(emulator_anthropic, batch.id)
    assert batch.request_counts.succeeded == 20 and batch.request_counts.processing == 0
    assert batch.ended_at >= batch.created_at
    assert batch.results_url == f"{emulator.base_url}/v1/messages/batches/{batch.id}/results"
    results = list(emulator_anthropic.messages.batches.results(batch.id))
    assert [r.custom_id for r in results] != [r["custom_id"] for r in requests]
    assert sorted(r.custom_id for r in results) == sorted(r["custom_id"] for r in requests)
    for result in results:
        i = int(result.custom_id.split("-")[1])
        assert result.result.type == "succeeded"
        message = result.result.message
        assert message.content[0].text == f"echo: say {token(i)}"
        assert message.usage.input_tokens > 0 and message.stop_reason == "end_turn"


def test_raw_timestamps_are_rfc3339(emulator):
    response = httpx.post(
        f"{emulator.base_url}/v1/messages/batches",
        json={"requests": [message_request(0)]},
        headers={"x-api-key": emulator.api_key, "anthropic-version": "2023-06-01"},
    )
    body = response.json()
    assert body["created_at"].endswith("Z") and "T" in body["created_at"]
    assert set(body) == set(MessageBatch.model_fields)


def test_invalid_params_become_errored_results(emulator_anthropic):
    requests = [
        message_request(0),
        {
            "custom_id": "no-max-tokens",
            "params": {
                "model": "claude-sonnet-4-5",
                "messages": [{"role": "user", "content": "x"}],
            },
        },
        message_request(2, max_tokens=0),
        message_request(3, model="llama-3"),
        message_request(4, messages=[]),
        message_request(5, stream=True),
        {"custom_id": "params-not-object", "params": "nope"},
    ]
    batch = emulator_anthropic.messages.batches.create(requests=requests)
    batch = wait_message_batch(emulator_anthropic, batch.id)
    assert batch.request_counts.succeeded == 1 and batch.request_counts.errored == 6
    by_id = {r.custom_id: r.result for r in emulator_anthropic.messages.batches.results(batch.id)}
    assert by_id["req-0"].type == "succeeded"
    assert by_id["no-max-tokens"].error.error.type == "invalid_request_error"
    assert by_id["no-max-tokens"].error.error.message == "max_tokens: Field required"
    assert by_id["req-3"].error.error.type == "not_found_error"
    for key in ("req-2", "req-4", "req-5", "params-not-object"):
        assert by_id[key].type == "errored"
        assert by_id[key].error.type == "error"


@pytest.mark.parametrize(
    ("requests", "message"),
    [
        (
            [{"custom_id": "x" * 65, "params": {}}],
            "requests.0.custom_id: String should have at most 64 characters",
        ),
        (
            [message_request(0), {"custom_id": "has space", "params": {}}],
            "requests.1.custom_id: String should match pattern",
        ),
        ([message_request(0), message_request(0)], "requests.1.custom_id: Duplicate custom_id"),
        ([{"custom_id": "a"}], "requests.0.params: Field required"),
        ([], "requests: List should have at least 1 item"),
    ],
)
def test_create_400s(emulator_anthropic, requests, message):
    with pytest.raises(anthropic.BadRequestError) as info:
        emulator_anthropic.messages.batches.create(requests=requests)
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert info.value.body["error"]["message"].startswith(message)


@pytest.mark.parametrize(
    "body",
    [
        b'{"requests": {"a": 1}}',
        b'{"requests": [1, {"custom_id": "a", "params": {}}]}',
        b'{"requests": ["x"]}',
        b'{"other": []}',
        b"[]",
        b'{"requests": [{"custom_id": "a", "params": {}}, 2]}',
        b"",
        b'{"requests": [{"custom_id": "a", "params": {}',
    ],
)
def test_malformed_bodies_are_400(emulator, body):
    response = httpx.post(
        f"{emulator.base_url}/v1/messages/batches",
        content=body,
        headers={"x-api-key": emulator.api_key, "content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_pretty_printed_body_with_tricky_strings(emulator, emulator_anthropic):
    requests = [message_request(i) for i in range(50)]
    requests[7]["params"]["messages"][0]["content"] = (
        'quote " brace { ] bracket \\ and "requests": ['
    )
    body = orjson.dumps({"note": "requests", "requests": requests}, option=orjson.OPT_INDENT_2)
    response = httpx.post(
        f"{emulator.base_url}/v1/messages/batches",
        content=body,
        headers={"x-api-key": emulator.api_key, "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    batch = wait_message_batch(emulator_anthropic, response.json()["id"])
    assert batch.request_counts.succeeded == 50
    texts = {
        r.custom_id: r.result.message.content[0].text
        for r in emulator_anthropic.messages.batches.results(batch.id)
    }
    assert texts["req-7"] == 'echo: quote " brace { ] bracket \\ and "requests": ['


def test_limits(emulator_factory):
    emu = emulator_factory(max_anthropic_requests=3, max_anthropic_body_bytes=4000)
    client = anthropic_client(emu)
    with pytest.raises(anthropic.BadRequestError, match="at most 3 items"):
        client.messages.batches.create(requests=[message_request(i) for i in range(4)])
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.batches.create(requests=[message_request(0, system="x" * 5000)])
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"


def test_cancel_delete_and_canceled_results(emulator, emulator_anthropic):
    emulator.set_timings(processing_rate_rps=50, finalizing_delay_s=0.2)
    batch = emulator_anthropic.messages.batches.create(
        requests=[message_request(i) for i in range(100)]
    )
    with pytest.raises(anthropic.BadRequestError):
        emulator_anthropic.messages.batches.delete(batch.id)
    time.sleep(0.3)
    canceling = emulator_anthropic.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    assert canceling.request_counts.processing == 100
    batch = wait_message_batch(emulator_anthropic, batch.id)
    counts = batch.request_counts
    assert counts.canceled > 0 and counts.succeeded > 0
    assert counts.succeeded + counts.canceled == 100
    results = list(emulator_anthropic.messages.batches.results(batch.id))
    assert sum(r.result.type == "canceled" for r in results) == counts.canceled
    with pytest.raises(anthropic.BadRequestError):
        emulator_anthropic.messages.batches.cancel(batch.id)
    deleted = emulator_anthropic.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        emulator_anthropic.messages.batches.retrieve(batch.id)


def test_expiry_gives_expired_results(emulator_factory):
    emu = emulator_factory(completion_window_s=0.4, processing_rate_rps=50)
    client = anthropic_client(emu)
    batch = client.messages.batches.create(requests=[message_request(i) for i in range(60)])
    batch = wait_message_batch(client, batch.id)
    assert batch.request_counts.expired > 0 and batch.request_counts.succeeded > 0
    types = [r.result.type for r in client.messages.batches.results(batch.id)]
    assert types.count("expired") == batch.request_counts.expired


def test_list_pagination_both_ways(emulator_anthropic):
    ids = [
        emulator_anthropic.messages.batches.create(requests=[message_request(0)]).id
        for _ in range(5)
    ]
    newest_first = list(reversed(ids))
    assert [b.id for b in emulator_anthropic.messages.batches.list(limit=2)] == newest_first
    page = emulator_anthropic.messages.batches.list(limit=2)
    assert (page.first_id, page.last_id, page.has_more) == (ids[4], ids[3], True)
    after = emulator_anthropic.messages.batches.list(limit=2, after_id=ids[3])
    assert [b.id for b in after.data] == [ids[2], ids[1]] and after.has_more
    before = emulator_anthropic.messages.batches.list(limit=2, before_id=ids[1])
    assert [b.id for b in before.data] == [ids[3], ids[2]] and before.has_more
    top = emulator_anthropic.messages.batches.list(limit=2, before_id=ids[3])
    assert [b.id for b in top.data] == [ids[4]] and not top.has_more


def test_both_auth_headers(emulator):
    for headers in (
        {"x-api-key": emulator.api_key},
        {"Authorization": f"Bearer {emulator.api_key}"},
    ):
        response = httpx.get(f"{emulator.base_url}/v1/messages/batches", headers=headers)
        assert response.status_code == 200
    client = anthropic.Anthropic(
        base_url=emulator.base_url, api_key="wrong", _strict_response_validation=True, max_retries=0
    )
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.batches.list()


def test_reseller_path_shares_v1_batches_with_openai(emulator_factory):
    emu = emulator_factory(anthropic_batches_path="/v1/batches")
    client = anthropic_client(emu)
    created = client.post(
        "/v1/batches",
        body={"requests": [message_request(i) for i in range(3)]},
        cast_to=MessageBatch,
    )
    assert created.id.startswith("msgbatch_")
    batch = client.get(f"/v1/batches/{created.id}", cast_to=MessageBatch)
    deadline = time.monotonic() + 10
    while batch.processing_status != "ended" and time.monotonic() < deadline:
        time.sleep(0.01)
        batch = client.get(f"/v1/batches/{created.id}", cast_to=MessageBatch)
    assert batch.results_url == f"{emu.base_url}/v1/batches/{created.id}/results"
    lines = httpx.get(batch.results_url, headers={"x-api-key": emu.api_key}).text.splitlines()
    assert sorted(orjson.loads(ln)["custom_id"] for ln in lines) == ["req-0", "req-1", "req-2"]
    listed = httpx.get(
        f"{emu.base_url}/v1/batches",
        headers={"x-api-key": emu.api_key, "anthropic-version": "2023-06-01"},
    ).json()
    assert [b["id"] for b in listed["data"]] == [created.id]
    oa = openai_client(emu)
    openai_batch = oa.batches.create(
        input_file_id=upload(oa, [request_line(0)]).id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    assert wait_batch(oa, openai_batch.id).status == "completed"
    assert [b.id for b in oa.batches.list()] == [openai_batch.id]
    stats = emu.stats()["batches_created"]
    assert (stats["anthropic"], stats["openai"]) == (1, 1)
    assert client.messages.batches.retrieve(created.id).id == created.id


def test_reseller_path_without_collision(emulator_factory):
    emu = emulator_factory(anthropic_batches_path="/reseller/v1/batches/")
    client = anthropic_client(emu)
    created = client.post(
        "/reseller/v1/batches", body={"requests": [message_request(0)]}, cast_to=MessageBatch
    )
    listed = httpx.get(f"{emu.base_url}/reseller/v1/batches", headers={"x-api-key": emu.api_key})
    assert [b["id"] for b in listed.json()["data"]] == [created.id]
