"""`batchrelay serve` throughput against baselines measured in the same run.

    python -m bench.bench_api

* POST /v1/requests/bulk of 1,000-item arrays vs `submit_many` of the same items called
  directly (target >= 0.5)
* POST /v1/requests one at a time vs a minimal uvicorn route doing one Redis round trip
  (target >= 0.5)

Both servers are subprocesses with one uvicorn worker; one keep-alive client calls them in
turn, so the ratios compare the servers, not the client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import redis.asyncio as aredis
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse

from batchrelay import BatchRelay
from batchrelay.config import load_settings
from batchrelay.config.tenants import key_digest
from bench._redis import private_redis
from bench.bench_submit import ENDPOINT, body
from tests._redis import free_port
from tests._stack import settings_env

ROUNDS = int(os.environ.get("BENCH_API_ROUNDS", "10"))  # bulk calls of 1,000 items
N_ONE = int(os.environ.get("BENCH_API_N_ONE", "2000"))
KEY = "bench-key"
ROOT = Path(__file__).resolve().parent.parent


def baseline_app() -> FastAPI:
    """The minimal route: parse the JSON body, one Redis round trip, answer JSON."""
    app = FastAPI()
    client = aredis.Redis.from_url(os.environ["BATCHRELAY_REDIS_URL"])

    @app.post("/one", status_code=202)
    async def one(request: Request) -> ORJSONResponse:
        data = orjson.loads(await request.body())
        n = await client.incr("baseline")
        return ORJSONResponse({"id": f"{n}", "endpoint": data["endpoint"]}, status_code=202)

    return app


@contextmanager
def server(args: list[str], env: dict[str, str]):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", *args, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/docs", timeout=1)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{args} did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


def best_of(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def main() -> None:
    with private_redis() as rs:
        settings = load_settings(
            redis_url=rs.url,
            providers=[{"name": "oa", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}],
        )
        env = settings_env(settings)
        env["BATCHRELAY_TENANTS"] = orjson.dumps(
            [{"name": "bench", "key_sha256": [key_digest(KEY)]}]
        ).decode()
        items = [{"endpoint": ENDPOINT, "body": body(i)} for i in range(1000)]
        payload = orjson.dumps(items)
        one = orjson.dumps(items[0])
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        relay = BatchRelay(settings)
        serve = ["batchrelay", "serve"]
        base = ["uvicorn", "bench.bench_api:baseline_app", "--factory", "--log-level", "warning"]
        with server(serve, env) as api, server(base, env) as baseline:
            http = httpx.Client(headers=headers, timeout=60)

            def direct_bulk() -> float:
                t = time.perf_counter()
                for _ in range(ROUNDS):
                    relay.submit_many(items, tenant="bench")
                return time.perf_counter() - t

            def http_bulk() -> float:
                t = time.perf_counter()
                for _ in range(ROUNDS):
                    http.post(api + "/v1/requests/bulk", content=payload).raise_for_status()
                return time.perf_counter() - t

            def http_one(url: str) -> Callable[[], float]:
                def run() -> float:
                    t = time.perf_counter()
                    for _ in range(N_ONE):
                        http.post(url, content=one).raise_for_status()
                    return time.perf_counter() - t

                return run

            direct, bulk = best_of(3, direct_bulk), best_of(3, http_bulk)
            raw_one = best_of(3, http_one(baseline + "/one"))
            ours_one = best_of(3, http_one(api + "/v1/requests"))
            http.close()
        relay.close()
        n = ROUNDS * 1000
        print(
            f"POST /v1/requests/bulk: {n / bulk:,.0f} req/s; submit_many direct "
            f"{n / direct:,.0f} req/s; ratio {direct / bulk:.2f} (target >= 0.50)"
        )
        print(
            f"POST /v1/requests:      {N_ONE / ours_one:,.0f} req/s; minimal uvicorn route "
            f"with one Redis round trip {N_ONE / raw_one:,.0f} req/s; "
            f"ratio {raw_one / ours_one:.2f} (target >= 0.50)"
        )


if __name__ == "__main__":
    main()
