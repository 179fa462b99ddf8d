"""`batchrelay metrics`: a Prometheus exporter over the relay's Redis state and counters.

Each scrape reads the relay's own state (pending, in flight, due, dead, reserved tokens) with
a few pipelined reads per group and at most `INFLIGHT_LIMIT` batch records per group, so a
scrape costs the same whatever the backlog; counters and histograms come from the hashes the
workers add to (`metrics_store`). The same small server takes providers' batch webhooks
(`POST /v1/provider-webhooks/{profile}`, see `provider_webhooks`) and, when one makes a batch
due, sends the poll dispatcher at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from starlette.concurrency import run_in_threadpool

from batchrelay import metrics_store
from batchrelay.config import Settings
from batchrelay.producer.connection import connect
from batchrelay.producer.keys import Keys
from batchrelay.producer.records import now_ms
from batchrelay.provider_webhooks import MAX_BODY, Refused, receive
from batchrelay.worker.context import Relay
from batchrelay.worker.state import broker_url

INFLIGHT_LIMIT = 1000
POLL_TASK = "batchrelay.poll"
GROUP_LABELS = ["profile", "endpoint", "model"]
# Gauge name -> help; every name the exporter can expose is listed here or in metrics_store.
GAUGES = {
    "batchrelay_requests_pending": "Requests waiting to be packed, per group.",
    "batchrelay_oldest_pending_age_seconds": "Age of the oldest pending request, per group.",
    "batchrelay_batches": "Live batches by profile and provider status (ours before submit).",
    "batchrelay_deliveries_due": "Deliveries due now (first attempts and retries), per group.",
    "batchrelay_dead_letters": "Deliveries given up, waiting for a replay, per group.",
    "batchrelay_tokens_reserved": "Estimated enqueued tokens held at a profile, per model.",
    "batchrelay_token_budget": "The profile's enqueued-token budget for a model.",
    "batchrelay_up": "1 when the exporter could read Redis on this scrape.",
}


def metric_names() -> set[str]:
    """Every series name a scrape can expose (what a dashboard may query)."""
    names = set(GAUGES)
    names |= set(metrics_store.COUNTERS)
    for h in metrics_store.HISTOGRAMS:
        names |= {h, f"{h}_bucket", f"{h}_sum", f"{h}_count"}
    return names


class RelayCollector(Collector):
    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings, self.client, self.keys = settings, client, Keys(settings.key_prefix)
        self.relay = Relay(settings, client)  # for its reading of the groups list

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("batchrelay_up", GAUGES["batchrelay_up"])
        try:
            families = list(self._state()) + list(self._counters())
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _state(self) -> Iterator[Metric]:
        k, now = self.keys, now_ms()
        groups = [(g.tag, [g.profile, g.endpoint, g.model]) for g in self.relay.groups()]
        pipe = self.client.pipeline(transaction=False)
        for tag, _ in groups:
            pipe.zcard(k.pending(tag))
            pipe.zrange(k.pending(tag), 0, 0, withscores=True)
            pipe.zcount(k.deliver(tag), "-inf", now)
            pipe.zcard(k.dead(tag))
            pipe.zrange(k.inflight(tag), 0, INFLIGHT_LIMIT - 1)
        replies = pipe.execute()
        gauges = {
            name: GaugeMetricFamily(name, GAUGES[name], labels=GROUP_LABELS)
            for name in (
                "batchrelay_requests_pending",
                "batchrelay_oldest_pending_age_seconds",
                "batchrelay_deliveries_due",
                "batchrelay_dead_letters",
            )
        }
        live: list[bytes] = []
        for i, (_, labels) in enumerate(groups):
            pending, oldest, due, dead, inflight = replies[5 * i : 5 * i + 5]
            age = (now - oldest[0][1]) / 1000 if oldest else 0.0
            gauges["batchrelay_requests_pending"].add_metric(labels, pending)
            gauges["batchrelay_oldest_pending_age_seconds"].add_metric(labels, max(0.0, age))
            gauges["batchrelay_deliveries_due"].add_metric(labels, due)
            gauges["batchrelay_dead_letters"].add_metric(labels, dead)
            live += inflight
        yield from gauges.values()
        yield self._batches(live)
        yield from self._tokens(groups)

    def _batches(self, live: list[bytes]) -> Metric:
        pipe = self.client.pipeline(transaction=False)
        for bid in live:
            pipe.hmget(self.keys.batch(bid.decode()), "profile", "state", "pstatus")
        by: Counter[tuple[str, str]] = Counter()
        for profile, state, pstatus in pipe.execute() if live else []:
            if state is None:
                continue
            shown = pstatus if state in (b"submitted", b"collecting") and pstatus else state
            by[((profile or b"").decode(), shown.decode())] += 1
        family = GaugeMetricFamily(
            "batchrelay_batches", GAUGES["batchrelay_batches"], labels=["profile", "status"]
        )
        for labels, n in sorted(by.items()):
            family.add_metric(list(labels), n)
        return family

    def _tokens(self, groups: list[tuple[str, list[str]]]) -> Iterator[Metric]:
        pairs = sorted(
            {(p.name, m) for p in self.settings.providers for m in p.enqueued_token_budget}
            | {(labels[0], labels[2]) for _, labels in groups}
        )
        pipe = self.client.pipeline(transaction=False)
        for profile, model in pairs:
            pipe.hget(self.keys.tokens(profile, model), "total")
        reserved = GaugeMetricFamily(
            "batchrelay_tokens_reserved",
            GAUGES["batchrelay_tokens_reserved"],
            labels=["profile", "model"],
        )
        budget = GaugeMetricFamily(
            "batchrelay_token_budget",
            GAUGES["batchrelay_token_budget"],
            labels=["profile", "model"],
        )
        profiles = {p.name: p for p in self.settings.providers}
        for (profile, model), total in zip(pairs, pipe.execute() if pairs else [], strict=True):
            reserved.add_metric([profile, model], int(total or 0))
            cap = profiles[profile].token_budget(model) if profile in profiles else None
            if cap is not None:
                budget.add_metric([profile, model], cap)
        yield reserved
        yield budget

    def _counters(self) -> Iterator[Metric]:
        counters, histograms = metrics_store.read(self.client, self.keys)
        for name, (labels, text) in metrics_store.COUNTERS.items():
            family = CounterMetricFamily(name, text, labels=list(labels))
            for key, value in sorted(counters.items()):
                if key[0] == name and len(key) == len(labels) + 1:
                    family.add_metric(list(key[1:]), value)
            yield family
        for name, text in metrics_store.HISTOGRAMS.items():
            buckets, running = [], 0.0
            for bound in (*metrics_store.BUCKETS, "+Inf"):
                running += histograms.get((name, bound), 0.0)
                buckets.append((str(float(bound)) if bound != "+Inf" else bound, running))
            family = HistogramMetricFamily(name, text)
            family.add_metric([], buckets, sum_value=histograms.get((name, "sum"), 0.0))
            yield family


async def _bounded_body(request: Request) -> bytes:
    """The body, read no further than `MAX_BODY` bytes (a batch event is a few hundred)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise Refused(413, f"body over {MAX_BODY} bytes; a batch event is far smaller")
    return bytes(body)


def monitoring_router(settings: Settings, client: redis.Redis) -> APIRouter:
    """`GET /metrics` and `POST /v1/provider-webhooks/{profile}`: served by `batchrelay metrics`
    and by `batchrelay serve` alike (neither needs a tenant key: a scrape reads only
    aggregates, and a provider webhook is verified by its signature)."""
    keys = Keys(settings.key_prefix)
    broker = Celery("batchrelay-metrics", broker=broker_url(settings))

    def dispatch_polls() -> None:
        """Send the poll dispatcher now rather than at beat's next tick (it leases the due
        batches, so a tick sending it too hands nothing out twice)."""
        broker.send_task(POLL_TASK, queue=settings.queue, expires=max(5.0, settings.tick_s * 5))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(settings, client))
    router = APIRouter()

    @router.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.post("/v1/provider-webhooks/{profile}")
    async def provider_webhook(profile: str, request: Request) -> Response:
        try:
            body = await _bounded_body(request)
            done: dict[str, Any] = await run_in_threadpool(
                receive, settings, client, profile, body, dict(request.headers)
            )
            if done["outcome"] == "due_now":
                await run_in_threadpool(dispatch_polls)
        except Refused as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        finally:
            await run_in_threadpool(metrics_store.flush, client, keys)
        return JSONResponse(done)

    return router


def create_app(settings: Settings, client: redis.Redis | None = None) -> FastAPI:
    """The exporter's HTTP app: the monitoring routes alone."""
    client = client or connect(settings)
    app = FastAPI(title="batchrelay metrics", docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(monitoring_router(settings, client))
    return app
