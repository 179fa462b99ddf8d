"""Sending one `Pipeline` step to a Redis Cluster.

redis-py's cluster pipeline refuses EVALSHA, and intake and idempotency keys are script calls.
Every command of a step touches one hash slot (the key schema's tags), so the step is cut by
node instead: the sync driver sends one ordinary pipeline per master, in parallel, and puts the
replies back in order; the asyncio driver sends every command at once (the cluster client
routes each, over its per-node pools). A topology change (failover, resharding) refreshes the
slot map and sends the step again: every step of a flow is safe to repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
from batchrelay.producer import commands
from batchrelay.producer.core import Pipeline
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    TryAgainError,
)

T = TypeVar("T")
Queued = list[tuple[tuple[Any, ...], dict[str, Any]]]

# A master's replica is promoted within cluster-node-timeout plus an election: about 2 s with
# a short timeout, 15-20 s with Redis' default. Past this window the caller gets
# RelayUnavailableError (a web app answers 503 and its client retries).
TOPOLOGY_ERRORS = (
    AskError,
    ClusterDownError,
    MovedError,
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


def _per_node(cluster: RedisCluster, queued: Queued) -> list[Any]:
    parts: dict[str, tuple[ClusterNode, list[int]]] = {}
    for i, (args, _options) in enumerate(queued):
        node = cluster.get_node_from_key(key_of(args))
        parts.setdefault(node.name, (node, []))[1].append(i)
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

    if len(parts) == 1:
        send(*next(iter(parts.values())))
    else:
        with ThreadPoolExecutor(len(parts)) as pool:
            for done in [pool.submit(send, node, idx) for node, idx in parts.values()]:
                done.result()
    return replies


async def aexecute(cluster: AsyncRedisCluster, step: Pipeline) -> list[Any]:
    """Send every command of the step concurrently; replies in the step's order."""

    async def one(args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        try:
            return await cluster.execute_command(*args, **options)
        except NoScriptError:
            await cluster.script_load(commands.SOURCE)
            return await cluster.execute_command(*args, **options)

    return list(await asyncio.gather(*(one(args, opts) for args, opts in recorded(step))))
