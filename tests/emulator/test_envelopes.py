"""Raw HTTP: status codes, headers and error envelopes, byte for byte where they matter."""

from __future__ import annotations

import httpx
import pytest

from tests.emulator.helpers import jsonl, request_line


@pytest.fixture
def http(emulator):
    with httpx.Client(base_url=emulator.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def auth(emulator):
    return {"Authorization": f"Bearer {emulator.api_key}"}


def _completed_batch(http, auth) -> str:
    files = {"file": ("in.jsonl", jsonl([request_line(0)]), "application/jsonl")}
    source = http.post("/v1/files", data={"purpose": "batch"}, files=files, headers=auth).json()
    batch = http.post(
        "/v1/batches",
        json={
            "input_file_id": source["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
        headers=auth,
    ).json()
    for _ in range(500):
        if http.get(f"/v1/batches/{batch['id']}", headers=auth).json()["status"] == "completed":
            return batch["id"]
    raise AssertionError("batch did not complete")


def test_openai_401_missing_and_wrong_key(http):
    missing = http.get("/v1/batches")
    assert missing.status_code == 401
    error = missing.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] is None
    assert error["message"].startswith("You didn't provide an API key.")
    wrong = http.get("/v1/files", headers={"Authorization": "Bearer sk-wrong-key-123"})
    assert wrong.status_code == 401
    assert wrong.json() == {
        "error": {
            "message": "Incorrect API key provided: sk-******-123. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }


def test_anthropic_401(http):
    for headers, message in (
        ({}, "x-api-key header is required"),
        ({"x-api-key": "nope"}, "invalid x-api-key"),
    ):
        response = http.get("/v1/messages/batches", headers=headers)
        assert response.status_code == 401
        body = response.json()
        assert body["type"] == "error" and body["request_id"].startswith("req_")
        assert body["error"] == {"type": "authentication_error", "message": message}
        assert response.headers["request-id"]


def test_azure_401(http):
    response = http.get("/openai/v1/batches", headers={"api-key": "nope"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "401"
    assert response.json()["error"]["message"].startswith("Access denied")


def test_admin_needs_the_key_and_health_does_not(http, auth):
    assert http.get("/_emulator/stats").status_code == 401
    assert http.get("/_emulator/stats", headers=auth).status_code == 200
    assert http.get("/_emulator/health").json() == {"status": "ok"}


def test_404_envelopes(http, auth):
    response = http.get("/v1/files/file-abc123", headers=auth)
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "No such File object: file-abc123",
            "type": "invalid_request_error",
            "param": "id",
            "code": None,
        }
    }
    batch = http.get("/v1/batches/batch_abc", headers=auth)
    assert batch.status_code == 404 and batch.json()["error"]["param"] == "id"
    route = http.get("/v1/nothing-here", headers=auth)
    assert route.status_code == 404
    assert route.json()["error"]["message"] == "Invalid URL (GET /v1/nothing-here)"
    anthropic = http.get(
        "/v1/messages/batches/msgbatch_x", headers={"x-api-key": auth["Authorization"][7:]}
    )
    assert anthropic.status_code == 404
    assert anthropic.json()["error"]["type"] == "not_found_error"
    assert anthropic.json()["type"] == "error"


def test_409_on_cancel_of_completed_batch(http, auth):
    batch_id = _completed_batch(http, auth)
    response = http.post(
        f"/v1/batches/{batch_id}/cancel", headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "false"
    assert response.json() == {
        "error": {
            "message": "Cannot cancel a batch with status 'completed'.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


def test_400_bad_endpoint(http, auth):
    response = http.post(
        "/v1/batches",
        json={
            "input_file_id": "file-x",
            "endpoint": "/v1/invalid/endpoint",
            "completion_window": "24h",
        },
        headers=auth,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith(
        "Invalid value: '/v1/invalid/endpoint'. Supported values are: '/v1/chat/completions',"
    )
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "endpoint",
        "invalid_value",
    )


def test_400_metadata_type(http, auth):
    response = http.post(
        "/v1/batches",
        json={
            "input_file_id": "file-x",
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"tags": ["a"]},
        },
        headers=auth,
    )
    assert response.json() == {
        "error": {
            "message": "Invalid type for 'metadata.tags': expected a string, "
            "but got an array instead.",
            "type": "invalid_request_error",
            "param": "metadata.tags",
            "code": "invalid_type",
        }
    }


def test_400_missing_input_file_id_and_bad_json(http, auth):
    missing = http.post(
        "/v1/batches",
        json={"endpoint": "/v1/chat/completions", "completion_window": "24h"},
        headers=auth,
    )
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "missing_required_parameter"
    broken = http.post(
        "/v1/batches", content=b"{nope", headers={**auth, "content-type": "application/json"}
    )
    assert broken.status_code == 400 and "JSON" in broken.json()["error"]["message"]
    bad_limit = http.get("/v1/batches", params={"limit": 101}, headers=auth)
    assert bad_limit.status_code == 400 and bad_limit.json()["error"]["param"] == "limit"


def test_anthropic_400_custom_id(http, auth):
    response = http.post(
        "/v1/messages/batches",
        json={"requests": [{"custom_id": "x" * 65, "params": {}}]},
        headers={"x-api-key": auth["Authorization"][7:]},
    )
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == {
        "type": "invalid_request_error",
        "message": "requests.0.custom_id: String should have at most 64 characters",
    }


def test_injected_http_error_headers(emulator, http, auth):
    emulator.set_faults(http_error_next=1, http_error_statuses=[503], retry_after_s=2.5)
    response = http.get("/v1/batches", headers=auth)
    assert response.status_code == 503
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("3", "2500")
    assert response.json()["error"]["type"] == "server_error"
    emulator.set_faults(http_error_next=1, retry_after_s=None)
    assert "retry-after" not in http.get("/v1/batches", headers=auth).headers


def test_content_download_headers(http, auth):
    files = {"file": ("in.jsonl", b'{"a": 1}\n', "application/jsonl")}
    source = http.post("/v1/files", data={"purpose": "batch"}, files=files, headers=auth).json()
    response = http.get(
        f"/v1/files/{source['id']}/content", headers={**auth, "Accept": "application/binary"}
    )
    assert response.status_code == 200
    assert response.headers["content-length"] == "9"
    assert response.content == b'{"a": 1}\n'
