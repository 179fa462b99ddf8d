"""Per-process state of a worker: settings, one Redis client, adapters, leases.

The pipeline functions take a `Relay` so tests can call them directly against real Redis and
the emulator, with no Celery in between.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from redis.exceptions import LockError, LockNotOwnedError

from batchrelay.config import Settings
from batchrelay.producer.connection import Client, connect
from batchrelay.producer.keys import Keys, tag_of
from batchrelay.producer.records import now_ms
from batchrelay.worker.engine import Engine
from batchrelay.worker.providers import BatchAdapter, make_adapter

log = logging.getLogger(__name__)

# Field prefix of a retired group's tombstone in the groups hash (see sweep.retire_idle_groups).
RETIRED = "retired:"

# Batch record states.
CLAIMED = "claimed"
UPLOADED = "uploaded"
SUBMITTED = "submitted"
COLLECTING = "collecting"
DONE = "done"


@dataclass(frozen=True)
class Group:
    tag: str
    profile: str
    endpoint: str
    model: str


class Relay:
    def __init__(self, settings: Settings, client: Client | None = None):
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.redis = client or connect(settings)
        self._adapters: dict[str, BatchAdapter] = {}
        self._engine: Engine | None = None
        self._group_meta: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for adapter in self._adapters.values():
            adapter.close()
        if self._engine is not None:
            self._engine.close()
        self.redis.close()

    def engine(self) -> Engine:
        """The process's delivery engine (event loop, webhook client), made on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = Engine(self.settings)
            return self._engine

    def adapter(self, profile_name: str) -> BatchAdapter:
        with self._lock:
            if profile_name not in self._adapters:
                profile = self.settings.profile(profile_name)
                self._adapters[profile_name] = make_adapter(profile, self.settings)
            return self._adapters[profile_name]

    def group_meta(self, tag: str) -> dict[str, str]:
        """A group's profile, endpoint and model (immutable, so cached for the process; a
        group being retired is read from its tombstone)."""
        meta = self._group_meta.get(tag)
        if meta is None:
            raw = self.redis.hget(self.keys.groups, tag) or self.redis.hget(
                self.keys.groups, RETIRED + tag
            )
            if raw is None:
                return {"profile": "", "endpoint": "", "model": ""}
            loaded = orjson.loads(raw)
            meta = {name: loaded[name] for name in ("profile", "endpoint", "model")}
            self._group_meta[tag] = meta
        return meta

    def groups(self) -> list[Group]:
        """The listed groups (not the `retired:` tombstones kept in the same hash)."""
        out = []
        for tag, raw in self.redis.hgetall(self.keys.groups).items():
            if tag.startswith(RETIRED.encode()):
                continue
            meta = orjson.loads(raw)
            out.append(Group(tag.decode(), meta["profile"], meta["endpoint"], meta["model"]))
        return sorted(out, key=lambda g: g.tag)

    def batch(self, bid: str) -> dict[str, str]:
        raw = self.redis.hgetall(self.keys.batch(bid))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def finish_batch(self, bid: str, **fields: Any) -> None:
        """Mark a batch done (with `fields`), stop scheduling it, and let its record and item
        list expire with the results, in one transaction."""
        retention_ms, now = self.settings.result_retention_s * 1000, self.now()
        mapping = {"state": DONE, "collected": now, **fields}
        finished = self.keys.finished(tag_of(bid))
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.batch(bid), mapping={k: str(v) for k, v in mapping.items()})
        pipe.zrem(self.keys.inflight(tag_of(bid)), bid)
        pipe.pexpire(self.keys.batch(bid), retention_ms)
        pipe.pexpire(self.keys.items(bid), retention_ms)
        # The index of finished batches forgets those whose record has expired.
        pipe.zadd(finished, {bid: now})
        pipe.zremrangebyscore(finished, "-inf", now - retention_ms)
        pipe.pexpire(finished, retention_ms)
        pipe.execute()

    def set_batch(self, bid: str, **fields: Any) -> None:
        self.redis.hset(self.keys.batch(bid), mapping={k: str(v) for k, v in fields.items()})

    def schedule(self, bid: str, at_ms: int) -> None:
        """When the batch next needs a worker (poll, or re-drive after a lease runs out)."""
        self.redis.zadd(self.keys.inflight(tag_of(bid)), {bid: at_ms})

    def lease_ms(self) -> int:
        return int(self.settings.lease_s * 1000)

    @contextmanager
    def batch_lease(self, bid: str) -> Iterator[bool]:
        """Hold the batch's lock while working on it; yields False if another worker has it.

        The lock lives `lease_s` and a heartbeat renews it, so a SIGKILLed holder frees the
        batch within one lease and the dispatcher hands it to another worker.
        """
        ttl = self.settings.lease_s
        lock = self.redis.lock(self.keys.lock(bid), timeout=ttl, thread_local=False)
        if not lock.acquire(blocking=False):
            yield False
            return
        stop = threading.Event()

        def heartbeat() -> None:
            while not stop.wait(ttl / 3):
                try:
                    lock.extend(ttl, replace_ttl=True)
                except LockNotOwnedError:
                    log.warning("lost the lease on batch %s to another worker", bid)
                    return
                except (LockError, redis.RedisError) as exc:
                    # Redis restarting: keep trying, the lease outlives a short outage.
                    log.warning("could not renew the lease on batch %s: %s", bid, exc)

        beat = threading.Thread(target=heartbeat, name=f"lease-{bid}", daemon=True)
        beat.start()
        try:
            yield True
        finally:
            stop.set()
            beat.join()
            with suppress(LockError, redis.RedisError):
                lock.release()

    def now(self) -> int:
        return now_ms()
