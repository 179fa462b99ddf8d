"""Peak memory of one `submit_many` of 200,000 small items, in a fresh process.

    python -m bench.bench_submit_memory

Every item is checked and encoded before any is stored, so the call holds them all at once:
the figure is the peak RSS growth during the call (target <= 100 MB), printed beside the
bytes of the encoded bodies themselves (the least any such call must hold). It runs in a
child process, so what earlier benchmarks left in this one's heap cannot hide the growth.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
from batchrelay.config import load_settings

from batchrelay import BatchRelay
from bench._redis import private_redis
from bench._rss import PeakRss
from bench.bench_submit import ENDPOINT, body

N = int(os.environ.get("BENCH_N_MEMORY", "200000"))


def measure(redis_url: str) -> None:
    settings = load_settings(
        redis_url=redis_url,
        providers=[{"name": "oa", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}],
    )
    with BatchRelay(settings) as relay:
        relay.redis.ping()
        items = ({"endpoint": ENDPOINT, "body": body(i)} for i in range(N))
        with PeakRss() as rss:
            t = time.perf_counter()
            ids = relay.submit_many(items)
            took = time.perf_counter() - t
    assert ids.new == N
    bodies_mb = sum(len(orjson.dumps(body(i))) for i in range(N)) / 1e6
    print(
        f"submit_many of {N:,} small items: peak RSS growth {rss.growth_mb:.0f} MB "
        f"(target <= 100 MB); the encoded bodies alone {bodies_mb:.0f} MB; "
        f"ratio {rss.growth_mb / bodies_mb:.1f}; {N / took:,.0f} req/s"
    )


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        measure(sys.argv[2])
        return
    with private_redis() as server:
        child = [sys.executable, "-m", "bench.bench_submit_memory", "--child", server.url]
        subprocess.run(child, check=True)


if __name__ == "__main__":
    main()
