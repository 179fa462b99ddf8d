"""Scale-out, measured in one run: a single Redis vs a 3-master + 3-replica Redis Cluster.

    python -m bench.bench_cluster

* intake: `submit_many` throughput with 1 and 4 producer processes, single vs cluster;
* whole pipeline (submit -> webhook) with 1, 2 and 4 worker processes (one pool process each)
  and beat, state on the cluster, broker on a standalone Redis, against the same emulator;
* Redis memory per pending request and per stored result (INFO used_memory, single Redis),
  and how many requests a day a single Redis and a 3-master cluster hold with the default
  7-day retention, at NODE_GB of data per master.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from batchrelay import BatchRelay, Webhook
from batchrelay.config import load_settings
from batchrelay.emulator import start_emulator
from bench._redis import private_redis
from tests._cluster import RedisClusterServers
from tests._receiver import WebhookReceiver
from tests._stack import Stack
from tests.relay.harness import all_final, drive, fast_emulator_config, relay_settings

N_INTAKE = int(os.environ.get("BENCH_N_INTAKE", "40000"))
N_PIPELINE = int(os.environ.get("BENCH_N_PIPELINE", "6000"))
N_MEMORY = int(os.environ.get("BENCH_N_MEMORY", "10000"))
NODE_GB = float(os.environ.get("BENCH_NODE_GB", "8"))
MODELS = [f"gpt-4o-mini-{i}" for i in range(16)]  # 16 groups, spread over the masters
CHAT = "/v1/chat/completions"
PROVIDERS = [{"name": "oa", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}]


def body(i: int) -> dict[str, Any]:
    text = f"Summarise ticket #{i}: the printer is on fire."
    return {"model": MODELS[i % len(MODELS)], "messages": [{"role": "user", "content": text}]}


def _producer(url: str, n: int, ready: Any, go: Any, took: Any) -> None:
    relay = BatchRelay(load_settings(redis_url=url, providers=PROVIDERS))
    items = [{"endpoint": CHAT, "body": body(i)} for i in range(n)]
    relay.submit_many(items[:10])  # connect and load the script before the clock starts
    ready.wait()
    go.wait()
    start = time.perf_counter()
    for first in range(0, n, 5000):
        relay.submit_many(items[first : first + 5000])
    took.put(time.perf_counter() - start)
    relay.close()


def intake(url: str, procs: int) -> float:
    """Requests per second stored by `procs` producer processes together."""
    ctx = mp.get_context("spawn")
    ready, go, took = ctx.Barrier(procs + 1), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_producer, args=(url, N_INTAKE // procs, ready, go, took))
        for _ in range(procs)
    ]
    for w in workers:
        w.start()
    ready.wait()
    go.set()
    slowest = max(took.get(timeout=600) for _ in workers)
    for w in workers:
        w.join(60)
    return N_INTAKE // procs * procs / slowest


def pipeline(cluster_url: str, broker_url: str, workers: int, logdir: Path) -> float:
    """Requests per second from the first submit to the last webhook."""
    with start_emulator(fast_emulator_config()) as emu, WebhookReceiver() as receiver:
        settings = relay_settings(
            cluster_url,
            emu,
            broker_url=broker_url,
            key_prefix=f"p{workers}",
            tick_s=0.25,
            poll_interval_s=0.25,
        )
        stack = Stack(settings, logdir)
        producer = BatchRelay(settings)
        try:
            for i in range(workers):
                stack.start_worker(f"w{i}", concurrency=1)
            stack.start_beat()
            time.sleep(3)  # let the processes start before the clock does
            hook = Webhook(receiver.url + "/in")
            start = time.perf_counter()
            producer.submit_many(
                [{"endpoint": CHAT, "body": body(i), "callback": hook} for i in range(N_PIPELINE)]
            )
            stack.wait_until(lambda: receiver.wait_for(N_PIPELINE, 0.01), 600, "webhooks")
            return N_PIPELINE / (time.perf_counter() - start)
        finally:
            stack.stop()
            producer.close()


def memory(url: str) -> tuple[float, float]:
    """Bytes of Redis memory per pending request and per stored result (single Redis)."""
    with start_emulator(fast_emulator_config()) as emu:
        settings = relay_settings(url, emu)
        producer = BatchRelay(settings)
        from batchrelay.worker.context import Relay

        relay = Relay(settings)
        try:
            relay.redis.flushall()
            base = relay.redis.info("memory")["used_memory"]
            ids = producer.submit_many(
                [{"endpoint": CHAT, "body": body(i)} for i in range(N_MEMORY)]
            )
            pending = relay.redis.info("memory")["used_memory"] - base
            drive(relay, all_final(producer, ids), timeout=300)
            for key in relay.redis.scan_iter(match="*:batch:*"):
                relay.redis.delete(key)  # batch records are per batch, not per request
            stored = relay.redis.info("memory")["used_memory"] - base
            return pending / N_MEMORY, stored / N_MEMORY
        finally:
            producer.close()
            relay.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="batchrelay-bench-") as tmp, private_redis() as single:
        cluster = RedisClusterServers(Path(tmp))
        cluster.start()
        try:
            for procs in (1, 4):
                one = intake(single.url, procs)
                many = intake(cluster.url, procs)
                print(
                    f"intake, {procs} producer process(es): single Redis {one:,.0f} req/s; "
                    f"3-master cluster {many:,.0f} req/s; ratio {many / one:.2f}"
                )
            logdir = Path(tmp) / "logs"
            logdir.mkdir()
            rates = {n: pipeline(cluster.url, single.url, n, logdir) for n in (1, 2, 4)}
            print(
                "pipeline submit -> webhook, state on the cluster: "
                + "; ".join(f"{n} worker(s) {r:,.0f} req/s" for n, r in rates.items())
                + f"; 4 vs 1: {rates[4] / rates[1]:.2f}"
            )
            per_pending, per_result = memory(single.url)
            retention_days = load_settings(providers=PROVIDERS).result_retention_s / 86_400
            per_day = NODE_GB * 2**30 / (per_result * retention_days)
            print(
                f"memory: {per_pending:,.0f} B per pending request, {per_result:,.0f} B per "
                f"stored result; with {retention_days:.0f}-day retention and {NODE_GB:g} GB "
                f"per master: single Redis {per_day:,.0f} requests/day, 3-master cluster "
                f"{3 * per_day:,.0f} requests/day"
            )
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
