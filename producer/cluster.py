"""Sending one `Pipeline` step to a Redis Cluster.

redis-py's cluster pipeline refuses EVALSHA, and intake and idempotency keys are script calls.
Every command of a step touches one hash slot (the key schema's tags), so the step is cut by
node instead: the sync driver sends one ordinary pipeline per master, in parallel, and puts the
replies back in order; the asyncio driver does the same, concurrently, with one asyncio client
per master (`AsyncNodes`). A topology change (failover, resharding) refreshes the
slot map and sends the step again: every step of a flow is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    SlotNotCoveredError,
    TryAgainError,
)

from batchrelay.producer import commands
from batchrelay.producer.core import Pipeline

T = TypeVar("T")
N = TypeVar("N", ClusterNode, AsyncClusterNode)
Queued = list[tuple[tuple[Any, ...], dict[str, Any]]]

# A master's replica is promoted within cluster-node-timeout plus an election: about 2 s with
# a short timeout, 15-20 s with Redis' default. Past this window the caller gets
# RelayUnavailableError (a web app answers 503 and its client retries).
TOPOLOGY_ERRORS = (
    AskError,
    ClusterDownError,
    MovedError,
    SlotNotCoveredError,
    TryAgainError,
    redis.ConnectionError,
    redis.TimeoutError,
)
ATTEMPTS = 20
RETRY_S = 0.5

_RECORDER = redis.Redis()  # never connects: only its pipelines' command stacks are read


def recorded(step: Pipeline) -> Queued:
    """The step's commands as redis-py would send them: (args, options) each."""
    pipe = step.queue_on(_RECORDER.pipeline(transaction=False))
    return [(tuple(args), dict(options)) for args, options in pipe.command_stack]


def key_of(args: tuple[Any, ...]) -> Any:
    """The key that places a command: EVALSHA's first key, else its first argument."""
    return args[3] if str(args[0]).upper() == "EVALSHA" else args[1]


def execute(cluster: RedisCluster, step: Pipeline) -> list[Any]:
    """Send the step as one pipeline per master, in parallel; replies in the step's order."""
    queued = recorded(step)
    return retrying(cluster, lambda: _per_node(cluster, queued))


def retrying(cluster: RedisCluster, send: Callable[[], T]) -> T:
    """`send()`, again on a fresh slot map while the cluster's topology changes."""
    attempts = 1
    while True:
        try:
            return send()
        except TOPOLOGY_ERRORS:
            if attempts == ATTEMPTS:
                raise
            attempts += 1
            time.sleep(RETRY_S)
            with contextlib.suppress(*TOPOLOGY_ERRORS):  # the next attempt tells
                cluster.nodes_manager.initialize()


def by_node(queued: Queued, node_of: Callable[[Any], N]) -> dict[str, tuple[N, list[int]]]:
    """The step's command indices, per node (in order within each)."""
    parts: dict[str, tuple[N, list[int]]] = {}
    for i, (args, _options) in enumerate(queued):
        node = node_of(key_of(args))
        parts.setdefault(node.name, (node, []))[1].append(i)  # type: ignore[attr-defined]
    return parts


def _per_node(cluster: RedisCluster, queued: Queued) -> list[Any]:
    replies: list[Any] = [None] * len(queued)

    def send(node: ClusterNode, indices: list[int]) -> None:
        client = cluster.get_redis_connection(node)
        for loaded in (False, True):
            pipe = client.pipeline(transaction=False)
            for i in indices:
                args, options = queued[i]
                pipe.execute_command(*args, **options)
            try:
                for i, reply in zip(indices, pipe.execute(), strict=True):
                    replies[i] = reply
                return
            except NoScriptError:
                if loaded:
                    raise
                client.script_load(commands.SOURCE)

    parts = by_node(queued, cluster.get_node_from_key)
    if len(parts) == 1:
        send(*next(iter(parts.values())))
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            for done in [pool.submit(send, node, idx) for node, idx in parts.values()]:
                done.result()
    return replies


class AsyncNodes:
    """An asyncio cluster client and one plain client per master beside it: redis.asyncio
    has no per-node client to pipeline EVALSHA on, so these are built from the cluster's own
    node settings (address, password, TLS)."""

    def __init__(self, cluster: AsyncRedisCluster):
        self.cluster = cluster
        self._clients: dict[str, aredis.Redis] = {}

    def client(self, node: AsyncClusterNode) -> aredis.Redis:
        found = self._clients.get(node.name)
        if found is None:
            pool = aredis.ConnectionPool(
                connection_class=node.connection_class, **node.connection_kwargs
            )
            found = self._clients[node.name] = aredis.Redis(connection_pool=pool)
        return found

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


async def aexecute(nodes: AsyncNodes, step: Pipeline) -> list[Any]:
    """`execute` for asyncio: one pipeline per master, concurrently."""
    queued = recorded(step)
    return await aretrying(nodes.cluster, lambda: _aper_node(nodes, queued))


async def aretrying(cluster: AsyncRedisCluster, send: Callable[[], Awaitable[T]]) -> T:
    """`retrying` for asyncio."""
    attempts = 1
    while True:
        try:
            return await send()
        except TOPOLOGY_ERRORS:
            if attempts == ATTEMPTS:
                raise
            attempts += 1
            await asyncio.sleep(RETRY_S)
            with contextlib.suppress(*TOPOLOGY_ERRORS):
                await cluster.nodes_manager.initialize()


async def _aper_node(nodes: AsyncNodes, queued: Queued) -> list[Any]:
    replies: list[Any] = [None] * len(queued)

    async def send(node: AsyncClusterNode, indices: list[int]) -> None:
        client = nodes.client(node)
        for loaded in (False, True):
            pipe = client.pipeline(transaction=False)
            for i in indices:
                args, options = queued[i]
                pipe.execute_command(*args, **options)
            try:
                for i, reply in zip(indices, await pipe.execute(), strict=True):
                    replies[i] = reply
                return
            except NoScriptError:
                if loaded:
                    raise
                await client.script_load(commands.SOURCE)

    parts = by_node(queued, nodes.cluster.get_node_from_key)
    await asyncio.gather(*(send(node, idx) for node, idx in parts.values()))
    return replies
