"""The one place a Redis client is built from the settings: a single Redis or a Redis Cluster,
sync or asyncio.

`BATCHRELAY_REDIS_URL` may name one Redis or any node of a cluster; which one it is comes from
`BATCHRELAY_REDIS_CLUSTER` when set, else from the server itself (`INFO`: `cluster_enabled`).
The same probe refuses a Redis older than 7.0: results are announced with SPUBLISH (sharded
pub/sub), which a cluster needs and a single Redis has since 7.0.
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from batchrelay.config import ConfigurationError, Settings

__all__ = ["AsyncClient", "Client", "aconnect", "acluster_enabled", "cluster_enabled", "connect"]

Client = redis.Redis | RedisCluster
AsyncClient = aredis.Redis | AsyncRedisCluster
MIN_VERSION = (7, 0)


def _verdict(settings: Settings, info: dict[str, Any]) -> bool:
    """Cluster or not, from the server's INFO; a too old server is refused here."""
    version = str(info.get("redis_version", "0"))
    if tuple(int(part) for part in version.split(".")[:2]) < MIN_VERSION:
        raise ConfigurationError(
            f"BATCHRELAY_REDIS_URL: Redis at {settings.redis_url} is {version}; batchrelay "
            "needs Redis 7.0 or later (it announces results with sharded pub/sub, SPUBLISH)"
        )
    return bool(int(info.get("cluster_enabled", 0)))


def _check_db(settings: Settings) -> None:
    path = urlsplit(settings.redis_url.get_secret_value()).path.strip("/")
    if path not in ("", "0"):
        raise _only_db0(settings, path)


def _only_db0(settings: Settings, db: str) -> ConfigurationError:
    return ConfigurationError(
        f"BATCHRELAY_REDIS_URL: {settings.redis_url} names database {db}, but a Redis Cluster "
        "has only database 0"
    )


def _select_refused(settings: Settings, exc: redis.ResponseError) -> ConfigurationError:
    """A cluster node answers the probe's SELECT with an error: the URL names a database."""
    if "SELECT is not allowed in cluster mode" not in str(exc):
        raise exc
    return _only_db0(settings, urlsplit(settings.redis_url.get_secret_value()).path.strip("/"))


def cluster_enabled(settings: Settings) -> bool:
    """Whether `redis_url` is a Redis Cluster: the setting if given, else asked (one INFO)."""
    if settings.redis_cluster is not None:
        return settings.redis_cluster
    probe = redis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_connect_timeout=10, socket_timeout=10
    )
    try:
        return _verdict(settings, probe.info())
    except redis.ResponseError as exc:
        raise _select_refused(settings, exc) from None
    finally:
        probe.close()


async def acluster_enabled(settings: Settings) -> bool:
    """`cluster_enabled` for asyncio."""
    if settings.redis_cluster is not None:
        return settings.redis_cluster
    probe = aredis.Redis.from_url(
        settings.redis_url.get_secret_value(), socket_connect_timeout=10, socket_timeout=10
    )
    try:
        return _verdict(settings, await probe.info())
    except redis.ResponseError as exc:
        raise _select_refused(settings, exc) from None
    finally:
        await probe.aclose()


def connect(settings: Settings, **options: Any) -> Client:
    """A sync client for `redis_url` (`options` go to redis-py, e.g. decode_responses)."""
    url = settings.redis_url.get_secret_value()
    if cluster_enabled(settings):
        _check_db(settings)
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


async def aconnect(settings: Settings, **options: Any) -> AsyncClient:
    """An asyncio client for `redis_url`."""
    url = settings.redis_url.get_secret_value()
    if await acluster_enabled(settings):
        _check_db(settings)
        return AsyncRedisCluster.from_url(url, **options)
    return aredis.Redis.from_url(url, **options)


class LazyClient:
    """A sync client made on first use: a server (`batchrelay serve`) starts while Redis is
    down and answers 503 until it is back, instead of failing at start. Telling a cluster
    from a single Redis needs the server, hence not at construction."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Client | None = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = connect(self._settings)
        return getattr(self._client, name)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
