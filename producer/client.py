"""What a web app imports: submit, submit_many, status, result and cancel, plus the bulk
statuses, results and wait, sync and asyncio.

Both classes are thin drivers of the same flows (`producer.core`): each runs a flow's
pipelines, subscriptions and pauses with its redis-py client. Intake is one round trip per
1,000 requests (two with idempotency keys). A web app never imports Celery.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from batchrelay.config import Settings, load_settings
from batchrelay.config.tenants import Tenants
from batchrelay.producer import cluster, commands
from batchrelay.producer.callbacks import Callback, Webhook
from batchrelay.producer.connection import AsyncClient, Client, aconnect, connect
from batchrelay.producer.core import Core, Flow, Listen, Pause, Pipeline, SubmitItem, Submitted
from batchrelay.producer.records import RequestStatus, StateCounts

__all__ = ["AsyncBatchRelay", "BatchRelay", "SubmitItem"]

T = TypeVar("T")
# Redis cannot be reached (or is loading, or refuses our password): RelayUnavailableError.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError)
Progress = Callable[[StateCounts], None]


class BatchRelay:
    """Synchronous client. `BatchRelay.from_env()` reads `BATCHRELAY_*` settings; every call
    raises a `BatchRelayError` (`RelayUnavailableError` when Redis cannot be reached)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: Client | None = None,
        tenants: Tenants | None = None,
    ):
        self._core = Core(settings or load_settings(), tenants)
        self.settings = self._core.settings
        self._client = client

    @property
    def redis(self) -> Client:
        """The client, made on first use: whether the URL is a cluster is asked of Redis,
        and a web app may build its relay before Redis is up."""
        if self._client is None:
            self._client = connect(self.settings)
        return self._client

    @classmethod
    def from_env(cls) -> BatchRelay:
        return cls(load_settings())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> BatchRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        callback: Callback | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tenant: str | None = None,
    ) -> str:
        """Store one request durably and return its id (valid as an Anthropic custom_id).
        `tenant` records whose request it is (in its status and result) and applies that
        tenant's quotas, if `tenants` were given; QuotaExceededError stores nothing."""
        p = self._core.intake.prepare(
            endpoint,
            body,
            callback=callback,
            idempotency_key=idempotency_key,
            metadata=metadata,
            tenant=tenant,
        )
        return self._drive(self._core.store([p], numbered=False))[0]

    def submit_many(
        self, items: Iterable[SubmitItem | Mapping[str, Any]], *, tenant: str | None = None
    ) -> Submitted:
        """Check every item first (one bad item stores nothing), then store them pipelined;
        the ids in order (a list; `.new` counts those this call stored). Every item belongs
        to `tenant`, whose quotas admit all of them or none."""
        prepared = self._core.prepare_many(items, tenant)
        return self._drive(self._core.store(prepared, numbered=True))

    def status(self, request_id: str) -> RequestStatus:
        return self._drive(self._core.status(request_id))

    def statuses(self, request_ids: Sequence[str]) -> list[RequestStatus | None]:
        """Each request's status, in order; None where it does not exist (any more)."""
        return self._drive(self._core.statuses(request_ids))

    def cancel(self, request_id: str) -> None:
        """Cancel a request until its batch is submitted; CancelError after that."""
        self._drive(self._core.cancel(request_id))

    def result(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        """Block until the request is final and return its result payload (the webhook body).

        Waits on a pub/sub message, not a poll loop; raises ResultTimeoutError on timeout.
        """
        return self._drive(self._core.result(request_id, timeout))

    def results(self, request_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        """Each final request's result payload, in order; None where it is not final or its
        record is gone (see `statuses`)."""
        return self._drive(self._core.results(request_ids))

    def wait(
        self,
        request_ids: Sequence[str],
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
    ) -> StateCounts:
        """Block until every request is final (or gone) and return the counts by state;
        `progress` gets them after every read. ResultTimeoutError on timeout."""
        return self._drive(self._core.wait(request_ids, timeout, progress))

    def _drive(self, flow: Flow[T]) -> T:
        pubsub = None
        try:
            client = self.redis
            reply: Any = None
            while True:
                try:
                    step = flow.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = None
                if isinstance(step, Pipeline):
                    reply = self._execute(client, step)
                elif isinstance(step, Listen):
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    if isinstance(client, RedisCluster):
                        cluster.retrying(client, partial(pubsub.ssubscribe, *step.channels))
                        receive = pubsub.get_sharded_message
                    else:
                        pubsub.ssubscribe(*step.channels)
                        receive = pubsub.get_message
                elif isinstance(step, Pause) and pubsub is not None:
                    started = time.monotonic()
                    if receive(timeout=step.seconds) is not None:
                        while receive(timeout=0) is not None:
                            pass
                    time.sleep(max(0.0, started + step.at_least - time.monotonic()))
        except UNAVAILABLE as exc:
            raise self._core.unavailable(exc) from exc
        finally:
            flow.close()
            if pubsub is not None:
                pubsub.close()

    @staticmethod
    def _execute(client: Client, step: Pipeline) -> list[Any]:
        """One round trip (one per master on a cluster); a restarted or flushed Redis lost
        the script: load it and send the pipeline again (every step is safe to repeat)."""
        if isinstance(client, RedisCluster):
            return cluster.execute(client, step)
        try:
            return step.queue_on(client.pipeline(transaction=False)).execute()
        except NoScriptError:
            client.script_load(commands.SOURCE)
            return step.queue_on(client.pipeline(transaction=False)).execute()


class AsyncBatchRelay:
    """The same API for asyncio applications (the same flows, driven by redis.asyncio)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        client: AsyncClient | None = None,
        tenants: Tenants | None = None,
    ):
        self._core = Core(settings or load_settings(), tenants)
        self.settings = self._core.settings
        self._client = client
        self._nodes: cluster.AsyncNodes | None = None

    async def client(self) -> AsyncClient:
        """The client, made on first use (see `BatchRelay.redis`)."""
        if self._client is None:
            self._client = await aconnect(self.settings)
        if isinstance(self._client, AsyncRedisCluster) and self._nodes is None:
            await self._client.initialize()  # the slot map, before a first SSUBSCRIBE
            self._nodes = cluster.AsyncNodes(self._client)
        return self._client

    @classmethod
    def from_env(cls) -> AsyncBatchRelay:
        return cls(load_settings())

    async def aclose(self) -> None:
        if self._nodes is not None:
            await self._nodes.aclose()
        if self._client is not None:
            await self._client.aclose()

    async def __aenter__(self) -> AsyncBatchRelay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def submit(
        self,
        endpoint: str,
        body: Mapping[str, Any],
        *,
        callback: Callback | None = None,
        idempotency_key: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tenant: str | None = None,
    ) -> str:
        # Checking a webhook URL resolves its host: off the event loop; anything else is
        # checked inline (a thread hop costs more than the check).
        prepare = functools.partial(
            self._core.intake.prepare,
            endpoint,
            body,
            callback=callback,
            idempotency_key=idempotency_key,
            metadata=metadata,
            tenant=tenant,
        )
        p = await asyncio.to_thread(prepare) if isinstance(callback, Webhook) else prepare()
        return (await self._drive(self._core.store([p], numbered=False)))[0]

    async def submit_many(
        self, items: Iterable[SubmitItem | Mapping[str, Any]], *, tenant: str | None = None
    ) -> Submitted:
        prepared = await asyncio.to_thread(self._core.prepare_many, list(items), tenant)
        return await self._drive(self._core.store(prepared, numbered=True))

    async def status(self, request_id: str) -> RequestStatus:
        return await self._drive(self._core.status(request_id))

    async def statuses(self, request_ids: Sequence[str]) -> list[RequestStatus | None]:
        return await self._drive(self._core.statuses(request_ids))

    async def cancel(self, request_id: str) -> None:
        await self._drive(self._core.cancel(request_id))

    async def result(self, request_id: str, timeout: float | None = None) -> dict[str, Any]:
        return await self._drive(self._core.result(request_id, timeout))

    async def results(self, request_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        return await self._drive(self._core.results(request_ids))

    async def wait(
        self,
        request_ids: Sequence[str],
        timeout: float | None = None,
        *,
        progress: Progress | None = None,
    ) -> StateCounts:
        return await self._drive(self._core.wait(request_ids, timeout, progress))

    async def _drive(self, flow: Flow[T]) -> T:
        pubsub = None
        loop = asyncio.get_running_loop()
        try:
            client = await self.client()
            reply: Any = None
            while True:
                try:
                    step = flow.send(reply)
                except StopIteration as stop:
                    return stop.value
                reply = None
                if isinstance(step, Pipeline):
                    reply = await self._execute(client, step)
                elif isinstance(step, Listen):
                    pubsub = client.pubsub(ignore_subscribe_messages=True)
                    if isinstance(client, AsyncRedisCluster):
                        subscribe = partial(pubsub.ssubscribe, *step.channels)
                        await cluster.aretrying(client, subscribe)
                        receive = pubsub.get_sharded_message
                    else:
                        await pubsub.ssubscribe(*step.channels)
                        receive = pubsub.get_message
                elif isinstance(step, Pause) and pubsub is not None:
                    started = loop.time()
                    if await receive(timeout=step.seconds) is not None:
                        while await receive(timeout=0) is not None:
                            pass
                    await asyncio.sleep(max(0.0, started + step.at_least - loop.time()))
        except UNAVAILABLE as exc:
            raise self._core.unavailable(exc) from exc
        finally:
            flow.close()
            if pubsub is not None:
                await pubsub.aclose()

    async def _execute(self, client: AsyncClient, step: Pipeline) -> list[Any]:
        if self._nodes is not None:
            return await cluster.aexecute(self._nodes, step)
        try:
            return await step.queue_on(client.pipeline(transaction=False)).execute()
        except NoScriptError:
            await client.script_load(commands.SOURCE)
            return await step.queue_on(client.pipeline(transaction=False)).execute()
