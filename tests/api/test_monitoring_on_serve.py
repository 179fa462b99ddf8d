"""`batchrelay serve` also serves the monitoring routes of `batchrelay metrics` (one process can
do both): a Prometheus scrape and providers' batch webhooks, outside the tenant API."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api


def test_serve_is_scraped_without_a_tenant_key(api: Api) -> None:
    reply = httpx.get(f"{api.url}/metrics", timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    assert "batchrelay_up 1.0" in reply.text
    assert "# TYPE batchrelay_requests_pending gauge" in reply.text


def test_serve_takes_provider_webhooks_by_profile(api: Api) -> None:
    profile = api.settings.providers[0].name  # configured without a webhook_secret
    event = {"type": "batch.completed", "data": {"id": "batch_x"}}
    unknown = httpx.post(f"{api.url}/v1/provider-webhooks/nope", json=event, timeout=30)
    assert unknown.status_code == 404 and "no provider profile named 'nope'" in unknown.text
    unsigned = httpx.post(f"{api.url}/v1/provider-webhooks/{profile}", json=event, timeout=30)
    assert unsigned.status_code == 404 and "has no webhook_secret" in unsigned.text


def test_monitoring_routes_stay_out_of_the_api_schema(api: Api) -> None:
    paths = httpx.get(f"{api.url}/openapi.json", timeout=30).json()["paths"]
    assert "/metrics" not in paths
    assert not any(p.startswith("/v1/provider-webhooks") for p in paths)
