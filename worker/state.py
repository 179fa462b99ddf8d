"""Celery's broker, and the one rule that ties it to the state Redis.

State may live on a Redis Cluster, Celery's broker may not (kombu has no cluster transport),
so a worker or beat whose Redis is a cluster refuses to start without `BATCHRELAY_BROKER_URL`.
"""

from __future__ import annotations

import logging
import time

import redis

from batchrelay.config import ConfigurationError, Settings
from batchrelay.producer.connection import cluster_enabled

log = logging.getLogger(__name__)

RETRY_S = 1.0


def broker_url(settings: Settings) -> str:
    """Celery's broker: `BATCHRELAY_BROKER_URL`, else the (single) Redis of the state."""
    chosen = settings.broker_url or settings.redis_url
    return chosen.get_secret_value()


def refuse_cluster_broker(settings: Settings, *, cluster: bool) -> None:
    """ConfigurationError when the state Redis is a cluster and would also be the broker."""
    if cluster and settings.broker_url is None:
        raise ConfigurationError(
            f"BATCHRELAY_REDIS_URL ({settings.redis_url}) is a Redis Cluster, which cannot be "
            "Celery's broker (kombu has no cluster transport): set BATCHRELAY_BROKER_URL to a "
            "standalone Redis (redis://) or RabbitMQ (amqp://)"
        )


def check_broker_at_start(settings: Settings, who: str) -> None:
    """Refuse a cluster as the broker before a worker starts; when only the server can tell
    (no broker URL, BATCHRELAY_REDIS_CLUSTER unset), wait for it to answer."""
    if settings.broker_url is not None:
        return
    while True:
        try:
            cluster = cluster_enabled(settings)
            break
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning(
                "%s: Redis at %s unavailable (%s); waiting to learn whether it is a cluster",
                who,
                settings.redis_url,
                type(exc).__name__,
            )
            time.sleep(RETRY_S)
    refuse_cluster_broker(settings, cluster=cluster)
