"""Intake throughput against a baseline measured in the same run.

    python -m bench.bench_submit

* submit_many vs a raw redis-py pipeline of HSET + RPUSH of the same payloads (target >= 0.7)
* submit vs one raw MULTI/EXEC round trip (HSET + RPUSH) per request (target >= 0.6)
"""

from __future__ import annotations

import os
import time
import uuid

import orjson

from batchrelay import BatchRelay
from batchrelay.config import load_settings
from bench._redis import private_redis

N_MANY = int(os.environ.get("BENCH_N_MANY", "50000"))
N_ONE = int(os.environ.get("BENCH_N_ONE", "5000"))
ENDPOINT = "/v1/chat/completions"


def body(i: int) -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "user", "content": f"Summarise ticket #{i}: the printer is on fire."}
        ],
        "max_tokens": 200,
    }


def best_of(runs: int, fn) -> float:
    return min(fn() for _ in range(runs))


def main() -> None:
    with private_redis() as server:
        client = server.client()
        settings = load_settings(
            redis_url=server.url,
            providers=[{"name": "oa", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}],
        )
        relay = BatchRelay(settings)
        bodies = [body(i) for i in range(N_MANY)]
        items = [{"endpoint": ENDPOINT, "body": b} for b in bodies]

        def raw_many() -> float:
            client.flushall()
            t = time.perf_counter()
            for start in range(0, N_MANY, 1000):
                pipe = client.pipeline(transaction=False)
                for b in bodies[start : start + 1000]:
                    rid = uuid.uuid4().hex
                    pipe.hset(f"raw:{rid}", mapping={"endpoint": ENDPOINT, "body": orjson.dumps(b)})
                    pipe.rpush("raw:pending", rid)
                pipe.execute()
            return time.perf_counter() - t

        def ours_many() -> float:
            client.flushall()
            t = time.perf_counter()
            relay.submit_many(items)
            return time.perf_counter() - t

        def raw_one() -> float:
            client.flushall()
            t = time.perf_counter()
            for b in bodies[:N_ONE]:
                rid = uuid.uuid4().hex
                pipe = client.pipeline(transaction=True)
                pipe.hset(f"raw:{rid}", mapping={"endpoint": ENDPOINT, "body": orjson.dumps(b)})
                pipe.rpush("raw:pending", rid)
                pipe.execute()
            return time.perf_counter() - t

        def ours_one() -> float:
            client.flushall()
            t = time.perf_counter()
            for b in bodies[:N_ONE]:
                relay.submit(ENDPOINT, b)
            return time.perf_counter() - t

        raw_m, ours_m = best_of(3, raw_many), best_of(3, ours_many)
        raw_o, ours_o = best_of(3, raw_one), best_of(3, ours_one)
        print(
            f"submit_many: {N_MANY / ours_m:,.0f} req/s; raw pipelined HSET+RPUSH "
            f"{N_MANY / raw_m:,.0f} req/s; ratio {raw_m / ours_m:.2f} (target >= 0.70)"
        )
        print(
            f"submit:      {N_ONE / ours_o:,.0f} req/s; raw MULTI/EXEC per request "
            f"{N_ONE / raw_o:,.0f} req/s; ratio {raw_o / ours_o:.2f} (target >= 0.60)"
        )
        relay.close()
        client.close()


if __name__ == "__main__":
    main()
