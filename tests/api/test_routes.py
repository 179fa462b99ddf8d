"""Every route and every error status of `batchrelay serve`, against the live stack."""

from __future__ import annotations

import time

import httpx
import orjson

from tests.api.conftest import Api, chat_request, start_serve
from tests.relay.harness import SECRET

PROBLEM = "application/problem+json"


def problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM
    body = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_submit_long_poll_result_and_webhook_with_tenant(api: Api, alpha):
    hook = {"url": api.receiver.url + "/hook"}
    resp = alpha.post("/v1/requests", json=chat_request("hi", callback=hook, metadata={"u": 1}))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["id"]
    assert resp.json() == {"id": rid, "status": "pending"}

    status = alpha.get(f"/v1/requests/{rid}").json()
    assert status["id"] == rid and status["tenant"] == "alpha"
    assert status["state"] in ("pending", "in_batch")

    started = time.monotonic()
    got = alpha.get(f"/v1/requests/{rid}/result", params={"wait": 30})
    assert got.status_code == 200, got.text
    assert time.monotonic() - started < 15
    result = got.json()
    assert result["status"] == "succeeded" and result["tenant"] == "alpha"
    assert result["response"]["body"]["choices"][0]["message"]["content"] == "echo: hi"

    deadline = time.monotonic() + 15
    while rid not in api.receiver.by_id():
        assert time.monotonic() < deadline, "the webhook never arrived"
        time.sleep(0.05)
    assert api.receiver.verify_all(SECRET) >= 1
    webhook = orjson.loads(api.receiver.by_id()[rid][-1].body)
    assert webhook == result  # the same JSON a webhook receives


def test_result_without_wait_is_202_with_status_while_pending(alpha):
    rid = alpha.post("/v1/requests", json=chat_request("later")).json()["id"]
    resp = alpha.get(f"/v1/requests/{rid}/result")
    assert resp.status_code == 202
    assert resp.json()["id"] == rid and resp.json()["state"] in ("pending", "in_batch")
    waited = alpha.get(f"/v1/requests/{rid}/result", params={"wait": 0.3})
    assert waited.status_code == 202


def test_bulk_all_or_nothing(alpha):
    items = [chat_request(f"bulk {i}") for i in range(5)]
    resp = alpha.post("/v1/requests/bulk", json=items)
    assert resp.status_code == 202, resp.text
    ids = resp.json()["ids"]
    assert len(ids) == 5 and len(set(ids)) == 5

    bad = [*items[:2], {"endpoint": "/v1/chat/completions", "body": {"model": "nope-1"}}]
    body = problem(alpha.post("/v1/requests/bulk", json=bad), 400)
    assert body["field"] == "[2].body.model" and body["detail"].startswith("item 2: model 'nope-1'")


def test_bulk_maximum_is_413(alpha):
    items = [chat_request("x")] * 1001
    assert "1000" in problem(alpha.post("/v1/requests/bulk", json=items), 413)["detail"]


def test_idempotency_over_http_header_and_body(api: Api):
    with api.client("alpha") as a, api.client("beta") as b:
        first = a.post("/v1/requests", json=chat_request("same"), headers={"Idempotency-Key": "k1"})
        again = a.post("/v1/requests", json=chat_request("same", idempotency_key="k1"))
        assert first.json()["id"] == again.json()["id"]
        # another tenant's key of the same name is its own
        other = b.post("/v1/requests", json=chat_request("same"), headers={"Idempotency-Key": "k1"})
        assert other.status_code == 202 and other.json()["id"] != first.json()["id"]

        conflict = a.post(
            "/v1/requests", json=chat_request("other"), headers={"Idempotency-Key": "k1"}
        )
        assert first.json()["id"] in problem(conflict, 409)["detail"]
        differ = a.post(
            "/v1/requests",
            json=chat_request("same", idempotency_key="k2"),
            headers={"Idempotency-Key": "k1"},
        )
        assert problem(differ, 400)["field"] == "idempotency_key"


def test_cross_tenant_ids_are_404(api: Api):
    with api.client("alpha") as a, api.client("beta") as b:
        rid = a.post("/v1/requests", json=chat_request("mine")).json()["id"]
        for resp in (
            b.get(f"/v1/requests/{rid}"),
            b.get(f"/v1/requests/{rid}/result"),
            b.delete(f"/v1/requests/{rid}"),
        ):
            assert problem(resp, 404)["detail"] == f"request {rid} does not exist"
        assert a.get(f"/v1/requests/{rid}").status_code == 200


def test_cancel_then_409_once_submitted(api: Api, alpha):
    # a model of its own: no other test's request makes its group flush early
    own = chat_request("cancel me")
    own["body"]["model"] = "gpt-4.1-nano"
    rid = alpha.post("/v1/requests", json=own).json()["id"]
    resp = alpha.delete(f"/v1/requests/{rid}")
    assert resp.status_code == 200 and resp.json() == {"id": rid, "status": "cancelled"}
    assert alpha.get(f"/v1/requests/{rid}/result").json()["status"] == "cancelled"

    api.emulator.set_timings(validating_delay_s=5)  # the batch stays at the provider a while
    try:
        rid = alpha.post("/v1/requests", json=own).json()["id"]
        deadline = time.monotonic() + 20
        while not at_provider(api, alpha.get(f"/v1/requests/{rid}").json()["batch_id"]):
            assert time.monotonic() < deadline, "the request's batch was never submitted"
            time.sleep(0.05)
        body = problem(alpha.delete(f"/v1/requests/{rid}"), 409)
        assert "a request can be cancelled only until its batch is submitted" in body["detail"]
    finally:
        api.emulator.set_timings(validating_delay_s=0.5)


def at_provider(api: Api, batch_id: str | None) -> bool:
    """Whether the emulator holds the provider batch created for our batch `batch_id`."""
    if batch_id is None:
        return False
    listed = httpx.get(
        api.emulator.openai_base_url + "/batches",
        headers={"Authorization": f"Bearer {api.emulator.api_key}"},
        params={"limit": 100},
    ).json()
    ours = [b for b in listed["data"] if (b.get("metadata") or {}).get("batchrelay_batch")]
    return any(b["metadata"]["batchrelay_batch"] == batch_id for b in ours)


def test_auth_401(api: Api):
    with api.client(None) as anon, api.client("alpha") as a:
        for resp in (
            anon.post("/v1/requests", json=chat_request("x")),
            anon.get("/v1/usage"),
            a.get("/v1/usage", headers={"Authorization": "Bearer wrong"}),
        ):
            assert problem(resp, 401)
            assert resp.headers["www-authenticate"] == "Bearer"
        assert anon.get("/healthz").json() == {"status": "ok"}


def test_bad_input_statuses(alpha):
    unknown = problem(alpha.post("/v1/requests", json=chat_request("x") | {"endpoint": "/v9"}), 400)
    assert (
        unknown["field"] == "endpoint"
        and "not served by any configured provider" in unknown["detail"]
    )
    model = chat_request("x")
    model["body"]["model"] = "nope-1"
    assert problem(alpha.post("/v1/requests", json=model), 400)["field"] == "body.model"
    hook = chat_request("x", callback={"url": "http://169.254.169.254/x"})
    assert problem(alpha.post("/v1/requests", json=hook), 400)["field"] == "callback"
    big = chat_request("x" * 1_000_000)
    assert "bytes as a batch line" in problem(alpha.post("/v1/requests", json=big), 413)["detail"]
    not_json = alpha.post(
        "/v1/requests", content=b"{", headers={"Content-Type": "application/json"}
    )
    assert "not valid JSON" in problem(not_json, 400)["detail"]
    missing = problem(alpha.post("/v1/requests", json={"body": {}}), 422)
    assert missing["field"] == "endpoint"
    unknown_field = problem(alpha.post("/v1/requests", json=chat_request("x", extra=1)), 422)
    assert unknown_field["field"] == "extra"
    too_long = alpha.get("/v1/requests/r_x/result", params={"wait": 61})
    assert problem(too_long, 422)["field"] == "query.wait"
    text = alpha.post("/v1/requests", content=b"x", headers={"Content-Type": "text/plain"})
    assert "application/json" in problem(text, 415)["detail"]
    assert problem(alpha.get("/v1/requests/r_nothing"), 404)


def test_body_larger_than_the_limit_is_413(alpha):
    from batchrelay.api.limits import MAX_BODY_BYTES

    huge = b'{"endpoint": "' + b"x" * MAX_BODY_BYTES + b'"}'
    resp = alpha.post("/v1/requests", content=huge, headers={"Content-Type": "application/json"})
    assert "larger than" in problem(resp, 413)["detail"]


def test_quota_max_pending_is_429_and_stores_nothing(api: Api):
    with api.client("tight") as t:
        ids = t.post("/v1/requests/bulk", json=[chat_request("a"), chat_request("b")]).json()
        assert len(ids["ids"]) == 2
        resp = t.post("/v1/requests", json=chat_request("c", idempotency_key="held"))
        body = problem(resp, 429)
        assert body["quota"] == "max_pending" and "nothing was stored" in body["detail"]
        assert int(resp.headers["retry-after"]) > 0
        # the idempotency key was given back: once results are final, the same key works
        for rid in ids["ids"]:
            assert t.get(f"/v1/requests/{rid}/result", params={"wait": 30}).status_code == 200
        deadline = time.monotonic() + 10
        while (resp := t.post("/v1/requests", json=chat_request("c", idempotency_key="held"))
               ).status_code == 429:  # fmt: skip
            assert time.monotonic() < deadline, "the final requests still count as pending"
            time.sleep(0.1)
        assert resp.status_code == 202


def test_quota_requests_per_day_and_usd_per_day(api: Api):
    with api.client("daily") as d:
        assert (
            d.post("/v1/requests/bulk", json=[chat_request("1"), chat_request("2")]).status_code
            == 202
        )
        over = d.post("/v1/requests/bulk", json=[chat_request("3"), chat_request("4")])
        assert problem(over, 429)["quota"] == "requests_per_day"
        assert d.post("/v1/requests", json=chat_request("3")).status_code == 202
    with api.client("cheap") as c:
        small = chat_request("cheap")
        small["body"]["max_tokens"] = 10
        assert c.post("/v1/requests", json=small).status_code == 202
        big = chat_request("dear")
        big["body"]["max_tokens"] = 100_000
        resp = c.post("/v1/requests", json=big)
        assert problem(resp, 429)["quota"] == "usd_per_day"
        assert 0 < int(resp.headers["retry-after"]) <= 86400


def test_usage_counts_each_tenants_costs(api: Api):
    with api.client("costs") as b:
        ids = b.post("/v1/requests/bulk", json=[chat_request(f"u{i}") for i in range(3)]).json()
        results = [
            b.get(f"/v1/requests/{r}/result", params={"wait": 30}).json() for r in ids["ids"]
        ]
        tokens = sum(r["usage"]["prompt_tokens"] for r in results)
        deadline = time.monotonic() + 10
        while True:
            usage = b.get("/v1/usage").json()
            rows = [r for r in usage["rows"] if r["model"] == "gpt-4o-mini"]
            if rows and rows[0]["requests"] == 3:
                break
            assert time.monotonic() < deadline, usage
            time.sleep(0.1)
        assert usage["tenant"] == "costs" and rows[0]["input_tokens"] == tokens
        assert rows[0]["batch_usd"] > 0 and rows[0]["sync_usd"] == 2 * rows[0]["batch_usd"]
        assert b.get("/v1/usage", params={"since": "2999-01-01"}).json()["rows"] == []
        assert problem(b.get("/v1/usage", params={"since": "yesterday"}), 422)


def test_unavailable_redis_is_503(api: Api, tmp_path):
    env = {**api.env, "BATCHRELAY_REDIS_URL": "redis://:hunter2@127.0.0.1:1/0"}
    proc, url = start_serve(env, tmp_path)
    try:
        with httpx.Client(base_url=url, headers={"Authorization": "Bearer key-alpha"}) as c:
            for resp in (c.get("/healthz"), c.post("/v1/requests", json=chat_request("x"))):
                body = problem(resp, 503)
                assert body["detail"].startswith("cannot use Redis at redis://:***@127.0.0.1:1/0")
                assert "hunter2" not in resp.text
    finally:
        proc.terminate()
        proc.wait(15)
