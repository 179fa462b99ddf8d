"""Monitoring in docker-compose.yml: the exporter service, Prometheus' scrape config, and the
Grafana dashboard, whose every query names a metric the exporter exposes."""

from __future__ import annotations

import json
import re

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from batchrelay import BatchRelay
from batchrelay.metrics import metric_names
from tests.deploy._compose import (
    ROOT,
    ComposeRun,
    compose_variables,
    interpolate,
    load_compose,
    resolved_compose,
)

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "batchrelay.json"
METRIC = re.compile(r"\bbatchrelay_[a-z_]+\b")


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert panels
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    assert len(exprs) >= len(panels)
    return exprs


def test_every_dashboard_query_names_an_exported_metric():
    exposed = metric_names()
    used = {name for expr in dashboard_exprs() for name in METRIC.findall(expr)}
    assert used, "the dashboard queries no batchrelay metric"
    assert used <= exposed, sorted(used - exposed)
    # Every series the issue asks for is on the dashboard.
    for family in (
        "batchrelay_requests_pending",
        "batchrelay_oldest_pending_age_seconds",
        "batchrelay_batches",
        "batchrelay_deliveries_due",
        "batchrelay_dead_letters",
        "batchrelay_tokens_reserved",
        "batchrelay_token_budget",
        "batchrelay_requests_total",
        "batchrelay_webhook_attempts_total",
        "batchrelay_provider_calls_total",
        "batchrelay_submit_to_final_seconds_bucket",
        "batchrelay_final_to_delivered_seconds_bucket",
    ):
        assert family in used, family


def test_panels_use_the_provisioned_prometheus():
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    (prometheus,) = source["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["datasource"]["uid"] == prometheus["uid"], panel["title"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/batchrelay.yml").read_text()
    )
    mounts = resolved_compose()["services"]["grafana"]["volumes"]
    dashboards_dir = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{dashboards_dir}:ro" in mounts


def test_prometheus_scrapes_the_metrics_service():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["metrics:9108"]
    services = resolved_compose()["services"]
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in services["prometheus"]["volumes"]
    )


def test_grafana_is_always_behind_a_password():
    raw = load_compose()["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert raw.startswith("${GRAFANA_ADMIN_PASSWORD:?"), raw
    variables = {k: v for k, v in compose_variables().items() if k != "GRAFANA_ADMIN_PASSWORD"}
    with pytest.raises(ValueError, match="GRAFANA_ADMIN_PASSWORD"):
        interpolate(raw, variables)


def test_the_metrics_service_exports_a_relayed_request(
    compose_run: ComposeRun, compose_producer: BatchRelay
):
    """The compose services as configured by .env.example: the emulator's batch webhook is
    verified by the metrics service with the profile's secret, and a scrape shows the run."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "metrics"}]}
    rid = compose_producer.submit("/v1/chat/completions", body)
    assert compose_producer.result(rid, timeout=90)["status"] == "succeeded"

    def scrape() -> dict[tuple[str, tuple], float]:
        text = httpx.get(compose_run.url("metrics", "/metrics"), timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }

    def webhooks_taken() -> dict | None:
        got = scrape()
        taken = [
            v
            for (name, labels), v in got.items()
            if name == "batchrelay_provider_webhooks_total" and ("outcome", "refused") not in labels
        ]
        return got if sum(taken) >= 1 else None

    got = compose_run.wait_until(webhooks_taken, 30, "the emulator's batch webhook")
    assert got[("batchrelay_up", ())] == 1
    succeeded = [v for (n, ls), v in got.items() if n == "batchrelay_requests_total"]
    assert sum(succeeded) >= 1
