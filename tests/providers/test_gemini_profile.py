"""Gemini pieces without a server: the profile's defaults and refusals, intake of the
`/v1beta/models/{model}:method` paths (checked at the door, nothing stored), `usageMetadata` as
a payload's `usage`, and the inline create body the adapter streams."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from batchrelay.config import ConfigurationError, load_settings
from batchrelay.producer import errors
from batchrelay.producer.intake import Intake
from batchrelay.producer.records import response_usage
from batchrelay.worker.providers.gemini import (
    GeminiAdapter,
    inline_chunks,
    parse_operation,
    parse_result,
)
from batchrelay.worker.providers.http import auth_headers

KEY = "gm-secret-key"
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"


def settings(**extra):
    profile = {
        "name": "gemini",
        "kind": "gemini",
        "base_url": "https://generativelanguage.googleapis.com",
        "api_key": KEY,
        "models": ["gemini-*"],
        **extra,
    }
    return load_settings(providers=[profile])


def contents(text: str = "hi") -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}]}


def test_profile_defaults_and_refusals():
    profile = settings().providers[0]
    assert profile.endpoints == ["generateContent", "embedContent"]
    assert (profile.api_version, profile.completion_window_s) == ("v1beta", 48 * 3600)
    assert auth_headers(profile) == {"x-goog-api-key": KEY}
    assert settings(api_version="v1").providers[0].api_version == "v1"
    for setting, value in (("file_expires_after_s", 200_000), ("batches_path", "/x")):
        with pytest.raises(ConfigurationError, match=setting) as info:
            settings(**{setting: value})
        assert KEY not in str(info.value)


def test_intake_takes_the_model_from_the_path():
    intake = Intake(settings())
    p = intake.prepare(GENERATE, contents())
    assert (p.endpoint, p.model, p.profile) == ("generateContent", "gemini-2.5-flash", "gemini")
    v1 = intake.prepare(GENERATE.replace("v1beta", "v1"), contents())
    assert (v1.tag, v1.body_json) == (p.tag, p.body_json)  # one group: profile, method, model
    other = intake.prepare("/v1/models/gemini-2.5-pro:generateContent", contents())
    assert other.tag != p.tag and other.fingerprint != p.fingerprint
    embed = intake.prepare(
        "/v1beta/models/gemini-embedding-001:embedContent", {"content": {"parts": [{"text": "a"}]}}
    )
    assert (embed.endpoint, embed.model) == ("embedContent", "gemini-embedding-001")
    named = intake.prepare(GENERATE, {**contents(), "model": "models/gemini-2.5-flash"})
    assert named.model == "gemini-2.5-flash"


@pytest.mark.parametrize(
    ("endpoint", "body", "error", "words"),
    [
        ("generateContent", contents(), errors.UnknownEndpointError, "its model's path"),
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            contents(),
            errors.UnknownEndpointError,
            ":generateContent",
        ),
        (GENERATE, {"contents": []}, errors.InvalidRequestError, "'contents' must be a non-empty"),
        (
            GENERATE,
            {**contents(), "model": "gemini-2.5-pro"},
            errors.InvalidRequestError,
            "differs from the model in the path",
        ),
        (
            "/v1beta/models/gemini-embedding-001:embedContent",
            contents(),
            errors.InvalidRequestError,
            "'content' must be an object",
        ),
        ("/v1beta/models/gpt-4o:generateContent", contents(), errors.UnknownModelError, "gpt-4o"),
    ],
)
def test_intake_refuses_at_the_door(endpoint, body, error, words):
    with pytest.raises(error, match=words):
        Intake(settings()).prepare(endpoint, body)


def test_usage_metadata_becomes_usage():
    body = {
        "candidates": [],
        "usageMetadata": {
            "promptTokenCount": 7,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 2,
            "totalTokenCount": 12,
        },
    }
    assert response_usage(body) == {"input_tokens": 7, "output_tokens": 5, "total_tokens": 12}
    assert response_usage({"usage": {"prompt_tokens": 1}}) == {"prompt_tokens": 1}
    assert response_usage({"embedding": {"values": []}}) is None


def test_inline_body_is_cut_from_the_spool_exactly(tmp_path: Path):
    adapter = GeminiAdapter(settings().providers[0], settings())
    spool = tmp_path / "in.jsonl"
    bodies = [orjson.dumps(contents(f'quote " and \\u00e9 {i}')) for i in range(3)]
    with spool.open("wb") as out:
        adapter.write_input(out, "generateContent", [(f"r_{i}", b) for i, b in enumerate(bodies)])
    entries = orjson.loads(b"[" + b"".join(inline_chunks(spool)) + b"]")
    assert entries == [
        {"request": orjson.loads(b), "metadata": {"key": f"r_{i}"}} for i, b in enumerate(bodies)
    ]
    envelope = 40
    size = adapter._inline_size(spool, envelope)
    assert size == envelope + sum(len(c) for c in inline_chunks(spool))
    adapter.inline_limit = size
    assert adapter._inline_size(spool, envelope) is None  # at the limit: a file batch
    adapter.close()


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        (429, "RESOURCE_EXHAUSTED", "retry"),
        (500, "INTERNAL", "retry"),
        (503, "UNAVAILABLE", "retry"),
        (504, "DEADLINE_EXCEEDED", "retry"),
        (400, "INVALID_ARGUMENT", "fail"),
        (404, "NOT_FOUND", "fail"),
        (403, "PERMISSION_DENIED", "fail"),
    ],
)
def test_error_results_are_retried_or_final_by_status(code, status, kind):
    error = {"code": code, "message": "m", "status": status}
    outcome = parse_result({"key": "r_1", "error": error})
    assert (outcome.custom_id, outcome.kind, outcome.status_code) == ("r_1", kind, code)
    payload = orjson.loads(outcome.payload)
    assert (payload["code"], payload["status_code"], payload["body"]) == (status, code, error)
    inline = parse_result({"metadata": {"key": "r_2"}, "response": {"candidates": []}})
    assert (inline.custom_id, inline.kind) == ("r_2", "ok")
    assert parse_result({"response": {}}) is None  # no key: skipped, logged


def test_operation_states_map_onto_the_relays():
    def op(state: str, **extra) -> dict:
        meta = {"name": "batches/b", "state": state, "displayName": "bid", **extra}
        return {"name": "batches/b", "metadata": meta}

    mapped = {
        s: parse_operation(op(f"BATCH_STATE_{s}")).status
        for s in ("PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED")
    }
    assert mapped == {
        "PENDING": "validating",
        "RUNNING": "in_progress",
        "SUCCEEDED": "completed",
        "FAILED": "failed",
        "CANCELLED": "cancelled",
        "EXPIRED": "expired",
    }
    failed = parse_operation({**op("BATCH_STATE_FAILED"), "error": {"code": 3, "message": "x"}})
    assert failed.terminal and failed.errors == [{"code": 3, "message": "x"}]
    done = parse_operation(
        op(
            "BATCH_STATE_SUCCEEDED",
            batchStats={"requestCount": "3", "successfulRequestCount": "2"},
            output={"responsesFile": "files/batch-b"},
            inputConfig={"fileName": "files/in"},
        )
    )
    assert done.counts == {"total": 3, "completed": 2, "failed": 0, "pending": 0}
    assert (done.output_file_id, done.input_ref) == ("files/batch-b", "files/in")
