"""Counters and histograms that workers keep in Redis for the metrics exporter.

Events are counted in the process as they happen (no Redis round trip each) and written to
Redis in one pipeline when the task ends (`flush`, from a Celery signal), so every worker adds
to the same totals. A process killed mid-task loses that task's counts only: these figures
are for watching the relay, not for accounting. The exporter reads both hashes per scrape;
their size is bounded by the label values (statuses, outcomes, providers and call kinds).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from datetime import datetime

import httpx
import orjson
import redis

from batchrelay.producer.keys import Keys

log = logging.getLogger(__name__)

# Counter name -> (its label names, what it counts).
COUNTERS: dict[str, tuple[tuple[str, ...], str]] = {
    "batchrelay_requests_total": (("status",), "Requests made final, by final status."),
    "batchrelay_webhook_attempts_total": (
        ("outcome",),
        "Delivery attempts (webhooks and Celery task callbacks): delivered, retry or dead.",
    ),
    "batchrelay_provider_calls_total": (
        ("provider", "call", "status"),
        "HTTP answers from providers, by profile, kind of call and status code.",
    ),
    "batchrelay_provider_webhooks_total": (
        ("provider", "outcome"),
        "Providers' batch webhooks received, by profile and what was done with them.",
    ),
}
# Histogram name -> what it measures (seconds).
HISTOGRAMS: dict[str, str] = {
    "batchrelay_submit_to_final_seconds": "From submit() to the result being final.",
    "batchrelay_final_to_delivered_seconds": "From final to the first successful delivery.",
}
BUCKETS: tuple[float, ...] = (1, 2, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 86400, 172800)

_lock = threading.Lock()
_counts: Counter[bytes] = Counter()
_observed: Counter[bytes] = Counter()


def count(name: str, *labels: str, n: int = 1) -> None:
    if n:
        with _lock:
            _counts[orjson.dumps([name, *labels])] += n


def observe(name: str, seconds: float) -> None:
    """One observation: its bucket (the smallest bound it fits, else +Inf), sum and count."""
    bound = next((b for b in BUCKETS if seconds <= b), "+Inf")
    with _lock:
        _observed[orjson.dumps([name, bound])] += 1
        _observed[orjson.dumps([name, "sum"])] += max(0.0, seconds)
        _observed[orjson.dumps([name, "count"])] += 1


def observe_delivered(payload: dict, now_ms: int) -> None:
    """Both latencies of a request whose result was just delivered for the first time."""
    created, finished = _ms(payload.get("created_at")), _ms(payload.get("finished_at"))
    if created is not None and finished is not None:
        observe("batchrelay_submit_to_final_seconds", (finished - created) / 1000)
    if finished is not None:
        observe("batchrelay_final_to_delivered_seconds", (now_ms - finished) / 1000)


def _ms(stamp: object) -> int | None:
    if not isinstance(stamp, str):
        return None
    return int(datetime.fromisoformat(stamp).timestamp() * 1000)


def flush(client: redis.Redis, keys: Keys) -> None:
    """Add what this process counted to Redis; kept for the next flush if Redis is away."""
    with _lock:
        counts, observed = dict(_counts), dict(_observed)
        _counts.clear()
        _observed.clear()
    if not counts and not observed:
        return
    pipe = client.pipeline(transaction=False)
    for field, n in counts.items():
        pipe.hincrby(keys.metric_counters, field, n)
    for field, value in observed.items():
        pipe.hincrbyfloat(keys.metric_histograms, field, value)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("metrics not written this time (%s); kept for the next task", exc)
        with _lock:
            _counts.update(counts)
            _observed.update(observed)


def read(client: redis.Redis, keys: Keys) -> tuple[dict[tuple, float], dict[tuple, float]]:
    """(counters, histograms) as {(name, *labels): value} and {(name, bound): value}."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.metric_counters)
    pipe.hgetall(keys.metric_histograms)
    counters, histograms = pipe.execute()
    return (
        {tuple(orjson.loads(k)): float(v) for k, v in counters.items()},
        {tuple(orjson.loads(k)): float(v) for k, v in histograms.items()},
    )


# Path segments kept as they are in a call's name; anything else (an id) becomes `{id}`.
_WORD = re.compile(r"^(v\d+(beta)?|[a-z]+(_[a-z]+)*)$")


def call_name(request: httpx.Request) -> str:
    """`GET /v1/batches/{id}`: the kind of provider call, not the one call (bounded labels)."""
    parts = [p if _WORD.match(p) else "{id}" for p in request.url.path.split("/") if p]
    return f"{request.method} /{'/'.join(parts)}"


def provider_hook(provider: str):
    """An httpx response hook counting every answer from `provider` by call and status."""

    def hook(response: httpx.Response) -> None:
        count(
            "batchrelay_provider_calls_total",
            provider,
            call_name(response.request),
            str(response.status_code),
        )

    return hook
